"""Training the PA-SAM adapter with the paper's protocol (reference section 5).

SAM stays frozen: image encoder, prompt encoder, the decoder's transformer and IoU head.
Trained: ``guiding_conv``, ``prompt_adapter`` and SAM's ``output_upscaling``,
``output_hypernetworks_mlps`` and ``mask_tokens`` (the parts an adapter file stores).

One optimizer step sees ``batch_size x grad_accum`` images (one object each by default),
each prompted with a randomly drawn prompt kind: the ground-truth box, 10 points inside the
object, a noisy mask (the ground truth with noise on its incoherent band, as SAM-HQ's
``masks_noise``; passed as 0/255 values like SAM-HQ's training code) or a combination.
Augmentation: horizontal flip and large-scale jitter (scale 0.1-2.0 of the 1024-px frame,
random crop, zero padding), as SAM-HQ's ``RandomHFlip`` + ``LargeScaleJitter``. Gumbel top-k
point mining (``mining="gumbel"``) is switched on from ``mining_start_epoch`` (5: the sixth
epoch); before that the decoder runs with ``mining="off"``. Adam, lr 1e-3, x0.1 every
``lr_drop_epoch`` epochs. AMP (bf16, or fp16 with a gradient scaler) on CUDA.

Determinism: the data order of epoch ``e`` and all random draws of step ``s`` come from
generators seeded with ``(seed, e)`` and ``(seed, s, ...)``, so a resumed run draws exactly
what the uninterrupted run would have drawn; the optimizer, scheduler, scaler and trainable
weights are restored from ``train_state.pt`` (written atomically with every checkpoint).

Several processes (``torchrun``, :mod:`pasam_plugins.distributed`): the trainable
parameters are wrapped in DistributedDataParallel (NCCL on CUDA, Gloo on CPUs; the frozen
ones never travel). One optimizer step sees ``batch_size x ranks x grad_accum`` examples:
the step's ``ranks x grad_accum`` micro-batches are numbered ``micro x ranks + rank`` and
seeded by that number, so a run on R ranks with ``grad_accum`` A draws exactly the
examples of a single process with ``grad_accum`` R x A (same ``batch_size``) and ends
with the same weights up to float rounding. Only rank 0 logs and writes checkpoints,
``train_state.pt`` and plots; validation is split across the ranks. ``resume`` accepts
another number of ranks when the global batch is unchanged.
"""

import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor
from torch.nn import functional as F

from .. import distributed
from ..checkpoint import ADAPTER_PREFIXES, HQ_PREFIXES, PLM_PREFIXES, save_checkpoint
from ..fast_encoder import FastImageEncoder
from ..imageio import ImageError, check_image_size, normalize_image
from ..metrics import mask_box
from ..modeling import PASam, build_pasam, rebuilt_with
from .crops import (
    CropExample,
    CropSampler,
    corrective_click,
    jitter_box,
    load_samples,
    sample_in,
)
from .datasets import Dataset, Sample, SampleError
from .losses import hq_loss, pasam_loss, sam_loss, with_term

logger = logging.getLogger(__name__)

#: prompt kinds drawn per image: box, points, noisy mask and their combinations
PROMPT_KINDS: tuple[str, ...] = (
    "box",
    "points",
    "mask",
    "box+points",
    "box+mask",
    "points+mask",
    "box+points+mask",
)
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"
FINAL_NAME = "adapter.safetensors"


# ---------------------------------------------------------------------------- model setup
#: what ``pasam train --train`` can train (comma-separated combinations, see
#: :func:`parse_parts`)
TRAIN_PARTS: tuple[str, ...] = ("adapter", "sam", "head", "hq", "plm", "pmm")
#: SAM's mask head (trained by PA-SAM besides the adapter; the control run trains only it)
HEAD_PREFIXES = ("output_upscaling.", "output_hypernetworks_mlps.", "mask_tokens.")
#: weight of the point matching module's auxiliary loss (smooth L1 in low-res mask pixels):
#: a mean boundary error of 20 low-res pixels (80 px at 1024) weighs as much as a mask loss of
#: 1, so the auxiliary task shapes the decoder features without drowning the mask loss (the
#: paper gives no weight; 1.0 made the mask loss of a 10-step run rise)
PMM_WEIGHT = 0.05


def _encode(model: PASam, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(image embedding, early features or None): SAM's encoder through the fused-attention
    path (:mod:`pasam_plugins.fast_encoder`, same math); models with an encoder of their own
    (HQ-SAM, whose early features feed its HQ head) run it as it is."""
    if type(model).encode_image is PASam.encode_image:
        return FastImageEncoder(model.image_encoder)(x), None
    return model.encode_image(x)


def parse_parts(train: str | Sequence[str]) -> tuple[str, ...]:
    """The parts of a ``--train`` value (``"adapter"``, ``"adapter,plm"``, ``"plm,pmm"`` ...).

    ``sam`` (everything) stands alone; at most one of ``adapter`` (PA-SAM), ``hq``
    (HQ-SAM) and ``head`` (SAM's mask head); ``plm`` (prompt learning module) combines with
    any of them or stands alone; ``pmm`` (point matching module, an auxiliary loss) needs
    something its gradient trains (``plm``, ``adapter``, ``hq`` or ``head``).
    """
    items = train.split(",") if isinstance(train, str) else list(train)
    parts = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
    unknown = [p for p in parts if p not in TRAIN_PARTS]
    if unknown or not parts:
        raise ValueError(
            f"unknown training part(s) {unknown or train!r}; use one of {', '.join(TRAIN_PARTS)} "
            "(or a comma-separated combination such as adapter,plm)"
        )
    if "sam" in parts and len(parts) > 1:
        raise ValueError("--train sam trains the whole SAM: it combines with nothing else")
    if sum(p in parts for p in ("adapter", "hq", "head")) > 1:
        raise ValueError("train at most one of adapter (PA-SAM), hq (HQ-SAM) and head")
    if "pmm" in parts and not any(p in parts for p in ("plm", "adapter", "hq", "head")):
        raise ValueError(
            "pmm is an auxiliary loss: combine it with what it trains (plm, adapter, hq or head)"
        )
    return parts


def part_stem(train: str | Sequence[str]) -> str:
    """File-name stem of a run: the parts joined by "+" ("adapter+plm")."""
    return "+".join(parse_parts(train))


def trainable_names(model: PASam, train: str = "adapter") -> list[str]:
    """Names of the model parameters a run trains (the PMM is not part of the model).

    ``adapter``: PA-SAM's set (the adapter-file parts of the decoder: the adapter plus
    SAM's mask head). ``sam``: everything (stage-1 training of a SAM from scratch).
    ``head``: SAM's mask head alone (``output_upscaling``, ``output_hypernetworks_mlps``,
    ``mask_tokens``): the control run, PA-SAM's trainable decoder parameters without the
    adapter. ``hq``: HQ-SAM's additions (HQ output token, its MLP, the fusion layers).
    ``plm``: the prompt learning module. Combinations train the union.
    """
    parts = parse_parts(train)
    if "sam" in parts:
        return [n for n, _ in model.named_parameters()]
    prefixes: tuple[str, ...] = ()
    for part, pre in (
        ("adapter", ADAPTER_PREFIXES),
        ("head", HEAD_PREFIXES),
        ("hq", HQ_PREFIXES),
        ("plm", PLM_PREFIXES),
    ):
        if part in parts:
            prefixes += pre
    return [
        n
        for n, _ in model.named_parameters()
        if any(n.startswith(f"mask_decoder.{p}") for p in prefixes)
    ]


def freeze_for_training(model: PASam, train: str = "adapter") -> list[torch.nn.Parameter]:
    """Freeze everything but the trainable set; returns the trainable parameters."""
    parts = parse_parts(train)
    if "adapter" in parts and not model.has_adapter:
        raise ValueError("the model has no PA-SAM adapter to train (use with_adapter first)")
    if ("sam" in parts or "head" in parts) and model.has_adapter:
        raise ValueError(f"--train {train} is for models without adapter (SAM)")
    if "hq" in parts and model.family != "hq-sam":
        raise ValueError("the model is not an HQ-SAM (use pasam_plugins.hq.with_hq first)")
    if "plm" in parts and model.plm is None:
        raise ValueError("the model has no prompt learning module (use attach_plm first)")
    names = set(trainable_names(model, train))
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    return params


def prepare_for_training(
    model: PASam, train: str, *, guide_mode: str = "image", seed: int = 0
) -> PASam:
    """``model`` with the modules ``train`` trains: a new PA-SAM adapter (``adapter``, on a
    SAM), HQ-SAM's additions (``hq``, on a SAM), a new prompt learning module (``plm``).
    Parts the model already has are trained further. The result may be a new model holding
    the same weights; the PMM is made by the trainer."""
    parts = parse_parts(train)
    if "adapter" in parts:
        if model.family != "pasam":
            raise ValueError(f"the PA-SAM adapter is trained on a SAM, not on {model.family}")
        model = with_adapter(model, guide_mode=guide_mode, seed=seed)
    if "hq" in parts:
        from ..hq import with_hq

        model = with_hq(model, seed=seed)
    if "plm" in parts:
        from ..prompt_learning import attach_plm

        attach_plm(model, seed=seed)
    return model


def with_adapter(model: PASam, *, guide_mode: str = "image", seed: int = 0) -> PASam:
    """``model`` itself when it has an adapter, else a copy of its SAM weights with a newly
    initialized adapter (seeded) in ``guide_mode``."""
    if model.has_adapter:
        return model
    new = rebuilt_with(
        model,
        lambda: build_pasam(model.variant, adapter=True, guide_mode=guide_mode),  # type: ignore[arg-type]
        seed=seed,
        new_prefixes=("mask_decoder.guiding_conv.", "mask_decoder.prompt_adapter."),
    )
    new.origin = new.origin.derived(plm=new.plm is not None)
    return new


# ---------------------------------------------------------------------------- data prep
@dataclass
class ObjectPrompts:
    """One object of a prepared image: its label id, GT box and a pool of interior points,
    both in the 1024-px input frame."""

    label: int
    box: np.ndarray  # 4 float32
    points: np.ndarray  # Px2 float32 (x, y)


@dataclass
class PreparedImage:
    """An image ready for the decoder: what the frozen encoder computed, plus targets.

    Attributes:
      embedding: 1xCx64x64 image embedding (frozen encoder output).
      guide_input: the frozen per-image input of the trained guide (``model.guide_input``:
        PA-SAM's 1x4x256x256 guide input, HQ-SAM's early encoder features); the trained
        part (``model.encode_guide``) runs per step.
      target: LxL int32 labels in the padded 1024-px frame at the loss resolution L.
      low: 256x256 int32 labels in the same frame at the mask-input resolution.
      objects: the usable objects.
    """

    name: str
    embedding: Tensor
    guide_input: Tensor
    target: Tensor
    low: Tensor
    objects: list[ObjectPrompts]


def _labels_to_frame(
    labels: np.ndarray, input_size: tuple[int, int], size: int, img: int
) -> np.ndarray:
    """HxW labels -> size x size labels of the padded img x img frame (nearest)."""
    h = max(1, int(round(input_size[0] * size / img)))
    w = max(1, int(round(input_size[1] * size / img)))
    small = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((size, size), np.int32)
    out[:h, :w] = small
    return out


@torch.no_grad()
def prepare_image(
    model: PASam,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    name: str = "",
    loss_size: int = 256,
    min_pixels: int = 4,
    pool_size: int = 1024,
    rng: np.random.Generator | None = None,
    autocast: Callable[[], Any] = nullcontext,
) -> PreparedImage:
    """Run the frozen encoder on one image and build its targets and prompt pools.

    Arguments:
      image: HxWx3 uint8 RGB (other kinds are normalized).
      labels: HxW int label map (0 = background).
      loss_size: resolution of the loss targets in the padded 1024 frame (1024 = the
        paper's full resolution; 256 is 16x cheaper).
      min_pixels: objects with fewer pixels in the loss frame are left out.
    """
    rgb = normalize_image(image)
    if labels.shape != rgb.shape[:2]:
        raise SampleError(f"{name}: image {rgb.shape[:2]} and labels {labels.shape} differ")
    rng = rng or np.random.default_rng(0)
    device = next(model.parameters()).device
    img = model.image_encoder.img_size
    try:
        check_image_size(*rgb.shape[:2], target_length=img, name=name)
    except ImageError as e:
        raise SampleError(str(e)) from None
    transform = ResizeLongestSide(img)
    resized = transform.apply_image(rgb)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float()
    x = model.preprocess(x)
    with autocast():
        embedding, early = _encode(model, x)
    embedding = embedding.float()
    gin = model.guide_input(x, resized, None if early is None else early.float()).float()
    input_size = resized.shape[:2]
    target = _labels_to_frame(labels, input_size, loss_size, img)
    low = _labels_to_frame(labels, input_size, 256, img)
    counts = np.bincount(target.ravel())
    objects = []
    original = labels.shape
    for obj in np.unique(labels):
        if obj == 0 or obj >= counts.size or counts[obj] < min_pixels:
            continue
        m = labels == obj
        box = transform.apply_boxes(mask_box(m)[None].astype(np.float64), original)[0]
        ys, xs = np.nonzero(m)
        if ys.size > pool_size:
            pick = rng.choice(ys.size, pool_size, replace=False)
            ys, xs = ys[pick], xs[pick]
        pts = transform.apply_coords(np.stack([xs, ys], 1).astype(np.float64), original)
        objects.append(ObjectPrompts(int(obj), box.astype(np.float32), pts.astype(np.float32)))
    return PreparedImage(
        name=name,
        embedding=embedding,
        guide_input=gin,
        target=torch.from_numpy(target).to(device),
        low=torch.from_numpy(low).to(device),
        objects=objects,
    )


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    jitter: tuple[float, float] | None = (0.1, 2.0),
    size: int = 1024,
    tries: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip (p = 0.5) and large-scale jitter onto a ``size`` x ``size`` canvas.

    Jitter (SAM-HQ's ``LargeScaleJitter``): resize so the longest side is ``size x s`` with
    ``s ~ U(jitter)``, crop a random ``size`` x ``size`` window when larger, pad with zeros
    at the bottom/right. A draw that loses every object is redrawn (``tries`` times), then
    the image is only resized.
    """
    if flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if jitter is None:
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)
    h, w = labels.shape
    for attempt in range(tries + 1):
        s = rng.uniform(*jitter) if attempt < tries else 1.0
        scale = size * s / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        img = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(labels.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST)
        y0 = int(rng.integers(0, nh - size + 1)) if nh > size else 0
        x0 = int(rng.integers(0, nw - size + 1)) if nw > size else 0
        img, lab = img[y0 : y0 + size, x0 : x0 + size], lab[y0 : y0 + size, x0 : x0 + size]
        if (lab != 0).any():
            break
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas_l = np.zeros((size, size), np.int32)
    canvas[: img.shape[0], : img.shape[1]] = img
    canvas_l[: lab.shape[0], : lab.shape[1]] = lab
    return canvas, canvas_l


# ---------------------------------------------------------------------------- one step
def noisy_mask(gt: Tensor, rng: np.random.Generator) -> Tensor:
    """SAM-HQ's ``masks_noise``: Gaussian noise on the incoherent band of Bx1x256x256 {0,1}
    masks (where the mask differs from its 8x down/up-sampled version), thresholded; 0/255."""
    h, w = gt.shape[-2:]
    small = F.interpolate(gt, (h // 8, w // 8), mode="bilinear", align_corners=False)
    recovered = F.interpolate(small, (h, w), mode="bilinear", align_corners=False)
    incoherent = ((gt - recovered).abs() >= 0.01).float()
    noise = torch.from_numpy(rng.standard_normal(gt.shape).astype(np.float32)).to(gt.device)
    return ((gt + noise * incoherent) > 0.5).float() * 255.0


def build_prompts(
    prep: PreparedImage,
    objects: Sequence[int],
    kind: str,
    rng: np.random.Generator,
    *,
    num_points: int = 10,
) -> dict[str, Any]:
    """``decode`` keyword arguments (points / boxes / mask_input) for objects of one image."""
    parts = set(kind.split("+"))
    unknown = parts - {"box", "points", "mask"}
    if unknown:
        raise ValueError(f"unknown prompt kind {kind!r}")
    dev = prep.embedding.device
    objs = [prep.objects[i] for i in objects]
    kw: dict[str, Any] = {"points": None, "boxes": None, "mask_input": None}
    if "box" in parts:
        kw["boxes"] = torch.as_tensor(np.stack([o.box for o in objs]), device=dev)
    if "points" in parts:
        pts = []
        for o in objs:
            idx = rng.choice(len(o.points), num_points, replace=len(o.points) < num_points)
            pts.append(o.points[idx])
        coords = torch.as_tensor(np.stack(pts), device=dev)
        kw["points"] = (coords, torch.ones(coords.shape[:2], dtype=torch.int, device=dev))
    if "mask" in parts:
        gt = torch.stack([(prep.low == o.label) for o in objs])[:, None].float()
        kw["mask_input"] = noisy_mask(gt, rng)
    return kw


def image_loss(
    model: PASam,
    prep: PreparedImage,
    objects: Sequence[int],
    rng: np.random.Generator,
    *,
    prompt_kinds: Sequence[str] = PROMPT_KINDS,
    num_points: int = 10,
    mining: str = "off",
    generator: torch.Generator | None = None,
    autocast: Callable[[], Any] = nullcontext,
    pmm: torch.nn.Module | None = None,
    balanced: bool = True,
):
    """The loss of some objects of one prepared image (gradients to the trainable set):
    PA-SAM's with the adapter, HQ-SAM's for HQ-SAM, else SAM's (:func:`model_loss`), plus
    the point matching module's auxiliary loss when ``pmm`` is given."""
    kind = prompt_kinds[int(rng.integers(len(prompt_kinds)))]
    kw = build_prompts(prep, objects, kind, rng, num_points=num_points)
    with autocast():
        guide = model.encode_guide(prep.guide_input, prep.embedding) if model.uses_guide else None
        out = model.decode(
            prep.embedding,
            guide=guide,
            multimask_output=False,
            mining=mining,  # type: ignore[arg-type]
            generator=generator,
            return_features=pmm is not None,
            **kw,
        )
    gt = torch.stack([(prep.target == prep.objects[i].label) for i in objects])[:, None].float()
    terms, chosen = model_loss(model, out, gt, balanced=balanced)
    return add_pmm_loss(terms, pmm, out, chosen, gt)


def model_loss(model: PASam, out, gt: Tensor, *, balanced: bool = True) -> tuple[Any, Tensor]:
    """The training loss of a decoder output and the Bx1 mask logits it scored (the ones a
    corrective click is drawn from): PA-SAM's loss with the adapter, HQ-SAM's (the HQ token's
    mask) for HQ-SAM, else SAM's (the best of the masks; class-balanced BCE when
    ``balanced``)."""
    if model.has_adapter:
        return pasam_loss(out, gt), out.masks[:, :1]
    if out.hq_masks is not None:
        return hq_loss(out, gt), out.masks[:, :1]
    terms, best = sam_loss(out.masks, out.iou_predictions, gt, balanced=balanced)
    idx = best.view(-1, 1, 1, 1).expand(-1, 1, *out.masks.shape[-2:])
    return terms, out.masks.gather(1, idx)


def add_pmm_loss(terms: Any, pmm: torch.nn.Module | None, out, chosen: Tensor, gt: Tensor) -> Any:
    """``terms`` plus the point matching module's loss (:func:`pmm_loss`) as ``pmm``."""
    if pmm is None or out.mask_features is None:
        return terms
    from ..prompt_learning import pmm_loss

    aux = pmm_loss(pmm, out.mask_features, chosen.detach(), gt)
    if aux is None:
        aux = out.mask_features.sum() * 0.0  # no boundary: a zero term keeps the keys stable
    return with_term(terms, "pmm", PMM_WEIGHT * aux)


#: initial prompt kinds of zoomed-in training (tight crops; wide crops start with clicks)
CROP_PROMPT_KINDS: tuple[str, ...] = ("box", "points", "box+points", "mask")


def _initial_prompts(
    ex: CropExample, kind: str, rng: np.random.Generator, out: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """points (Nx2), labels (N), box (4), mask logits (LxL) for a crop's first prediction."""
    parts = set(kind.split("+"))
    pts = lab = box = mask = None
    if "box" in parts:
        box = jitter_box(ex.box, rng, limit=out)
    if "points" in parts:
        n_pos = int(rng.choice([1, 1, 1, 2, 3]))
        pts = sample_in(ex.target, n_pos, rng)
        lab = np.ones(n_pos, np.int64)
        if rng.random() < 0.2 and (~ex.target).any():
            pts = np.concatenate([pts, sample_in(~ex.target, 1, rng)])
            lab = np.concatenate([lab, [0]])
    if "mask" in parts:
        low = out // 4
        gt = torch.from_numpy(ex.target.astype(np.float32))[None, None]
        gt = F.interpolate(gt, (low, low), mode="area")
        noisy = noisy_mask((gt > 0.5).float(), rng)  # 0/255
        mask = ((noisy / 255.0) * 2.0 - 1.0).numpy()[0] * 8.0  # logits of a confident mask
        if box is None and pts is None:  # a mask alone is ambiguous: add one click
            pts = sample_in(ex.target, 1, rng)
            lab = np.ones(1, np.int64)
    return pts, lab, box, mask


def crop_losses(
    model: PASam,
    examples: Sequence[CropExample],
    rng: np.random.Generator,
    *,
    train_encoder: bool,
    corrective_clicks: int = 0,
    prompt_kinds: Sequence[str] = CROP_PROMPT_KINDS,
    mining: str = "off",
    generator: torch.Generator | None = None,
    autocast: Callable[[], Any] = nullcontext,
    balanced: bool = True,
    pmm: torch.nn.Module | None = None,
) -> list[Any]:
    """Losses of zoomed-in examples with interactive prompt simulation.

    Each example gets an initial prompt (tight crops: one of ``prompt_kinds``; wide crops:
    clicks), then ``corrective_clicks`` rounds in which a click drawn from the error region
    of the previous prediction is added and the previous low-res logits are fed back as
    mask prompt (SAM's and micro-sam's iterative training). Every round's loss counts. With
    the adapter the loss is PA-SAM's (:func:`pasam_loss`), for HQ-SAM HQ-SAM's
    (:func:`hq_loss`), else SAM's (:func:`sam_loss`, class-balanced BCE when ``balanced``);
    with ``pmm`` plus the point matching module's auxiliary loss. A single click without box
    or mask asks for multimask output (SAM's rule for ambiguous prompts) on models without
    adapter.

    Returns:
      One loss-terms object per example and round.
    """
    n = model.img_size
    dev = next(model.parameters()).device
    images = np.stack([ex.image for ex in examples])
    x = torch.as_tensor(images, device=dev).permute(0, 3, 1, 2).float()
    x = model.preprocess(x)
    grad_ctx = nullcontext() if train_encoder else torch.no_grad()
    with grad_ctx, autocast():
        emb, early = _encode(model, x)  # SAM's encoder through fused attention
    emb = emb.float()
    terms: list[Any] = []
    for i, ex in enumerate(examples):
        guide = None
        if model.uses_guide:
            early_i = None if early is None else early[i : i + 1].float()
            gin = model.guide_input(x[i : i + 1], ex.image, early_i).float()
            with autocast():
                guide = model.encode_guide(gin, emb[i : i + 1])
        kind = "points" if ex.wide else prompt_kinds[int(rng.integers(len(prompt_kinds)))]
        pts, lab, box, mask = _initial_prompts(ex, kind, rng, n)
        gt = torch.as_tensor(ex.target, device=dev)[None, None].float()
        rounds = 0 if ex.wide else corrective_clicks
        for r in range(rounds + 1):
            multimask = (
                not model.has_adapter
                and box is None
                and mask is None
                and pts is not None
                and len(pts) == 1
            )
            points_t = None
            if pts is not None:
                points_t = (
                    torch.as_tensor(pts[None], dtype=torch.float, device=dev),
                    torch.as_tensor(lab[None], dtype=torch.int, device=dev),
                )
            box_t = (
                None if box is None else torch.as_tensor(box[None], dtype=torch.float, device=dev)
            )
            mask_t = None
            if mask is not None:
                mask_t = torch.as_tensor(mask, dtype=torch.float, device=dev).reshape(
                    1, 1, *mask.shape[-2:]
                )
            with autocast():
                out = model.decode(
                    emb[i : i + 1],
                    guide=guide,
                    points=points_t,
                    boxes=box_t,
                    mask_input=mask_t,
                    multimask_output=multimask,
                    mining=mining,  # type: ignore[arg-type]
                    generator=generator,
                    return_features=pmm is not None,
                )
            t, chosen = model_loss(model, out, gt, balanced=balanced)
            terms.append(add_pmm_loss(t, pmm, out, chosen, gt))
            if r == rounds:
                break
            with torch.no_grad():
                low = chosen.detach().float()
                up = F.interpolate(low, (n, n), mode="bilinear", align_corners=False)[0, 0] > 0
            click = corrective_click(up.cpu().numpy(), ex.target, rng)
            if click is None:
                break
            xy, positive = click
            pts = xy[None] if pts is None else np.concatenate([pts, xy[None]])
            lab = np.array([positive]) if lab is None else np.concatenate([lab, [positive]])
            mask = low[0, 0].cpu().numpy()
    return terms


def pick_objects(prep: PreparedImage, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` object indices (all when fewer), a seeded random choice."""
    k = len(prep.objects)
    if k <= n:
        return list(range(k))
    return sorted(int(i) for i in rng.choice(k, n, replace=False))


# ---------------------------------------------------------------------------- the trainer
@dataclass
class TrainConfig:
    """Settings of a training run (the defaults are the paper's protocol)."""

    #: output folder; None: nothing is written (in-process fine-tuning)
    out_dir: str | None = "pasam-train"
    epochs: int = 21
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    lr_drop_epoch: int = 10
    lr_gamma: float = 0.1
    mining_start_epoch: int = 5
    prompt_kinds: tuple[str, ...] = PROMPT_KINDS
    num_points: int = 10
    objects_per_image: int = 1
    flip: bool = True
    jitter: tuple[float, float] | None = (0.1, 2.0)
    loss_size: int = 1024
    seed: int = 0
    amp: bool = True
    save_every: int = 500
    val_every: int = 0  # steps; 0 = after every epoch
    val_max_objects: int | None = 20
    max_steps: int | None = None
    adapter_only: bool = True
    device: str | None = None
    #: keep encoder outputs per image and flip (only without jitter); None = when <= 300 images
    cache_embeddings: bool | None = None
    #: what is trained (see :func:`parse_parts`): adapter, sam, head, hq, plm, or a
    #: comma-separated combination such as "adapter,plm" or "plm,pmm"
    train: str = "adapter"
    #: zoomed-in examples (one object per crop, :mod:`.crops`) instead of whole frames
    crops: bool = False
    #: crop examples: corrective-click rounds after the first prediction
    corrective_clicks: int = 0
    #: crop examples: share of wide (click-centred, zoomed-out) crops
    wide_fraction: float = 0.35
    #: steps per epoch (default: one pass over the images; crop runs set it)
    epoch_steps: int | None = None
    #: "adam" (the paper) or "adamw"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    #: "step" (x lr_gamma every lr_drop_epoch epochs, the paper) or "cosine" (to 0)
    schedule: str = "step"
    warmup_steps: int = 0
    #: clip the gradient norm (0: off)
    grad_clip: float = 0.0
    #: class-balanced BCE in SAM's loss (models without adapter)
    balanced_bce: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompt_kinds"] = list(self.prompt_kinds)
        d["jitter"] = list(self.jitter) if self.jitter else None
        return d


@dataclass
class TrainResult:
    model: PASam
    step: int
    checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


class _Forward(torch.nn.Module):
    """What DDP wraps: the model (its trainable parameters are synchronized) and a forward
    that runs the training code given to it, so DDP sees every forward of a step."""

    def __init__(self, model: PASam) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast buffers every forward" (renamed in torch 2.14)."""
    import inspect

    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _merge_sums(parts: Sequence[tuple[dict[str, float], int]]) -> tuple[dict[str, float], int]:
    sums: dict[str, float] = {}
    count = 0
    for part_sums, part_count in parts:
        for k, v in part_sums.items():
            sums[k] = sums.get(k, 0.0) + v
        count += part_count
    return sums, count


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _autocast_factory(
    device: torch.device, amp: bool
) -> tuple[Callable[[], Any], torch.dtype | None]:
    """Mixed precision: bf16 (or fp16 with a gradient scaler) on CUDA; bf16 on CPUs that
    compute it in hardware and measure faster with it (the rule of ``precision="auto"`` at
    inference, :func:`pasam_plugins.precision.cpu_bf16_is_fast`): no loss scaling is needed
    for bf16. Off otherwise."""
    if not amp:
        return nullcontext, None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return (lambda: torch.autocast("cuda", dtype=dtype)), dtype
    if device.type == "cpu":
        from ..precision import cpu_bf16_is_fast

        if cpu_bf16_is_fast():
            return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), torch.bfloat16
    return nullcontext, None


def lr_factor(step: int, cfg: "TrainConfig", steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then the paper's step decay
    (``lr_gamma`` every ``lr_drop_epoch`` epochs) or a cosine to 0 over the run."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    epoch = step // max(1, steps_per_epoch)
    return warm * cfg.lr_gamma ** (epoch // max(1, cfg.lr_drop_epoch))


class Trainer:
    """Runs :class:`TrainConfig` on training samples; see the module docstring.

    Arguments:
      model: a PA-SAM (with adapter; see :func:`with_adapter`). Trained in place.
      train: training samples. val: validation datasets (optional).
      provenance: extra metadata recorded in every checkpoint (data sources, base model).
    """

    def __init__(
        self,
        model: PASam,
        train: Sequence[Sample],
        *,
        config: TrainConfig,
        val: Sequence[Dataset] = (),
        provenance: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        if not train:
            raise ValueError("no training samples")
        from ..predictor import select_device

        self.cfg = config
        self.device = select_device(config.device)
        self.model = model.to(self.device).eval()
        self.parts = parse_parts(config.train)
        self.params = freeze_for_training(self.model, config.train)
        self.names = trainable_names(self.model, config.train)
        #: the point matching module (training only, not saved with the model)
        self.pmm: torch.nn.Module | None = None
        if "pmm" in self.parts:
            from ..prompt_learning import PointMatchingModule

            state = torch.random.get_rng_state()
            try:
                torch.manual_seed(config.seed)
                dim = int(self.model.mask_decoder.transformer_dim) // 8
                self.pmm = PointMatchingModule(feature_dim=dim).to(self.device)
            finally:
                torch.random.set_rng_state(state)
            self.params = self.params + list(self.pmm.parameters())
        self.train_samples = list(train)
        self.val = list(val)
        self.provenance = dict(provenance or {})
        self.progress = progress
        self.out = Path(config.out_dir) if config.out_dir else None
        self.autocast, amp_dtype = _autocast_factory(self.device, config.amp)
        if config.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.params, lr=config.lr, weight_decay=config.weight_decay
            )
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                self.params,
                lr=config.lr,
                betas=(0.9, 0.999),
                eps=1e-8,
                weight_decay=config.weight_decay,
            )
        else:
            raise ValueError(f"unknown optimizer {config.optimizer!r}; use adam or adamw")
        if config.schedule not in ("step", "cosine"):
            raise ValueError(f"unknown schedule {config.schedule!r}; use step or cosine")
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.micro_per_step = max(1, config.grad_accum)
        # under torchrun: this process is `rank` of `world`; one step = batch x world x accum
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        per_step = config.batch_size * self.micro_per_step * self.world
        self.steps_per_epoch = config.epoch_steps or max(
            1, math.ceil(len(self.train_samples) / per_step)
        )
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config, self.steps_per_epoch, self.total_steps),
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best_val: float | None = None  # derived from the history when first needed
        self.skipped: dict[str, str] = {}
        #: the last run ended early because should_stop() said so
        self.stopped = False
        self.crop_sampler: CropSampler | None = None
        if config.crops:
            loaded, skipped = load_samples(self.train_samples)
            self.skipped.update(skipped)
            self.crop_sampler = CropSampler(
                loaded, out=self.model.img_size, wide_fraction=config.wide_fraction
            )
        cache = config.cache_embeddings
        if cache is None:
            cache = config.jitter is None and len(self.train_samples) <= 300 and not config.crops
        if cache and (config.jitter is not None or config.crops):
            raise ValueError(
                "embeddings can only be cached without large-scale jitter (and for whole "
                "frames, not zoomed-in crops)"
            )
        self.cache: dict[tuple[int, bool], PreparedImage | None] | None = {} if cache else None
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.world > 1:
            # DDP over the trainable parameters (the frozen ones have requires_grad False);
            # its constructor also copies rank 0's weights to every rank
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                _Forward(self.model),
                device_ids=[self.device.index or 0] if self.device.type == "cuda" else None,
                **_no_buffer_sync(),  # the buffers (pixel mean/std) never change
            )

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over all ranks: batch_size x ranks x grad_accum."""
        return self.cfg.batch_size * self.world * self.micro_per_step

    # -------------------------------------------------------------- state
    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        params = dict(self.model.named_parameters())
        out = {n: params[n] for n in self.names}
        if self.pmm is not None:
            out.update({f"pmm.{n}": p for n, p in self.pmm.named_parameters()})
        return out

    def state_dict(self) -> dict[str, Any]:
        trainable = self._named_trainable()
        return {
            "format": "pasam-train-state",
            "step": self.step,
            "world_size": self.world,
            "config": self.cfg.to_json(),
            "trainable": {n: p.detach().cpu().clone() for n, p in trainable.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.random.get_rng_state(),
            "rng_python": list(random.getstate()[1]),
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "pasam-train-state":
            raise ValueError("not a pasam training state file")
        params = self._named_trainable()
        missing = [n for n in params if n not in state["trainable"]]
        if missing:
            raise ValueError(f"training state lacks trainable weights: {missing[:4]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["trainable"][n].to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.random.set_rng_state(state["rng_torch"])
        py = random.getstate()
        random.setstate((py[0], tuple(int(v) for v in state["rng_python"]), py[2]))
        self.step = int(state["step"])
        self.history = json.loads(state.get("history") or "[]")
        self.best_val = None

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``train_state.pt`` (default: the one in ``out_dir``)."""
        if path is None and self.out is None:
            raise ValueError("no training state to resume from: the run has no out_dir")
        path = Path(path) if path is not None else self.out / STATE_NAME  # type: ignore[operator]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training state to resume from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state.get("config", {})
        saved_world = int(state.get("world_size", 1))
        if "batch_size" in saved and "grad_accum" in saved:
            before = int(saved["batch_size"]) * int(saved["grad_accum"]) * saved_world
            if before != self.global_batch:
                raise ValueError(
                    f"{path}: was trained with a global batch of {before} (batch_size "
                    f"{saved['batch_size']} x {saved_world} rank(s) x grad_accum "
                    f"{saved['grad_accum']}), now {self.global_batch} (batch_size "
                    f"{self.cfg.batch_size} x {self.world} x grad_accum {self.micro_per_step}); "
                    "resume needs the same global batch (set --grad-accum accordingly)"
                )
            if int(saved["batch_size"]) != self.cfg.batch_size and self.is_main:
                logger.warning(
                    "resuming with batch_size %d per rank instead of %s: same data order and "
                    "schedule, but other random prompts and augmentations than an "
                    "uninterrupted run (keep batch_size and change grad_accum for an exact "
                    "continuation)",
                    self.cfg.batch_size,
                    saved["batch_size"],
                )
        for key in (
            "seed",
            "epochs",
            "prompt_kinds",
            "loss_size",
            "train",
            "crops",
        ):
            mine = self.cfg.to_json()[key]
            if key in saved and saved[key] != mine:
                raise ValueError(
                    f"{path}: was trained with {key}={saved[key]!r}, now {mine!r}; "
                    f"resume needs the same setting"
                )
        self.load_state_dict(state)
        # the log holds what the interrupted run did after its last checkpoint: keep only
        # the records the resumed run will not write again
        log = self.out / LOG_NAME if self.out is not None and self.is_main else None
        if log is not None and log.is_file():
            tmp = log.with_name(f".{LOG_NAME}.tmp")
            tmp.write_text("".join(json.dumps(h) + "\n" for h in self.history), encoding="utf-8")
            os.replace(tmp, log)

    # -------------------------------------------------------------- data
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch, 7]).permutation(len(self.train_samples))

    def _micro_batch(self, step: int, micro: int) -> list[int]:
        """Sample indices of micro-batch ``micro`` (numbered over all ranks) of ``step``."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        b = self.cfg.batch_size
        start = (in_epoch * self.micro_per_step * self.world + micro) * b
        idx = order[start : start + b]
        if len(idx) < b:  # last partial batch: fill from the start of the order
            idx = np.concatenate([idx, order[: b - len(idx)]])
        return [int(i) for i in idx]

    def _prepare(self, index: int, rng: np.random.Generator) -> PreparedImage | None:
        """The augmented, encoded sample ``index``. Without jitter the only augmentation is
        the flip, and both variants are cached (the encoder runs once per image and flip)."""
        flipped = bool(self.cfg.flip and rng.random() < 0.5)
        if self.cache is not None:
            key = (index, flipped)
            if key not in self.cache:
                self.cache[key] = self._prepare_cached(index, flipped)
            return self.cache[key]
        loaded = self._load_flipped(index, flipped)
        if loaded is None:
            return None
        image, labels = augment(*loaded, rng, flip=False, jitter=self.cfg.jitter)
        return self._encode(index, image, labels, rng, cached=False)

    def _prepare_cached(self, index: int, flipped: bool) -> PreparedImage | None:
        loaded = self._load_flipped(index, flipped)
        if loaded is None:
            return None
        pool_rng = np.random.default_rng([self.cfg.seed, index, int(flipped), 11])
        return self._encode(index, *loaded, pool_rng, cached=True)

    def _load_flipped(self, index: int, flipped: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """Image and labels of sample ``index`` (None: unreadable), mirrored when ``flipped``."""
        loaded = self._load(index)
        if loaded is None:
            return None
        image, labels = loaded
        return (image[:, ::-1], labels[:, ::-1]) if flipped else (image, labels)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        sample = self.train_samples[index]
        if sample.name in self.skipped:
            return None
        try:
            return sample.load()
        except (SampleError, ValueError, OSError) as exc:
            self.skipped[sample.name] = str(exc)
            logger.warning("skipping %s: %s", sample.name, exc)
            return None

    def _encode(
        self,
        index: int,
        image: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        *,
        cached: bool,
    ) -> PreparedImage | None:
        sample = self.train_samples[index]
        prep = prepare_image(
            self.model,
            np.ascontiguousarray(image),
            np.ascontiguousarray(labels),
            name=sample.name,
            loss_size=self.cfg.loss_size,
            rng=rng,
            autocast=self.autocast,
        )
        if not prep.objects:
            if cached:  # the image itself has no usable object (not just this augmentation)
                self.skipped.setdefault(sample.name, "no object (all empty or too small)")
            return None
        return prep

    # -------------------------------------------------------------- loop
    def _crop_micro(self, step: int, micro: int, mining: str) -> list[Any]:
        """Loss terms of one micro-batch of zoomed-in examples (seeded by step and micro)."""
        cfg = self.cfg
        assert self.crop_sampler is not None
        rng = np.random.default_rng([cfg.seed, step, micro, 5])
        examples = [self.crop_sampler.draw(rng) for _ in range(cfg.batch_size)]
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        return crop_losses(
            self.model,
            examples,
            rng,
            train_encoder=cfg.train == "sam",
            corrective_clicks=cfg.corrective_clicks,
            mining=mining,
            generator=gen,
            autocast=self.autocast,
            balanced=cfg.balanced_bce,
            pmm=self.pmm,
        )

    def _frame_micro(self, step: int, micro: int, mining: str) -> list[Any]:
        """Loss terms of one micro-batch of whole (augmented) frames."""
        cfg = self.cfg
        terms_list = []
        for slot, index in enumerate(self._micro_batch(step, micro)):
            rng = np.random.default_rng([cfg.seed, step, micro, slot])
            prep = self._prepare(index, rng)
            if prep is None:
                continue
            gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
            objs = pick_objects(prep, cfg.objects_per_image, rng)
            terms_list.append(
                image_loss(
                    self.model,
                    prep,
                    objs,
                    rng,
                    prompt_kinds=cfg.prompt_kinds,
                    num_points=cfg.num_points,
                    mining=mining,
                    generator=gen,
                    autocast=self.autocast,
                    pmm=self.pmm,
                    balanced=cfg.balanced_bce,
                )
            )
        return terms_list

    def _micro_terms(self, step: int, micro: int, mining: str) -> list[Any]:
        if self.crop_sampler is not None:
            return self._crop_micro(step, micro, mining)
        return self._frame_micro(step, micro, mining)

    def _ddp_micro(self, step: int, micro: int, mining: str) -> tuple[Tensor, list[Any]]:
        """(loss, terms) of one micro-batch, computed inside DDP's forward. A zero times
        every trainable parameter is added, so that every parameter takes part in every
        backward (DDP waits for all of them) and a rank whose micro-batch had no usable
        image still joins the gradient exchange."""
        terms_list = self._micro_terms(step, micro, mining)
        zero = torch.stack([p.reshape(-1)[0] for p in self.params]).sum() * 0.0
        if not terms_list:
            return zero, terms_list
        loss = torch.stack([t.total for t in terms_list]).mean() / self.micro_per_step
        return loss + zero, terms_list

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches on each of the ranks)."""
        cfg = self.cfg
        step = self.step
        epoch = step // self.steps_per_epoch
        mining = "gumbel" if epoch >= cfg.mining_start_epoch else "off"
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        count = 0
        for local in range(self.micro_per_step):
            micro = local * self.world + self.rank  # numbered over all ranks (seeds, data)
            if self.ddp is None:
                terms_list = self._micro_terms(step, micro, mining)
                if terms_list:
                    loss = torch.stack([t.total for t in terms_list]).mean()
                    self.scaler.scale(loss / self.micro_per_step).backward()
            else:
                last = local == self.micro_per_step - 1
                with nullcontext() if last else self.ddp.no_sync():  # all-reduce once a step
                    loss, terms_list = self.ddp(lambda m=micro: self._ddp_micro(step, m, mining))
                    self.scaler.scale(loss).backward()
            for terms in terms_list:
                for k, v in terms.as_dict().items():
                    sums[k] = sums.get(k, 0.0) + v
            count += len(terms_list)
        if self.world > 1:  # the logged loss is the mean over every rank's examples
            sums, count = _merge_sums(distributed.all_gather((sums, count)))
        if count:
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.step += 1
        self.scheduler.step()
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out.update(
            step=self.step,
            epoch=epoch,
            lr=self.optimizer.param_groups[0]["lr"],
            mining=mining,
            images=count,
        )
        return out

    def validate(self) -> dict[str, float]:
        """Validation mIoU / boundary mIoU (split across the ranks, the same on each)."""
        from ..evaluate import evaluate_model, merge_reports
        from ..segment import ZoomSettings

        rep = evaluate_model(
            self.model,
            self.val,
            compare_sam=False,
            max_objects=self.cfg.val_max_objects,
            seed=self.cfg.seed,
            device=self.device,
            zoom=ZoomSettings() if self.cfg.crops else None,
            shard=(self.rank, self.world) if self.world > 1 else None,
        )
        if self.world > 1:
            rep = merge_reports(distributed.all_gather(rep))
        miou, mbiou = rep.mean(rep.models[0]) if rep.results else (float("nan"),) * 2
        out = {"val_miou": miou, "val_mbiou": mbiou}
        for d in rep.datasets:
            m, b = rep.mean(rep.models[0], d)
            out[f"val_miou/{d}"], out[f"val_mbiou/{d}"] = m, b
        self.model.eval()
        return out

    def _best_val(self) -> float:
        """The best validation mIoU logged before the current step (resumes included)."""
        if self.best_val is None:
            vals = [h["val_miou"] for h in self.history[:-1] if h.get("val_miou") is not None]
            self.best_val = max(vals) if vals else -math.inf
        return self.best_val

    def _log(self, record: dict[str, Any]) -> None:
        record = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()
        }
        self.history.append(record)
        if self.out is None or not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, *, final: bool = False, best: bool = False) -> Path:
        """Checkpoint (adapter format, with provenance) plus the resumable training state.

        ``best``: only the checkpoint ``<part>-best.safetensors`` (the best validation so far).
        Under torchrun only rank 0 writes (every rank holds the same weights and optimizer
        state); the others return the path rank 0 writes.
        """
        if self.out is None:
            raise ValueError("this run has no out_dir to save to")
        stem = part_stem(self.cfg.train)
        if best:
            name = f"{stem}-best.safetensors"
        elif final:
            name = f"{stem}.safetensors" if stem != "adapter" else FINAL_NAME
        else:
            name = f"{stem}-step{self.step:06d}.safetensors"
        if not self.is_main:
            return self.out / name
        self.out.mkdir(parents=True, exist_ok=True)
        last_loss = next((h["total"] for h in reversed(self.history) if "total" in h), None)
        last_val = next((h for h in reversed(self.history) if "val_miou" in h), None)
        meta = {
            "provenance": {
                **self.provenance,
                "kind": "pasam train",
                "step": self.step,
                "epoch": self.step / self.steps_per_epoch,
                "train_images": len(self.train_samples),
                "config": self.cfg.to_json(),
                "ranks": self.world,
                "global_batch": self.global_batch,
                "final_loss": last_loss,
                "validation": last_val,
            }
        }
        if self.provenance.get("untrained_base"):
            meta["untrained"] = True
        if self.cfg.adapter_only and self.provenance.get("base_checkpoint"):
            # the complete model an adapter file loads on (read by the Label Studio backend)
            meta["base_checkpoint"] = self.provenance["base_checkpoint"]
        if self.cfg.crops:
            # zoomed-in training: the model must be used zoomed in (pasam_plugins.segment)
            from ..segment import ZoomSettings

            meta["zoom"] = ZoomSettings().to_metadata()
        # a whole-SAM run saves the whole model; the others only what they trained
        adapter_only = self.cfg.adapter_only and self.cfg.train != "sam"
        path = save_checkpoint(
            self.model, self.out / name, metadata=meta, adapter_only=adapter_only
        )
        if not best:
            _atomic_torch_save(self.state_dict(), self.out / STATE_NAME)
            plot_history(self.history, self.out / PLOT_NAME)
        return path

    def run(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainResult:
        """Train until ``total_steps`` (or ``should_stop()``); returns the final checkpoint.

        A run that ``should_stop`` ended early saves a step checkpoint (and the state to
        resume from), not the final one. Under torchrun the ranks stop together, at the
        first step where ``should_stop()`` is True on any of them.
        """
        cfg = self.cfg
        bar = None
        stopped = False
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step")
        t0 = time.perf_counter()
        checkpoint = None
        while self.step < self.total_steps:
            if should_stop is not None:
                stop = should_stop()
                if self.world > 1:
                    stop = distributed.any_rank(stop)
                if stop:
                    stopped = True
                    break
            rec = self.train_step()
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            val_due = (cfg.val_every and self.step % cfg.val_every == 0) or (
                not cfg.val_every and end_of_epoch
            )
            if self.val and val_due:
                rec.update(self.validate())
            self._log(rec)
            val = rec.get("val_miou")
            if val is not None and not math.isnan(val) and val > self._best_val():
                self.best_val = val
                if self.out is not None:
                    self.save(best=True)
            if on_step is not None:
                on_step(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec.get('total', float('nan')):.3f}", lr=f"{rec['lr']:.1e}")
            if (
                self.out is not None
                and cfg.save_every
                and self.step % cfg.save_every == 0
                and self.step < self.total_steps
            ):
                checkpoint = self.save()
        if bar is not None:
            bar.close()
        if self.out is not None:
            checkpoint = self.save(final=not stopped)
        self.stopped = stopped
        return TrainResult(self.model, self.step, checkpoint, self.history)

    def prepare_all(self, should_stop: Callable[[], bool] | None = None) -> int:
        """Encode every cached whole-frame sample now (instead of at its first step), so
        that unusable samples are known before training; returns how many are usable.
        Zoomed-in runs load their samples when the trainer is made."""
        if self.crop_sampler is not None:
            return len(self.crop_sampler.samples)
        if self.cache is None:
            return len(self.train_samples)
        usable = 0
        for index in range(len(self.train_samples)):
            if should_stop is not None and should_stop():
                break
            flips = (False, True) if self.cfg.flip else (False,)
            for flipped in flips:
                key = (index, flipped)
                if key not in self.cache:
                    self.cache[key] = self._prepare_cached(index, flipped)
            usable += self.cache[(index, False)] is not None
        return usable


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss terms and validation curves against the step, as a PNG (matplotlib, Agg)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    steps = [h["step"] for h in history if "total" in h]
    for key in (
        "total",
        "mask_bce",
        "mask_dice",
        "coarse",
        "refined",
        "uncertainty",
        "iou_mse",
        "pmm",
    ):
        ys = [h.get(key) for h in history if "total" in h]
        if any(y is not None for y in ys):
            ys = [float("nan") if y is None else y for y in ys]
            ax1.plot(steps, ys, label=key, linewidth=1.5 if key == "total" else 0.8)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    val = [h for h in history if h.get("val_miou") is not None]
    if val:
        ax2.plot([h["step"] for h in val], [h["val_miou"] for h in val], "o-", label="mIoU")
        ax2.plot(
            [h["step"] for h in val], [h["val_mbiou"] for h in val], "s-", label="boundary mIoU"
        )
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no validation data", ha="center", va="center")
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation")
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
