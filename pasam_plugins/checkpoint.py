"""Loading and saving checkpoints.

Formats understood by :func:`load_model` (detected from the file's keys, never its name):

- official SAM ``sam_vit_{b,l,h}_*.pth``: a plain state dict; the variant is read from the
  image encoder's shapes. Loaded without adapter.
- official HQ-SAM ``sam_hq_vit_{b,l,h}.pth``: the same plus HQ-SAM's decoder keys
  (``mask_decoder.hf_token.*`` ...): loaded as :class:`pasam_plugins.hq.HQSam`.
- official PA-SAM decoder ``epoch_N.pth``: SAM's mask decoder keys plus ``guiding_conv.*``
  and ``prompt_adapter.*`` without prefix; needs ``sam_checkpoint`` for the rest of SAM.
- merged ``sam_pa_epoch_N.pth``: a SAM state dict whose ``mask_decoder.*`` holds the above.
- this project's format: one ``.safetensors`` file whose header metadata holds a JSON
  document (variant, guide mode, contents, training provenance, version). ``contents`` is
  ``"full"`` (whole model) or ``"adapter"`` (the trainable decoder parts only; needs
  ``sam_checkpoint``, ``$PASAM_SAM_CHECKPOINT`` or an existing ``base_checkpoint`` path in
  its metadata). ``family`` (``pasam`` or ``hq-sam``) and ``plm`` (a prompt learning module)
  say which network the tensors belong to; an adapter file holds :data:`DELTA_PREFIXES`.

Every ``torch.load`` uses ``weights_only=True``. Errors are :class:`CheckpointError` and name
the file, what was expected and which keys are missing or unexpected.
"""

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import __version__
from .hq_keys import HQ_KEY, HQ_PREFIXES
from .modeling import ENCODER_CONFIGS, GUIDE_MODES, PASam, build_pasam
from .origin import ModelOrigin

FORMAT_NAME = "pasam-plugins"
FORMAT_VERSION = "1"
#: decoder parts trained by PA-SAM (reference section 5) = what an adapter file stores
ADAPTER_PREFIXES = (
    "guiding_conv.",
    "prompt_adapter.",
    "output_upscaling.",
    "output_hypernetworks_mlps.",
    "mask_tokens.",
)
#: the prompt learning module (:mod:`pasam_plugins.prompt_learning`)
PLM_PREFIXES = ("plm.",)
#: what an adapter-only file stores (decoder-relative): every part a run on a frozen SAM can
#: train (PA-SAM's set, HQ-SAM's additions, the PLM); parts a model lacks match nothing
DELTA_PREFIXES = ADAPTER_PREFIXES + HQ_PREFIXES + PLM_PREFIXES
FAMILIES = ("pasam", "hq-sam")
_MAX_LISTED = 8


def build_model(
    variant: str,
    *,
    family: str = "pasam",
    adapter: bool = False,
    guide_mode: str = "reference",
    plm: bool = False,
    hq_token_only: bool = False,
) -> PASam:
    """An untrained network of the given architecture (what a file's metadata describes)."""
    if family == "hq-sam":
        if adapter:
            raise CheckpointError("HQ-SAM with a PA-SAM adapter is not a supported model")
        from .hq import build_hq

        model: PASam = build_hq(variant, hq_token_only=hq_token_only)
    elif family == "pasam":
        model = build_pasam(variant, adapter=adapter, guide_mode=guide_mode)  # type: ignore[arg-type]
    else:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    if plm:
        from .prompt_learning import attach_plm

        attach_plm(model)
    return model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def _fmt_keys(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def _load_strict(
    module: torch.nn.Module, sd: Mapping[str, Tensor], *, source: str, what: str
) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = [f"{source}: does not match {what}"]
        if missing:
            parts.append(f"missing keys: {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt_keys(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes (file != model): {'; '.join(wrong[:_MAX_LISTED])}")
        raise CheckpointError("; ".join(parts))
    module.load_state_dict(sd, strict=True)


def _torch_load(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a loadable PyTorch checkpoint (expected a state dict of tensors, "
            f"loaded with weights_only=True): {msg}"
        ) from exc
    if isinstance(obj, Mapping):
        for nested in ("model", "state_dict"):
            if nested in obj and isinstance(obj[nested], Mapping):
                obj = obj[nested]
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    return dict(obj)


def detect_variant(sd: Mapping[str, Tensor], *, source: str = "checkpoint") -> str:
    """SAM variant from the image encoder's shapes (width, depth, patch and input size)."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in sd:
        raise CheckpointError(
            f"{source}: not a SAM checkpoint: expected keys image_encoder.*, prompt_encoder.*, "
            f"mask_decoder.* (no {key})"
        )
    dim = int(sd[key].shape[0])
    patch = int(sd[key].shape[-1])
    depth = len({m.group(1) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    pos = sd.get("image_encoder.pos_embed")
    grid = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else None
    for name, cfg in ENCODER_CONFIGS.items():
        if (
            cfg.embed_dim == dim
            and cfg.depth == depth
            and cfg.patch_size == patch
            and (grid is None or cfg.grid == grid)
        ):
            return name
    size = f", {grid * patch}-px input" if grid else ""
    raise CheckpointError(
        f"{source}: image encoder with width {dim}, {depth} blocks{size} matches no known "
        f"SAM variant ({', '.join(f'{n}: {c.embed_dim}x{c.depth} at {c.img_size} px' for n, c in ENCODER_CONFIGS.items())})"
    )


def load_official_decoder_state_dict(sd: Mapping[str, Tensor], *, source: str) -> dict[str, Tensor]:
    """Check an official PA-SAM decoder state dict (``epoch_N.pth`` layout) and return it."""
    if not any(k.startswith("prompt_adapter.") for k in sd):
        raise CheckpointError(
            f"{source}: not a PA-SAM decoder checkpoint: no prompt_adapter.* keys "
            f"(expected the official epoch_N.pth layout)"
        )
    reference = build_pasam("vit_tiny", adapter=True).mask_decoder
    expected = reference.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = [f"{source}: does not match the official PA-SAM decoder layout"]
        if missing:
            parts.append(f"missing keys: {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt_keys(unexpected)}")
        raise CheckpointError("; ".join(parts))
    return dict(sd)


def _is_ours(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if not 2 <= n <= 100_000_000:
            return False
        with open(path, "rb") as f:
            f.seek(8)
            return f.read(1) == b"{"
    except OSError:
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint in this project's format (raises for other files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any header error
        raise CheckpointError(
            f"{path}: not a pasam-plugins .safetensors checkpoint ({exc})"
        ) from exc
    if raw.get("format") != FORMAT_NAME or "pasam" not in raw:
        raise CheckpointError(
            f"{path}: a safetensors file, but not in the pasam-plugins format "
            f"(header metadata 'format' is {raw.get('format')!r})"
        )
    try:
        meta = json.loads(raw["pasam"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt pasam metadata ({exc})") from exc
    return meta


def _resolve_sam(
    sam_checkpoint: str | Path | None, path: Path, what: str, meta: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], str]:
    """Base SAM weights for a decoder-only file: ``sam_checkpoint``, else
    ``$PASAM_SAM_CHECKPOINT``, else the ``base_checkpoint`` recorded in the file's metadata
    (when that file still exists). Returns the state dict and where it came from."""
    base = sam_checkpoint or os.environ.get("PASAM_SAM_CHECKPOINT")
    recorded = (meta or {}).get("base_checkpoint")
    if isinstance(recorded, str) and not Path(recorded).is_absolute():
        # a base named relative to the adapter file (shipped models travel together)
        recorded = str(path.parent / recorded)
    if not base and isinstance(recorded, str) and Path(recorded).is_file():
        base = recorded
    if not base:
        hint = f" (its metadata names {recorded}, which does not exist)" if recorded else ""
        raise CheckpointError(
            f"{path}: {what} holds only decoder weights; give the SAM checkpoint it was "
            f"trained on (sam_checkpoint= / --sam-checkpoint / PASAM_SAM_CHECKPOINT){hint}"
        )
    sam_path = Path(base)
    if _is_ours(sam_path):
        return load_model(sam_path).state_dict(), str(sam_path)
    return _torch_load(sam_path), str(sam_path)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    sam_checkpoint: str | Path | None = None,
    guide_mode: str | None = None,
) -> PASam:
    """Load any supported checkpoint as a :class:`PASam` (see the module docstring).

    Arguments:
      path: the checkpoint.
      sam_checkpoint: base SAM weights for files that hold only the decoder.
      guide_mode: override the guide mode (official files default to ``"reference"``).
    """
    path = Path(path)
    if guide_mode is not None and guide_mode not in GUIDE_MODES:
        raise CheckpointError(f"guide mode must be one of {GUIDE_MODES}, got {guide_mode!r}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors" or _is_ours(path):
        model = _load_ours(path, sam_checkpoint=sam_checkpoint, guide_mode=guide_mode)
        return model.to(device).eval()

    sd = _torch_load(path)
    source = str(path)
    base_source = None
    family = "pasam"
    if "image_encoder.patch_embed.proj.weight" in sd and HQ_KEY in sd:
        variant = detect_variant(sd, source=source)
        family = "hq-sam"
        model = build_model(variant, family=family)
        _load_strict(model, sd, source=source, what=f"HQ-SAM {variant} (segment-anything-hq)")
    elif "image_encoder.patch_embed.proj.weight" in sd:
        variant = detect_variant(sd, source=source)
        adapter = any(k.startswith("mask_decoder.prompt_adapter.") for k in sd)
        model = build_pasam(variant, adapter=adapter, guide_mode=guide_mode or "reference")
        _load_strict(
            model,
            sd,
            source=source,
            what=f"SAM {variant}" + (" + PA-SAM decoder (merged)" if adapter else ""),
        )
    elif "guiding_conv.0.weight" in sd or "prompt_adapter.static_uncertain_token.weight" in sd:
        dec = load_official_decoder_state_dict(sd, source=source)
        base, base_source = _resolve_sam(
            sam_checkpoint, path, "an official PA-SAM decoder checkpoint"
        )
        variant = detect_variant(base, source=base_source)
        model = build_pasam(variant, adapter=True, guide_mode=guide_mode or "reference")
        merged = {k: v for k, v in base.items() if not k.startswith("mask_decoder.")}
        merged.update({f"mask_decoder.{k}": v for k, v in dec.items()})
        _load_strict(model, merged, source=source, what=f"SAM {variant} + PA-SAM decoder")
    else:
        raise CheckpointError(
            f"{source}: not a SAM or PA-SAM checkpoint: expected SAM keys (image_encoder.*, "
            f"prompt_encoder.*, mask_decoder.*), an official PA-SAM decoder (guiding_conv.*, "
            f"prompt_adapter.*) or a pasam-plugins .safetensors file; found keys like "
            f"{_fmt_keys(list(sd)[:_MAX_LISTED])}"
        )
    kind = "official-pasam" if model.has_adapter else "official-sam"
    model.origin = ModelOrigin(
        kind="official-hq-sam" if family == "hq-sam" else kind,
        file=source,
        base_file=str(Path(base_source).resolve()) if base_source else None,
        variant=variant,
        guide_mode=model.guide_mode,
        has_adapter=model.has_adapter,
        family=family,
    )
    return model.to(device).eval()


def _load_ours(path: Path, *, sam_checkpoint: str | Path | None, guide_mode: str | None) -> PASam:
    meta = read_metadata(path)
    variant = meta.get("variant")
    if variant not in ENCODER_CONFIGS:
        raise CheckpointError(f"{path}: unknown variant {variant!r} in metadata")
    mode = guide_mode or meta.get("guide_mode", "reference")
    has_adapter = bool(meta.get("has_adapter", True))
    family = meta.get("family", "pasam")
    try:
        sd = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from exc
    model = build_model(
        variant,
        family=family,
        adapter=has_adapter,
        guide_mode=mode,
        plm=bool(meta.get("plm", False)),
        hq_token_only=bool(meta.get("hq_token_only", False)),
    )
    contents = meta.get("contents", "full")
    base_source = None
    if contents == "adapter":
        base, base_source = _resolve_sam(sam_checkpoint, path, "this adapter file", meta)
        base_variant = detect_variant(base, source=base_source)
        if base_variant != variant:
            raise CheckpointError(
                f"{path}: adapter trained on SAM {variant}, but {base_source} is SAM {base_variant}"
            )
        # the base supplies what the file does not hold; its own additions (an adapter, HQ
        # parts, a PLM) are used only where this model has them and the file does not
        expected = model.state_dict()
        full = {
            k: v
            for k, v in base.items()
            if k in expected
            and not k.startswith("mask_decoder.guiding_conv.")
            and not k.startswith("mask_decoder.prompt_adapter.")
        }
        full.update(sd)
        sd = full
    elif contents != "full":
        raise CheckpointError(f"{path}: unknown contents {contents!r} in metadata")
    _load_strict(model, sd, source=str(path), what=f"a pasam-plugins {variant} model")
    model.origin = ModelOrigin(
        kind="pasam-adapter" if contents == "adapter" else "pasam-full",
        file=str(path),
        base_file=str(Path(base_source).resolve()) if base_source else None,
        variant=variant,
        guide_mode=model.guide_mode,
        has_adapter=model.has_adapter,
        untrained=bool(meta.get("untrained", False)),
        metadata=meta,
        family=family,
        plm=model.plm is not None,
    )
    return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(
    model: PASam,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    adapter_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save in this project's format, atomically (temp file in the same directory + rename).

    Arguments:
      adapter_only: store only the decoder parts a run on a frozen SAM trains
        (:data:`DELTA_PREFIXES`: the adapter when there is one, SAM's mask head, HQ-SAM's
        additions, the PLM); loading needs the base SAM.
      metadata: extra entries (e.g. ``provenance``: dataset, steps, losses).
      dtype: store floating-point tensors in this type (``torch.float16`` halves the file;
        loading casts back to the model's float32).
    """
    path = Path(path)
    sd = model.state_dict()
    if adapter_only:
        sd = {
            k: v
            for k, v in sd.items()
            if any(k.startswith(f"mask_decoder.{p}") for p in DELTA_PREFIXES)
        }
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        .detach()
        .to("cpu")
        .contiguous()
        for k, v in sd.items()
    }
    meta: dict[str, Any] = {
        "variant": model.variant,
        "guide_mode": model.guide_mode,
        "has_adapter": model.has_adapter,
        "contents": "adapter" if adapter_only else "full",
        "family": getattr(model, "family", "pasam"),
        "plm": model.plm is not None,
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if getattr(model, "family", "pasam") == "hq-sam":
        meta["hq_token_only"] = bool(model.mask_decoder.hq_token_only)
    if dtype is not None:
        meta["stored_dtype"] = str(dtype).removeprefix("torch.")
    if metadata:
        meta.update(metadata)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "pasam": json.dumps(meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_finetuned(
    model: PASam,
    path: str | Path,
    *,
    provenance: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a fine-tuned model: the one rule every front end uses.

    An adapter-only file naming its base when the model's origin has a complete base file
    that still exists (``model.origin.complete_base``: an official SAM or merged file, a
    full file of this project, the base of an adapter file, so fine-tuning a model loaded
    from an adapter file gives another adapter file on the same base); otherwise the whole
    model (random weights built in memory, a decoder file loaded with a separate SAM). The
    untrained flag and the zoom settings travel with it. Afterwards ``model.origin`` names
    the new file.

    Arguments:
      provenance: how it was trained (steps, data, losses), stored as ``provenance``; its
        ``base`` (what training started from) defaults to the model's file, else its base
        file: a model from :func:`pasam_plugins.train.finetune.finetune` has no file yet, so
        callers that started from an adapter file pass that file as ``base``.
      metadata: extra top-level entries (e.g. the napari image it was trained on).
    """
    origin = model.origin
    base = origin.complete_base
    adapter_only = bool(base) and Path(base).is_file()
    meta: dict[str, Any] = {"provenance": dict(provenance)}
    meta["provenance"].setdefault(
        "base", origin.file or base or f"{origin.variant} ({origin.kind})"
    )
    if origin.untrained:
        meta["untrained"] = True
    if origin.zoom is not None:
        meta["zoom"] = origin.zoom
    if adapter_only:
        meta["base_checkpoint"] = str(Path(base).resolve())  # type: ignore[arg-type]
    if metadata:
        meta.update(metadata)
    path = save_checkpoint(model, path, metadata=meta, adapter_only=adapter_only)
    model.origin = origin.derived(
        kind="finetuned" if adapter_only else "pasam-full",
        file=str(path),
        base_file=str(Path(base).resolve()) if adapter_only else None,  # type: ignore[arg-type]
        has_adapter=model.has_adapter,
        metadata=read_metadata(path),
        family=model.family,
        plm=model.plm is not None,
    )
    return path
