"""``pasam embed-project``: precompute the embeddings of a Label Studio project's images.

The backend's own pieces do the work, so the embeddings are exactly those ``/predict`` will
look up: the tasks are listed through Label Studio's API (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``), each image is read by the backend's guarded
:class:`~label_studio_backend.images.ImageLoader` (same origin and local-files rules, same
authentication and limits) and embedded by
:meth:`~label_studio_backend.model.PASamBackend.embed_task` (the whole image, or every tile
of a large one; the same model, precision and cache keys as ``pasam serve`` with the same
settings) into the disk store ``$PASAM_CACHE_DIR/embeddings`` the server reads.

Resumable: an image whose embeddings are stored costs its download and a hash, no encoder
run. A task whose image cannot be read is reported and skipped; the others go on.
Registered as a ``pasam`` command through the ``pasam.commands`` entry point.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer


@dataclass
class ProjectEmbedding:
    """What :func:`embed_project_tasks` did."""

    tasks: int = 0
    computed: int = 0
    stored: int = 0
    failed: list[tuple[object, str]] = field(default_factory=list)


def embed_project_tasks(
    backend, client, project: int, *, token: str | None = None, progress: bool = True
) -> ProjectEmbedding:
    """Embed every task image of a Label Studio project into the backend's cache.

    Raises:
      LabelStudioAPIError: the project or its tasks cannot be read (unknown id, Label Studio
        unreachable, refused credentials).
      BackendError: the project's labeling config has no usable image and brush tags.
    """
    from tqdm.auto import tqdm

    from .errors import BackendError
    from .labelconfig import parse_label_config
    from .lsapi import LabelStudioAPIError

    config_xml = client.project(project, token=token).get("label_config")
    if not isinstance(config_xml, str):
        raise LabelStudioAPIError(f"project {project}: Label Studio sent no label_config")
    config = parse_label_config(config_xml)
    tasks = list(client.tasks(project, token=token))
    report = ProjectEmbedding(tasks=len(tasks))
    bar = tqdm(tasks, desc=f"embed project {project}", unit="task", disable=not progress)
    for task in bar:
        try:
            ran, cached = backend.embed_task(task, config, token)
        except (BackendError, ValueError) as e:  # the core's ImageError is a ValueError
            message = " ".join((getattr(e, "message", None) or str(e)).split())
            report.failed.append((task.get("id"), message))
            bar.write(f"task {task.get('id')}: skipped: {message}")
            continue
        report.computed += ran
        report.stored += cached
    return report


def embed_project(
    project: Annotated[
        int, typer.Argument(min=1, help="The Label Studio project id.", show_default=False)
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The model the server runs (default: $PASAM_CHECKPOINT, else the shipped model).",
            dir_okay=False,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="pasam's cache directory; embeddings go to its embeddings/, where `pasam "
            "serve` with the same PASAM_CACHE_DIR reads them (default: $PASAM_CACHE_DIR, "
            "else ~/.cache/pasam).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu ($DEVICE).")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Image encoder number format, as the server runs it (stored per precision): "
            "auto, float32 or bf16 ($PASAM_PRECISION, default auto)."
        ),
    ] = None,
    label_studio_url: Annotated[
        str | None, typer.Option(help="Label Studio's URL ($LABEL_STUDIO_URL).")
    ] = None,
) -> None:
    """Precompute the embeddings of every task image of a Label Studio project (whole
    images, or the tiles of large ones) into the disk store the ML backend reads, so that
    it never runs the encoder for them. Uses the backend's settings from the environment
    (LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, PASAM_MAX_IMAGE_*, ...) and its
    guarded image loader. Resumable: stored embeddings are skipped. A task whose image
    cannot be read is reported and skipped; the exit status is then 1."""
    from pasam_plugins.paths import cache_dir as default_cache_dir

    from .config import Settings
    from .errors import BackendError
    from .lsapi import LabelStudioAPIError, LabelStudioClient
    from .model import NoTrainer, PASamBackend

    try:
        settings = Settings.from_env(
            checkpoint=checkpoint,
            device=device,
            precision=precision,
            label_studio_url=label_studio_url,
            cache_dir=cache_dir,
        )
        settings.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if not settings.label_studio_url:
        raise typer.BadParameter(
            "set LABEL_STUDIO_URL (or --label-studio-url): the project's tasks are listed "
            "through Label Studio's API"
        )
    if settings.checkpoint is None:
        from pasam_plugins.registry import bundled_checkpoint

        settings = settings.with_(checkpoint=bundled_checkpoint())
    store_root = settings.cache_dir or default_cache_dir()
    # the CLI keeps fewer embeddings in memory than a server; no sync, no fine-tuning
    settings = settings.with_(
        cache_dir=store_root,
        cache_max_mb=min(256, settings.cache_max_mb),
        sync_model_version=False,
        prefetch_tasks=0,
    )
    try:
        backend = PASamBackend.from_settings(settings, trainer=NoTrainer())
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        typer.echo(f"error: cannot load the model: {e}", err=True)
        raise typer.Exit(1) from None
    if backend.segmenter.zoom is not None:
        typer.echo(
            f"{settings.checkpoint} is used zoomed in: it embeds a window around each prompt "
            "when the prompt arrives; nothing to precompute per image."
        )
        return
    client = LabelStudioClient(
        settings.label_studio_url,
        backend.loader.auth_header,
        timeout=max(30.0, settings.download_timeout),
    )
    try:
        report = embed_project_tasks(backend, client, project)
    except (LabelStudioAPIError, BackendError) as e:
        message = getattr(e, "message", None) or str(e)
        typer.echo(f"error: project {project}: {' '.join(message.split())}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted (run again to go on: stored embeddings are kept)", err=True)
        raise typer.Exit(130) from None
    store = backend.predictor.cache.disk_dir
    typer.echo(
        f"project {project}: {report.tasks} task(s), {report.computed} embedding(s) computed, "
        f"{report.stored} already stored, in {store} (serve with PASAM_CACHE_DIR={store_root}, "
        f"the same checkpoint and PASAM_PRECISION={settings.precision})"
    )
    if report.failed:
        typer.echo(
            f"error: {len(report.failed)} task(s) skipped: "
            + "; ".join(f"task {tid}: {msg}" for tid, msg in report.failed[:5])
            + (" ..." if len(report.failed) > 5 else ""),
            err=True,
        )
        raise typer.Exit(1)
