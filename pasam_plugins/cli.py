"""The ``pasam`` command line.

Commands: ``info``, ``download``, ``make-test-checkpoint``, ``pack-checkpoint``, ``embed``,
``predict``, ``segment-all``, ``convert``, ``train``, ``eval``, and the commands adapters
register (``serve``: the Label Studio ML backend). Heavy modules (torch, the model core, the
backends) are imported inside the commands so that ``pasam --help`` is instant.

Expected failures (a bad checkpoint, an unreadable image, no network, malformed prompts)
print one ``error: ...`` line and exit with status 1 (runtime problem) or 2 (bad usage);
set ``PASAM_DEBUG=1`` to get the Python traceback instead.
"""

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__

app = typer.Typer(
    name="pasam",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

FALLBACK_SEED = 0
FALLBACK_VARIANT = "vit_tiny"
UNTRAINED_WARNING = (
    "WARNING: these results come from UNTRAINED RANDOM WEIGHTS (a make-test-checkpoint model); "
    "they are meaningless as segmentations."
)


# ---------------------------------------------------------------------------- helpers
def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


@contextmanager
def _readable_errors() -> Iterator[None]:
    """Turn expected exceptions into one ``error:`` line and exit status 1."""
    from .download import DownloadError

    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, DownloadError) as e:
        # CheckpointError, ImageError and RegistryError are ValueErrors
        if os.environ.get("PASAM_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        _err(msg)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None


def _cache_dir(cache_dir: Path | None) -> Path:
    from .download import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _parse_numbers(text: str, *, what: str, param: str, counts: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in counts or not values or not all(map(_finite, values)):
        raise typer.BadParameter(f"{text!r} is not {what}", param_hint=param)
    return values


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def _parse_precision(text: str) -> str:
    from .precision import check_precision

    try:
        return check_precision(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--precision") from None


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (image pixels) -> a box with x1 > x0 and y1 > y0."""
    x0, y0, x1, y1 = _parse_numbers(
        text, what="a box x0,y0,x1,y1 (four numbers)", param="--box", counts=(4,)
    )
    if x1 <= x0 or y1 <= y0:
        raise typer.BadParameter(
            f"{text!r}: need x0 < x1 and y0 < y1 (top-left corner first)", param_hint="--box"
        )
    return x0, y0, x1, y1


def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` (label 1 = foreground, 0 = background; default 1)."""
    values = _parse_numbers(
        text, what="a point x,y or x,y,label (label 1 or 0)", param="--point", counts=(2, 3)
    )
    label = 1
    if len(values) == 3:
        if values[2] not in (0.0, 1.0):
            raise typer.BadParameter(
                f"{text!r}: the label must be 1 (foreground) or 0 (background)",
                param_hint="--point",
            )
        label = int(values[2])
    return values[0], values[1], label


def _default_checkpoint(announce: bool = True) -> Path:
    """The shipped model (registry DEFAULT_MODEL), used wherever the user names none."""
    from .registry import DEFAULT_MODEL, bundled_checkpoint

    path = bundled_checkpoint()
    if announce:
        typer.echo(
            f"No --checkpoint given (nor PASAM_CHECKPOINT): using the shipped model "
            f"{DEFAULT_MODEL} ({path}); see `pasam info` for its model card.",
            err=True,
        )
    return path


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pasam-plugins {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the pasam-plugins version and exit.",
        ),
    ] = False,
) -> None:
    """PA-SAM (Prompt Adapter Segment Anything): predict, download, serve to Label Studio,
    train and evaluate.

    Run `pasam COMMAND --help` for each command's options. Environment: PASAM_CHECKPOINT, PASAM_SAM_CHECKPOINT, PASAM_CACHE_DIR (default ~/.cache/pasam), PASAM_REGISTRY, PASAM_DEBUG=1 (tracebacks).
    """
    from .runtime import retain_freed_memory

    retain_freed_memory()  # reuse large CPU buffers across calls (see pasam_plugins.runtime)


# ---------------------------------------------------------------------------- info
def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@app.command()
def info(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Also check this checkpoint: load it and summarize it.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    sam_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Base SAM weights for decoder-only files (official PA-SAM epoch_N.pth, "
            "adapter files).",
            envvar="PASAM_SAM_CHECKPOINT",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache directory (default $PASAM_CACHE_DIR or ~/.cache/pasam)."),
    ] = None,
) -> None:
    """Show versions, devices (cuda/mps/cpu), the cache, and what --checkpoint holds."""
    import platform

    import torch

    typer.echo(f"pasam-plugins     {__version__}")
    typer.echo(f"python            {platform.python_version()}")
    typer.echo(f"torch             {torch.__version__}")
    typer.echo(f"segment-anything  {_dist_version('segment-anything')}")
    typer.echo(f"numpy             {_dist_version('numpy')}")
    typer.echo("devices:")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            typer.echo(f"  cuda:{i}  {torch.cuda.get_device_name(i)}")
    else:
        typer.echo("  cuda    not available")
    mps = getattr(torch.backends, "mps", None)
    typer.echo(f"  mps     {'available' if mps and mps.is_available() else 'not available'}")
    typer.echo("  cpu     available")
    from .precision import resolve_precision
    from .runtime import cpu_flags

    bf16_flags = sorted((cpu_flags() or frozenset()) & {"amx_bf16", "avx512_bf16"})
    typer.echo(
        f"encoder precision auto: cpu -> {resolve_precision('auto', 'cpu')} "
        f"(bf16 units: {', '.join(bf16_flags) or 'none found'})"
        + (f", cuda -> {resolve_precision('auto', 'cuda')}" if torch.cuda.is_available() else "")
    )
    with _readable_errors():
        from pasam_plugins.registry import load_registry

        env_ckpt = os.environ.get("PASAM_CHECKPOINT")
        typer.echo(
            f"PASAM_CHECKPOINT: {env_ckpt}"
            if env_ckpt
            else "PASAM_CHECKPOINT: not set (commands without --checkpoint use the shipped "
            "model pasam_micro)"
        )
        cache = _cache_dir(cache_dir)
        typer.echo(f"cache: {cache}")
        for name, entry in load_registry().items():
            present = (cache / entry.filename).is_file()
            state = "downloaded" if present else "not downloaded"
            typer.echo(f"  {name:10s} {entry.filename:22s} {state}")
        if checkpoint is not None:
            _checkpoint_summary(checkpoint, sam_checkpoint)


def _checkpoint_summary(path: Path, sam_checkpoint: Path | None) -> None:
    from .checkpoint import load_model

    model = load_model(path, sam_checkpoint=sam_checkpoint)
    meta = model.origin.metadata
    n_params = sum(p.numel() for p in model.parameters())
    typer.echo(f"checkpoint: {path}")
    typer.echo(f"  size        {path.stat().st_size / 2**20:.1f} MiB")
    typer.echo(f"  variant     {model.variant}")
    typer.echo(f"  model       {model.origin.architecture()}")
    typer.echo(f"  adapter     {'yes (PA-SAM)' if model.has_adapter else 'no (plain SAM)'}")
    typer.echo(f"  guide mode  {model.guide_mode}")
    typer.echo(f"  parameters  {n_params / 1e6:.2f} M")
    for key in ("contents", "version", "created"):
        if key in meta:
            typer.echo(f"  {key:11s} {meta[key]}")
    if meta.get("provenance"):
        typer.echo(f"  provenance  {json.dumps(meta['provenance'], sort_keys=True)}")
    if meta.get("untrained"):
        typer.echo("  UNTRAINED random weights (make-test-checkpoint): for tests and demos only")


# ---------------------------------------------------------------------------- download
@app.command()
def download(
    name: Annotated[
        str | None,
        typer.Argument(help="Registry name: vit_b, vit_l, vit_h (see --list)."),
    ] = None,
    list_models: Annotated[
        bool, typer.Option("--list", help="List the known checkpoints and exit.")
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Target directory (default $PASAM_CACHE_DIR or ~/.cache/pasam)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds.", min=1)] = 30.0,
) -> None:
    """Download an official checkpoint into the cache, verify its SHA-256 and print its path.

    An already downloaded, verified file is reused. The printed path can be passed to --checkpoint (or --sam-checkpoint).
    """
    with _readable_errors():
        from pasam_plugins.registry import get_entry, load_registry

        from .download import fetch

        registry = load_registry()
        if list_models:
            for key, entry in registry.items():
                size = f"{entry.size_bytes / 2**20:,.0f} MiB" if entry.size_bytes else "size ?"
                how = "" if entry.direct_download else "  (manual download)"
                typer.echo(f"{key:10s} {entry.kind:14s} {size:>11s}  {entry.title}{how}")
            return
        if name is None:
            raise typer.BadParameter(
                f"give a model name ({', '.join(registry)}) or --list", param_hint="NAME"
            )
        entry = get_entry(name, registry)
        result = fetch(entry, _cache_dir(cache_dir), progress=progress, timeout=timeout)
        if result.verified:
            state = "already downloaded, verified" if result.reused else "downloaded, verified"
            typer.echo(f"{entry.name}: {state} (sha256 {result.sha256})", err=True)
        else:
            typer.echo(
                f"warning: {entry.name}: no published checksum, so the file was NOT verified",
                err=True,
            )
        typer.echo(str(result.path))


# ---------------------------------------------------------------------------- test model
@app.command("make-test-checkpoint")
def make_test_checkpoint_cmd(
    out: Annotated[Path, typer.Argument(help="Output file (.safetensors).", dir_okay=False)],
    seed: Annotated[int, typer.Option(help="Random seed (same seed = same weights).")] = 0,
    variant: Annotated[
        str, typer.Option(help="Encoder variant: vit_tiny (default, CPU-friendly), vit_b ...")
    ] = FALLBACK_VARIANT,
    guide_mode: Annotated[str, typer.Option(help="reference or image.")] = "reference",
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a small PA-SAM with RANDOM, UNTRAINED weights (for tests, CI and offline demos)."""
    if out.exists() and not force:
        _err(f"{out} exists; pass --force to overwrite it")
        raise typer.Exit(1)
    with _readable_errors():
        from .modeling import pasam_model_registry
        from .testing import make_test_checkpoint

        if variant not in pasam_model_registry:
            raise typer.BadParameter(
                f"{variant!r} is not one of {', '.join(sorted(pasam_model_registry))}",
                param_hint="--variant",
            )
        if guide_mode not in ("reference", "image"):
            raise typer.BadParameter(
                f"{guide_mode!r} is not 'reference' or 'image'", param_hint="--guide-mode"
            )
        path = make_test_checkpoint(out, seed=seed, variant=variant, guide_mode=guide_mode)
        typer.echo(f"wrote {path} ({variant}, seed {seed}): random untrained weights, tests only")


# ---------------------------------------------------------------------------- pack
@app.command("pack-checkpoint")
def pack_checkpoint_cmd(
    src: Annotated[
        Path, typer.Argument(help="A checkpoint of this project (.safetensors).", dir_okay=False)
    ],
    out: Annotated[Path, typer.Argument(help="Output file (.safetensors).", dir_okay=False)],
    half: Annotated[
        bool, typer.Option(help="Store the weights as float16 (half the size).")
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(
            help="For adapter / head files: the base checkpoint to record, as a path relative "
            "to OUT's folder (files shipped together) or absolute."
        ),
    ] = None,
    zoom: Annotated[
        str | None,
        typer.Option(
            help="For zoomed models: JSON settings merged into the stored zoom settings, e.g. "
            "'{\"box_context\": 1.75}' (values picked on validation data)."
        ),
    ] = None,
) -> None:
    """Re-save a checkpoint for shipping: optionally float16, with its base named relative to it.

    The metadata (variant, guide mode, zoom, training provenance) is kept; an adapter or head
    file still needs its base, which --base names. The packed file is loaded once to check it.
    """
    with _readable_errors():
        import torch

        from .checkpoint import load_model, read_metadata, save_checkpoint

        meta = read_metadata(src)
        model = load_model(src)
        keep = {
            k: v
            for k, v in meta.items()
            if k
            not in (
                "variant",
                "guide_mode",
                "has_adapter",
                "contents",
                "version",
                "created",
                "stored_dtype",
            )
        }
        if base is not None:
            target = Path(base) if Path(base).is_absolute() else out.parent / base
            if not target.is_file():
                raise ValueError(f"--base {base}: {target} does not exist")
            keep["base_checkpoint"] = base
        if zoom is not None:
            import json

            from .segment import ZoomSettings

            current = ZoomSettings.from_metadata(meta)
            if current is None:
                raise typer.BadParameter(f"{src} is not a zoomed model", param_hint="--zoom")
            try:
                change = json.loads(zoom)
                if not isinstance(change, dict) or set(change) - set(current.to_metadata()):
                    raise ValueError(f"keys must be among {sorted(current.to_metadata())}")
                merged = ZoomSettings.from_metadata({"zoom": {**current.to_metadata(), **change}})
            except (ValueError, TypeError) as e:
                raise typer.BadParameter(f"{zoom!r}: {e}", param_hint="--zoom") from None
            assert merged is not None
            keep["zoom"] = merged.to_metadata()
        keep.setdefault("provenance", {})["packed_from"] = src.name
        path = save_checkpoint(
            model,
            out,
            metadata=keep,
            adapter_only=meta.get("contents") == "adapter",
            dtype=torch.float16 if half else None,
        )
        load_model(path)  # the packed file loads (its base included)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


# ---------------------------------------------------------------------------- embed
def _planes(path: Path, channel: int | None):
    """(name, 2D array-like) of an image file; a TIFF stack (ZxHxW or ZxHxWxC) gives one per
    plane, read lazily."""
    from .tiling import open_image

    arr = open_image(path)
    shape = tuple(arr.shape)
    stack = len(shape) == 4 or (len(shape) == 3 and shape[-1] > 4 and channel is None)
    if not stack:
        yield path.name, arr
        return
    for z in range(shape[0]):
        yield f"{path.name}[z={z}]", arr[z]


@app.command()
def embed(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Images, TIFF stacks or folders of them.", show_default=False),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="The model (default: the shipped model).",
            envvar="PASAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    sam_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Base SAM weights for decoder-only files.", envvar="PASAM_SAM_CHECKPOINT"
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Embedding store (default $PASAM_CACHE_DIR/embeddings, shared by all tools)."
        ),
    ] = None,
    channel: Annotated[int | None, typer.Option(help="Channel of multichannel images.")] = None,
    tile: Annotated[
        int | None, typer.Option(min=1, help="Tile core in px (default: input - 2 halo).")
    ] = None,
    halo: Annotated[
        int | None, typer.Option(min=0, help="Tile halo in px (default: input / 8).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, mps or cpu (default: the best).")
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="Image encoder number format, as the tools that will use the embeddings run "
            "it (stored per precision): auto (bf16 where this CPU or GPU computes it fast), "
            "float32 or bf16.",
            envvar="PASAM_PRECISION",
        ),
    ] = "auto",
) -> None:
    """Precompute image embeddings (whole images, or the tiles of large ones) into the shared
    store, so that pasam predict, the Label Studio backend and napari never run the encoder
    for these images. Resumable: what is stored already is skipped.

    Zoomed models (this project's small models) embed a window around each prompt when it
    arrives (a few ms each); for them there is nothing to precompute per image.

    Under torchrun (torchrun --nproc_per_node=N --no-python pasam embed ...) every rank
    embeds its share of the files on its own GPU into the same store.

    A Label Studio project's images: pasam embed-project ID (added by the Label Studio
    backend, pip install 'pasam-plugins[labelstudio]').
    """
    from . import distributed

    with _readable_errors(), distributed.session(device) as rank_device:
        from tqdm.auto import tqdm

        from .cache import EmbeddingCache
        from .checkpoint import load_model
        from .paths import embeddings_dir
        from .predictor import PASamPredictor, select_device
        from .segment import Segmenter
        from .train.datasets import IMAGE_EXTS

        files: list[Path] = []
        for item in inputs:
            if item.is_dir():
                files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            elif item.is_file():
                files.append(item)
            else:
                raise ValueError(f"{item}: no such file or folder")
        if not files:
            raise ValueError("no image files found in " + ", ".join(map(str, inputs)))
        main = distributed.is_main()
        files = distributed.shard(files)  # all of them in a single process
        ckpt = checkpoint or _default_checkpoint()
        model = load_model(ckpt, sam_checkpoint=sam_checkpoint)
        store = Path(cache_dir) if cache_dir else embeddings_dir()
        cache = EmbeddingCache(max_bytes=256 << 20, disk_dir=store)
        predictor = PASamPredictor(
            model,
            device=select_device(rank_device),
            cache=cache,
            precision=_parse_precision(precision),
            fast_encoder=True,
        )
        seg = Segmenter(predictor, tile=tile, halo=halo)
        if seg.zoom is not None:
            if main:
                typer.echo(
                    f"{ckpt} is used zoomed in: it embeds a window around each prompt when the "
                    "prompt arrives; nothing to precompute per image."
                )
            return
        ran = cached = 0
        bar = tqdm(files, desc="embed", unit="image", disable=not main)
        for path in bar:
            for name, plane in _planes(path, channel):
                bar.set_postfix_str(name[-40:])
                runs = seg.predictor.encoder_runs
                seg.set_image(plane, channel=channel)
                windows = seg.windows()
                if not windows:  # the whole image, embedded by set_image (or found stored)
                    ran += seg.predictor.encoder_runs > runs
                    cached += seg.predictor.encoder_runs == runs
                for window in windows:
                    if seg.embed_window(window):
                        ran += 1
                    else:
                        cached += 1
        counts = distributed.gather((ran, cached))
        if counts is None:  # not rank 0
            return
        ran, cached = sum(c[0] for c in counts), sum(c[1] for c in counts)
        ranks = f" by {len(counts)} ranks" if len(counts) > 1 else ""
        typer.echo(f"{ran} embedding(s) computed{ranks}, {cached} already stored, in {store}")


# ---------------------------------------------------------------------------- predict
@app.command()
def predict(
    image: Annotated[
        Path,
        typer.Argument(help="Image file (PNG, JPEG, TIFF; any bit depth).", dir_okay=False),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="PA-SAM or SAM weights. Without one, the shipped model pasam_micro (a small "
            "SAM + PA-SAM adapter trained on EM and nuclei microscopy) is used.",
            envvar="PASAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    sam_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Base SAM weights for decoder-only files (official PA-SAM epoch_N.pth).",
            envvar="PASAM_SAM_CHECKPOINT",
            dir_okay=False,
        ),
    ] = None,
    box: Annotated[str | None, typer.Option(help="Box prompt x0,y0,x1,y1 in image pixels.")] = None,
    point: Annotated[
        list[str] | None,
        typer.Option(
            help="Point prompt x,y[,label] in image pixels; label 1 = object (default), "
            "0 = background. Repeatable."
        ),
    ] = None,
    channel: Annotated[
        int | None,
        typer.Option(help="Channel to segment in a multichannel image (0-based)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: the best available).")
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="Image encoder number format: auto (bf16 where this CPU or GPU computes it "
            "fast, else float32), float32 or bf16.",
            envvar="PASAM_PRECISION",
        ),
    ] = "auto",
    out_dir: Annotated[
        Path, typer.Option(help="Directory for the outputs.", file_okay=False)
    ] = Path("pasam-output"),
    mask_format: Annotated[
        str, typer.Option(help="Mask file format: png or tif (uint8, 0/255).")
    ] = "png",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Deprecated, ignored (the default model is shipped, nothing is cached).",
            hidden=True,
        ),
    ] = None,
) -> None:
    """Segment one object in IMAGE from a box and/or points.

    Writes to --out-dir: STEM_mask.png|tif, STEM_uncertainty.tif (float32, 0..1) and STEM_uncertainty.png (magma), STEM_overlay.png (mask, uncertainty heat map, prompts and the adapter's mined points) and STEM_prediction.json (scores, prompts, mined points).

    Example: pasam predict em.png -c model.safetensors --box 180,200,330,340 --point 250,270 --point 60,60,0
    """
    mask_format = mask_format.lower().lstrip(".")
    if mask_format == "tiff":
        mask_format = "tif"
    if mask_format not in ("png", "tif"):
        raise typer.BadParameter(f"{mask_format!r} is not png or tif", param_hint="--mask-format")
    if not image.is_file():
        _err(f"{image}: no such image file")
        raise typer.Exit(2)
    if checkpoint is not None and not checkpoint.is_file():
        _err(f"{checkpoint}: no such checkpoint file")
        raise typer.Exit(2)
    box_xyxy = parse_box(box) if box is not None else None
    points = [parse_point(p) for p in point or []]
    precision = _parse_precision(precision)
    if box_xyxy is None and not points:
        raise typer.BadParameter("give a prompt: --box x0,y0,x1,y1 and/or --point x,y[,label]")

    with _readable_errors():
        from .imageio import ImageError, normalize_image, read_image
        from .predictor import select_device

        arr = read_image(image)
        h, w = arr.shape[:2]
        try:  # fail fast, before loading a model, on a channel that does not exist
            rgb = normalize_image(arr, channel=channel)
        except ImageError as e:
            if channel is None:
                raise
            raise typer.BadParameter(str(e), param_hint="--channel") from None
        if box_xyxy is not None:
            x0, y0, x1, y1 = box_xyxy
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise typer.BadParameter(
                    f"box {box} lies outside the {w}x{h} image", param_hint="--box"
                )
        for x, y, _ in points:
            if not (0 <= x < w and 0 <= y < h):
                raise typer.BadParameter(
                    f"point ({x:g}, {y:g}) lies outside the {w}x{h} image (x < {w}, y < {h})",
                    param_hint="--point",
                )
        try:
            dev = select_device(device)
        except (ValueError, RuntimeError) as e:
            raise typer.BadParameter(str(e), param_hint="--device") from None
        try:
            from .precision import resolve_precision

            resolve_precision(precision, dev)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--precision") from None

        if checkpoint is None:
            checkpoint = _default_checkpoint()
        result = _run_prediction(
            arr=arr,
            rgb=rgb,
            image=image,
            checkpoint=checkpoint,
            sam_checkpoint=sam_checkpoint,
            box=box_xyxy,
            points=points,
            channel=channel,
            device=dev,
            precision=precision,
            out_dir=out_dir,
            mask_format=mask_format,
        )
        if result["untrained"]:
            typer.echo(UNTRAINED_WARNING)
        typer.echo(
            f"mask: {result['mask_pixels']} pixels ({100 * result['mask_fraction']:.1f}% of "
            f"{w}x{h}), predicted IoU {result['score']:.3f}, device {result['device']}, "
            f"encoder {result['precision']}"
        )
        for key, path in result["outputs"].items():
            typer.echo(f"  {key:16s} {path}")


def _run_prediction(
    *,
    arr: Any,
    rgb: Any,
    image: Path,
    checkpoint: Path,
    sam_checkpoint: Path | None,
    box: tuple[float, float, float, float] | None,
    points: list[tuple[float, float, int]],
    channel: int | None,
    device: Any,
    out_dir: Path,
    mask_format: str,
    precision: str = "auto",
) -> dict[str, Any]:
    """Load the model, predict, write the outputs; returns the JSON summary."""
    import numpy as np
    import tifffile

    from .checkpoint import load_model
    from .predictor import PASamPredictor
    from .segment import Segmenter, use_multimask
    from .viz import colorize_uncertainty, save_overlay_png, save_png

    model = load_model(checkpoint, sam_checkpoint=sam_checkpoint)
    untrained = model.origin.untrained
    segmenter = Segmenter(
        PASamPredictor(model, device=device, precision=precision, fast_encoder=True)
    )
    segmenter.set_image(arr, channel=channel)
    coords = labels = None
    if points:
        coords = np.array([[x, y] for x, y, _ in points], dtype=np.float32)
        labels = np.array([lab for _, _, lab in points], dtype=np.int64)
    box_arr = None if box is None else np.array(box, dtype=np.float32)
    obj = segmenter.segment(coords, labels, box_arr)
    mask = obj.mask
    pred = obj  # uncertainty and mined points in the image frame

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = image.stem
    outputs: dict[str, Path] = {}
    mask_u8 = mask.astype(np.uint8) * 255
    if mask_format == "tif":
        outputs["mask"] = out_dir / f"{stem}_mask.tif"
        tifffile.imwrite(outputs["mask"], mask_u8, compression="zlib")
    else:
        outputs["mask"] = save_png(out_dir / f"{stem}_mask.png", mask_u8)
    if pred.uncertainty is not None:
        u = np.asarray(pred.uncertainty, dtype=np.float32)
        outputs["uncertainty"] = out_dir / f"{stem}_uncertainty.tif"
        tifffile.imwrite(outputs["uncertainty"], u)
        outputs["uncertainty_png"] = save_png(
            out_dir / f"{stem}_uncertainty.png", colorize_uncertainty(u)
        )
    else:
        u = None
    outputs["overlay"] = save_overlay_png(
        out_dir / f"{stem}_overlay.png",
        rgb,
        mask,
        u,
        pred.mined_points,
        pred.mined_labels,
        box=box,
        prompt_points=coords,
        prompt_labels=labels,
    )
    mined = []
    if pred.mined_points is not None and pred.mined_labels is not None:
        mined = [
            {"x": float(x), "y": float(y), "label": int(lab)}
            for (x, y), lab in zip(pred.mined_points, pred.mined_labels, strict=True)
        ]
    h, w = mask.shape
    summary: dict[str, Any] = {
        "image": str(image),
        "image_size": [h, w],
        "checkpoint": str(checkpoint),
        "untrained": untrained,
        "variant": model.variant,
        "has_adapter": model.has_adapter,
        # what the network is, and that SAM and HQ-SAM give no uncertainty or mined points
        "model": model.origin.architecture(),
        "device": str(segmenter.predictor.device),
        "precision": segmenter.predictor.precision,
        "prompts": {
            "box": list(box) if box is not None else None,
            "points": [{"x": x, "y": y, "label": lab} for x, y, lab in points],
            # the core's rule: one positive click alone -> best of 3 masks
            "multimask": use_multimask(coords, labels, box_arr, False),
            "channel": channel,
        },
        "score": obj.score,
        "mean_uncertainty": obj.mean_uncertainty,
        "boundary_uncertainty": obj.boundary_uncertainty,
        "zoom_window": None
        if obj.window is None
        else [obj.window.x0, obj.window.y0, obj.window.size],
        "mask_pixels": int(mask.sum()),
        "mask_fraction": float(mask.mean()),
        "mined_points": mined,
    }
    outputs["summary"] = out_dir / f"{stem}_prediction.json"
    summary["outputs"] = {k: str(v) for k, v in outputs.items()}
    outputs["summary"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------- lazy commands
def _lazy_command(
    name: str, module: str, attr: str, summary: str, extra: str
) -> Callable[[typer.Context], None]:
    """A command whose implementation lives in another (optional, heavier) module.

    The module is imported only when the command runs; all arguments (``--help`` included)
    are passed on to it, so its own help and options apply.
    """

    def command(ctx: typer.Context) -> None:
        import click

        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            if ctx.args and ctx.args[0] in ("--help", "-h"):
                typer.echo(f"Usage: pasam {name} [OPTIONS]\n\n  {summary}\n")
            missing = getattr(e, "name", None) or ""
            if missing and (module == missing or module.startswith(missing + ".")):
                _err(f"'pasam {name}' is not available in this installation ({module} is missing)")
            else:
                _err(
                    f"'pasam {name}' needs a package that is not installed ({e}); "
                    f"install it with: pip install 'pasam-plugins[{extra}]'"
                )
            raise typer.Exit(1) from None
        except AttributeError:
            _err(f"'pasam {name}' is not available: {module} has no {attr}")
            raise typer.Exit(1) from None
        if isinstance(target, typer.Typer):
            cmd = typer.main.get_command(target)
        elif isinstance(target, click.Command):
            cmd = target
        else:
            sub = typer.Typer(add_completion=False)
            sub.command(name=name)(target)
            cmd = typer.main.get_command(sub)
        cmd.main(args=list(ctx.args), prog_name=f"pasam {name}", standalone_mode=True)

    command.__doc__ = summary
    return command


#: entry-point group through which other packages add ``pasam`` sub-commands
#: (``name = "module:function"``); this project's Label Studio backend registers ``serve``
COMMAND_GROUP = "pasam.commands"


def _plugin_commands() -> list[tuple[str, str, str, str, str]]:
    """Sub-commands other installed packages register in :data:`COMMAND_GROUP`; an entry
    point's extras name the optional dependencies it needs (``serve = "m:f [labelstudio]"``)."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=COMMAND_GROUP):
        module, _, attr = ep.value.partition(":")
        attr = attr.split("[", 1)[0].strip()
        origin = ep.dist.name if ep.dist else module.strip()
        summary = f"Added by {origin} ({module.strip()}); run `pasam {ep.name} --help`."
        extra = ",".join(ep.extras) or "all"
        out.append((ep.name, module.strip(), attr, summary, extra))
    return out


for _name, _module, _attr, _summary, _extra in [
    (
        "train",
        "pasam_plugins.train.cli",
        "train_command",
        "Train the PA-SAM prompt adapter on your images and masks (see `pasam train --help`).",
        "train",
    ),
    (
        "eval",
        "pasam_plugins.train.cli",
        "eval_command",
        "Evaluate a checkpoint on images with reference masks (see `pasam eval --help`).",
        "train",
    ),
    (
        "segment-all",
        "pasam_plugins.automatic_cli",
        "segment_all_command",
        "Segment every object of an image or folder without prompts (label TIFF, CSV, overlay, COCO).",
        "train",
    ),
    (
        "convert",
        "pasam_plugins.automatic_cli",
        "convert_command",
        "Convert a Label Studio JSON export to COCO and label images (see `pasam convert --help`).",
        "train",
    ),
    *_plugin_commands(),
]:
    app.command(
        _name,
        help=_summary,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_lazy_command(_name, _module, _attr, _summary, _extra))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
