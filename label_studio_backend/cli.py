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
        str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: $DEVICE or the best).")
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
    run_server(settings, host=host, port=port)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(settings, *, host: str = "127.0.0.1", port: int = 9090) -> None:
    """Load the model from ``settings`` and serve it with uvicorn until interrupted.

    Refuses to start (exit status 2, one ``error:`` line) on unusable settings, e.g. only
    one of ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` or a ``LABEL_STUDIO_URL`` with user info,
    and warns when it listens beyond loopback without authentication.
    """
    import uvicorn

    from .app import create_app
    from .images import ImageLoader
    from .model import PASamBackend

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
    try:
        backend = PASamBackend.from_settings(settings)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        typer.echo(f"error: cannot load the model: {e}", err=True)
        raise typer.Exit(2) from None
    if backend.predictor.model.origin.untrained:
        log.warning(
            "%s has UNTRAINED RANDOM WEIGHTS (pasam make-test-checkpoint): its masks are "
            "meaningless; use it for tests only",
            settings.checkpoint,
        )
    app = create_app(
        backend,
        basic_auth=auth,
        max_request_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
    )
    log.info(
        "PA-SAM ML backend %s on %s (device %s, encoder %s%s) at http://%s:%d",
        backend.model_version,
        settings.checkpoint,
        backend.predictor.device,
        backend.predictor.precision,
        ", compiling in the background" if settings.compile_encoder else "",
        host,
        port,
    )
    log.info("%s", backend.predictor.cache.describe())
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)


def main() -> None:
    """Entry point of ``python -m label_studio_backend``."""
    typer.run(serve)
