"""``pasam serve``: start the Label Studio ML backend.

Also runnable as ``python -m label_studio_backend --checkpoint model.safetensors``.
Options default to the environment (``PASAM_CHECKPOINT``, ``DEVICE``, ``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``LOCAL_FILES_DOCUMENT_ROOT``, ``PASAM_CACHE_DIR``, ``LOG_LEVEL``,
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``HOST``/``PORT``).
"""

import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer


def serve(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="PA-SAM/SAM weights (default: $PASAM_CHECKPOINT, else the shipped model "
            "pasam_micro)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: $HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: $PORT or 9090).")] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="cuda, cuda:1, mps or cpu (default: $DEVICE or the best); with --workers N, "
            "a list cuda:0,cuda:1,... gives each worker its own device."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Image encoder number format: auto (bf16 where the CPU/GPU computes it "
            "fast), float32 or bf16 ($PASAM_PRECISION, default auto)."
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="Also torch.compile the image encoder in the background; requests are "
            "served by the eager encoder until it is ready ($PASAM_COMPILE).",
        ),
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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes behind the one port, each with its own copy of the model "
            "(default: $PASAM_WORKERS or 1). They share the disk embedding cache and the "
            "models dir: one fine-tuning at a time, and all serve its result.",
        ),
    ] = None,
) -> None:
    """Serve PA-SAM to Label Studio (ML backend protocol: /health, /setup, /predict,
    /webhook, /metrics). The weights are loaded once, at start-up (once per worker)."""
    from pasam_plugins.runtime import retain_freed_memory

    from .config import Settings

    retain_freed_memory()  # before uvicorn's worker threads exist (see pasam_plugins.runtime)

    try:
        settings = Settings.from_env(
            checkpoint=checkpoint,
            device=device,
            precision=precision,
            compile_encoder=compile,
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
    if workers is None:
        try:
            workers = int(os.environ.get("PASAM_WORKERS") or 1)
        except ValueError:
            raise typer.BadParameter(
                f"PASAM_WORKERS={os.environ['PASAM_WORKERS']!r} is not a number"
            ) from None
    run_server(settings, host=host, port=port, workers=max(1, workers))


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


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(settings, *, host: str = "127.0.0.1", port: int = 9090, workers: int = 1) -> None:
    """Load the model from ``settings`` and serve it with uvicorn until interrupted.

    Refuses to start (exit status 2, one ``error:`` line) on unusable settings, e.g. only
    one of ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` or a ``LABEL_STUDIO_URL`` with user info,
    and warns when it listens beyond loopback without authentication.

    ``workers`` > 1: uvicorn starts that many worker processes on the one socket; each
    builds its backend with :func:`app_from_env` from the environment (the fields of
    ``settings`` that ``pasam serve`` takes as options are exported to it first).
    """
    import uvicorn

    from .app import create_app
    from .images import ImageLoader
    from .model import PASamBackend
    from .shared import STARTED_ENV

    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("label_studio_backend")
    if settings.checkpoint is None:  # the shipped default model, as everywhere else
        import dataclasses

        from pasam_plugins.registry import DEFAULT_MODEL, bundled_checkpoint

        settings = dataclasses.replace(settings, checkpoint=bundled_checkpoint())
        log.info(
            "no --checkpoint (nor PASAM_CHECKPOINT): serving the shipped model %s (%s)",
            DEFAULT_MODEL,
            settings.checkpoint,
        )
    try:  # settings first: a typo must not cost a model load, nor be hidden by one
        settings.validate()
        auth = settings.basic_auth()
        ImageLoader(label_studio_url=settings.label_studio_url)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if auth is None and not _is_loopback(host):
        log.warning(
            "serving on %s without authentication: anyone who can reach port %d can run "
            "predictions and start fine-tuning; set BASIC_AUTH_USER and BASIC_AUTH_PASS",
            host,
            port,
        )
    from .shared import device_list

    devices = device_list(settings.device)
    if devices and workers != len(devices):
        typer.echo(
            f"error: DEVICE lists {len(devices)} devices ({settings.device}): start one worker "
            f"per device (--workers {len(devices)})",
            err=True,
        )
        raise typer.Exit(2)
    if workers > 1:
        _export(settings)
        # every worker (also one its supervisor restarts later) counts the fine-tuned models
        # announced since this moment (label_studio_backend.shared)
        os.environ.setdefault(STARTED_ENV, repr(time.time()))
        log.info(
            "PA-SAM ML backend: %d workers on %s at http://%s:%d (models dir %s)",
            workers,
            settings.checkpoint,
            host,
            port,
            settings.models_dir,
        )
        for note in startup_notes(settings, host=host, port=port):
            log.warning("%s", note)
        uvicorn.run(
            "label_studio_backend.cli:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
        return
    try:
        backend = PASamBackend.from_settings(settings)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        typer.echo(f"error: cannot load the model: {e}", err=True)
        raise typer.Exit(2) from None
    app = create_app(
        backend,
        basic_auth=auth,
        max_request_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
    )
    origin = backend.predictor.model.origin
    log.info(
        "PA-SAM ML backend %s on %s (%s; device %s, encoder %s%s) at http://%s:%d",
        backend.model_version,
        settings.checkpoint,
        origin.describe(),
        backend.predictor.device,
        backend.predictor.precision,
        ", compiling in the background" if settings.compile_encoder else "",
        host,
        port,
    )
    for note in startup_notes(settings, host=host, port=port, untrained=origin.untrained):
        log.warning("%s", note)
    log.info("%s", backend.predictor.cache.describe())
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


def _export(settings) -> None:
    """The options of ``pasam serve`` as the environment its worker processes read."""
    for name, value in (
        ("PASAM_CHECKPOINT", settings.checkpoint),
        ("DEVICE", settings.device),
        ("LABEL_STUDIO_URL", settings.label_studio_url),
        ("PASAM_CACHE_DIR", settings.cache_dir),
        ("LOG_LEVEL", settings.log_level),
    ):
        if value is not None:
            os.environ[name] = str(value)


def app_from_env():
    """One worker of ``pasam serve --workers N``: settings from the environment, the model
    loaded in this process, the app around it (uvicorn calls this in every worker)."""
    from pasam_plugins.runtime import retain_freed_memory

    from .app import create_app
    from .config import Settings
    from .model import PASamBackend
    from .shared import claim_device, device_list

    retain_freed_memory()
    settings = Settings.from_env()
    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings.validate()
    quiet_sdk_download_log()
    devices = device_list(settings.device)
    slot = None
    if devices:  # DEVICE=cuda:0,cuda:1: one worker per device (held while the worker lives)
        slot = claim_device(devices, settings.models_dir)
        settings = settings.with_(device=slot.device)
    backend = PASamBackend.from_settings(settings)
    logging.getLogger("label_studio_backend").info(
        "worker %d: model version %s on %s; %s",
        os.getpid(),
        backend.model_version,
        backend.predictor.device,
        backend.predictor.cache.describe(),
    )
    app = create_app(
        backend,
        basic_auth=settings.basic_auth(),
        max_request_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
    )
    app.state.device_slot = slot
    return app


def main() -> None:
    """Entry point of ``python -m label_studio_backend``."""
    typer.run(serve)
