"""``pasam serve``: start the Label Studio ML backend.

Also runnable as ``python -m label_studio_backend --checkpoint model.safetensors``.
Options default to the environment (``PASAM_CHECKPOINT``, ``DEVICE``, ``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``LOCAL_FILES_DOCUMENT_ROOT``, ``PASAM_CACHE_DIR``, ``LOG_LEVEL``,
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``HOST``/``PORT``).
"""

import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated

import typer


def serve(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="PA-SAM/SAM weights (default: $PASAM_CHECKPOINT)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: $HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: $PORT or 9090).")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: $DEVICE or the best).")
    ] = None,
    label_studio_url: Annotated[
        str | None,
        typer.Option(help="Label Studio URL images are downloaded from ($LABEL_STUDIO_URL)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache directory; embeddings persist in its embeddings/ ($PASAM_CACHE_DIR)."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING ... ($LOG_LEVEL, default INFO).")
    ] = None,
) -> None:
    """Serve PA-SAM to Label Studio (ML backend protocol: /health, /setup, /predict,
    /webhook, /metrics). The weights are loaded once, at start-up."""
    from pasam_plugins.runtime import retain_freed_memory

    from .config import Settings

    retain_freed_memory()  # before uvicorn's worker threads exist (see pasam_plugins.runtime)

    try:
        settings = Settings.from_env(
            checkpoint=checkpoint,
            device=device,
            label_studio_url=label_studio_url,
            cache_dir=cache_dir,
            log_level=log_level.upper() if log_level else None,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    host = host or os.environ.get("HOST") or "127.0.0.1"
    if port is None:
        try:
            port = int(os.environ.get("PORT") or 9090)
        except ValueError:
            raise typer.BadParameter(f"PORT={os.environ['PORT']!r} is not a number") from None
    run_server(settings, host=host, port=port)


def startup_notes(settings, *, host: str, port: int, untrained: bool = False) -> list[str]:
    """What a team needs to know at start-up: settings that are missing for a working
    connection to Label Studio, and how Label Studio must be started to accept this URL."""
    notes = []
    if untrained:
        notes.append(
            "the checkpoint holds UNTRAINED random weights (make-test-checkpoint): masks are "
            "meaningless; use it only to try the wiring"
        )
    if not settings.label_studio_url:
        notes.append(
            "LABEL_STUDIO_URL is not set: images uploaded to Label Studio cannot be downloaded "
            "(predictions fail with HTTP 502), Start Training cannot fetch annotations, and the "
            "project's Prediction score column is not kept on this model's version. Set it to "
            "Label Studio's address as seen from here, e.g. LABEL_STUDIO_URL=http://localhost:8080"
        )
    if not settings.label_studio_api_key:
        notes.append(
            "LABEL_STUDIO_API_KEY is not set: downloads, training and the model-version sync "
            "use the token Label Studio sends with /setup, which Label Studio 1.23 accepts only "
            "with legacy tokens enabled. Set a personal access token (Label Studio: Account & "
            "Settings -> Personal Access Token)"
        )
    if _reserved_host(host):
        notes.append(
            f"a stock Label Studio refuses ML backends on local and private addresses ('URL "
            f"resolves to a reserved network address'): start Label Studio with "
            f"LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false, then connect http://{host}:{port} "
            f"under Settings -> Model -> Connect Model"
        )
    return notes


def _reserved_host(host: str) -> bool:
    """A bind address Label Studio's default SSRF guard refuses (loopback, private and
    link-local networks, 0.0.0.0 whose reachable addresses are usually such)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a host name: Label Studio checks what it resolves to
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified


def run_server(settings, *, host: str = "127.0.0.1", port: int = 9090) -> None:
    """Load the model from ``settings`` and serve it with uvicorn until interrupted."""
    import uvicorn

    from .app import create_app
    from .model import PASamBackend

    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("label_studio_backend")
    if settings.checkpoint is None:
        raise typer.BadParameter("no checkpoint: pass --checkpoint or set PASAM_CHECKPOINT")
    try:
        backend = PASamBackend.from_settings(settings)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        typer.echo(f"error: cannot load the model: {e}", err=True)
        raise typer.Exit(2) from None
    auth = None
    if settings.basic_auth_user and settings.basic_auth_pass:
        auth = (settings.basic_auth_user, settings.basic_auth_pass)
    app = create_app(backend, basic_auth=auth, max_request_bytes=settings.max_request_bytes)
    origin = backend.predictor.model.origin
    log.info(
        "PA-SAM ML backend %s on %s (%s; device %s) at http://%s:%d",
        backend.model_version,
        settings.checkpoint,
        origin.describe(),
        backend.predictor.device,
        host,
        port,
    )
    for note in startup_notes(settings, host=host, port=port, untrained=origin.untrained):
        log.warning("%s", note)
    quiet_sdk_download_log()
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)


class _DownloadNoise(logging.Filter):
    """label-studio-sdk logs at INFO for every image it downloads: the URL it resolved, the
    file it wrote, and "Download failed for proxy URL, retrying legacy upload path" when
    Label Studio does not serve an upload at the SDK's proxy URL. All are the normal path:
    shown at DEBUG only; real failures are the backend's own errors."""

    NOISE = ("Download failed for proxy URL", "File downloaded to ", "Storage proxy file: ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and str(record.msg).startswith(self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_sdk_download_log() -> None:
    """Install :class:`_DownloadNoise` on the SDK's download logger (once)."""
    sdk = logging.getLogger("label_studio_sdk._extensions.label_studio_tools.core.utils.io")
    if not any(isinstance(f, _DownloadNoise) for f in sdk.filters):
        sdk.addFilter(_DownloadNoise())


def main() -> None:
    """Entry point of ``python -m label_studio_backend``."""
    typer.run(serve)
