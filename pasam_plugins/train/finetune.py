"""Fast task-specific fine-tuning of the PA-SAM adapter on a few annotated images.

The frozen image encoder runs once per image (and once more for its mirror image when
``flip=True``); the embeddings, guide inputs, targets and prompt pools are cached, so each
step costs only the decoder (forward and backward) and the small ``guiding_conv``. On a
2-core CPU with ``vit_tiny`` a step with 4 objects takes about a second or two.

Meant to be called from a background thread (Label Studio's ``/webhook`` START_TRAINING, a
napari button): the caller's model is not modified (the returned model shares the frozen
encoders with it and owns a trained copy of the decoder), ``progress_callback`` reports each
step and ``should_stop()`` ends the run early (the model trained so far is returned). The
caller saves the result (``save=`` here, or :func:`pasam_plugins.checkpoint.save_checkpoint`)
and gives it a new model version.
"""

import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..modeling import PASam
from ..predictor import select_device
from .datasets import Sample, SampleError, samples_from_arrays
from .trainer import (
    PreparedImage,
    _autocast_factory,
    freeze_for_training,
    image_loss,
    pick_objects,
    prepare_image,
    with_adapter,
)

logger = logging.getLogger(__name__)

#: progress_callback(step, total_steps, info): info has "loss" (float) and "seconds"
ProgressCallback = Callable[[int, int, dict[str, Any]], None]


@dataclass
class FinetuneReport:
    """What happened during :func:`finetune` (also stored in ``model.finetune_report``)."""

    steps: int = 0
    images: int = 0
    objects: int = 0
    losses: list[float] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    prepare_seconds: float = 0.0


def training_copy(model: PASam) -> PASam:
    """A PASam sharing ``model``'s frozen encoders, with its own copy of the decoder."""
    new = PASam(
        image_encoder=model.image_encoder,
        prompt_encoder=model.prompt_encoder,
        mask_decoder=copy.deepcopy(model.mask_decoder),
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        guide_mode=model.guide_mode,  # type: ignore[arg-type]
        variant=model.variant,
    )
    return new.to(next(model.parameters()).device).eval()


def _as_samples(samples: Iterable[Any]) -> list[Sample]:
    out = []
    for i, s in enumerate(samples):
        if isinstance(s, Sample):
            out.append(s)
        elif isinstance(s, tuple) and len(s) == 2:
            out.extend(samples_from_arrays(s[0], s[1], name=f"sample{i}"))
        else:
            raise TypeError(
                f"samples[{i}]: expected a Sample or an (image, labels) pair, got {type(s).__name__}"
            )
    return out


def prepare_samples(
    model: PASam,
    samples: Sequence[Sample],
    *,
    flip: bool = False,
    loss_size: int = 256,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    report: FinetuneReport | None = None,
) -> list[PreparedImage]:
    """Encode every sample once (and its mirror image with ``flip``); bad ones are skipped."""
    report = report if report is not None else FinetuneReport()
    device = next(model.parameters()).device
    autocast, _ = _autocast_factory(device, True)
    prepared: list[PreparedImage] = []
    for i, sample in enumerate(samples):
        if should_stop is not None and should_stop():
            report.stopped_early = True
            break
        try:
            image, labels = sample.load()
        except (SampleError, ValueError, OSError) as exc:
            report.skipped.append((sample.name, str(exc)))
            logger.warning("fine-tuning: skipping %s: %s", sample.name, exc)
            continue
        variants = [(image, labels)]
        if flip:
            variants.append((image[:, ::-1], labels[:, ::-1]))
        for v, (img, lab) in enumerate(variants):
            prep = prepare_image(
                model,
                np.ascontiguousarray(img),
                np.ascontiguousarray(lab),
                name=sample.name,
                loss_size=loss_size,
                rng=np.random.default_rng([seed, i, v]),
                autocast=autocast,
            )
            if not prep.objects:
                report.skipped.append((sample.name, "no object (all empty or too small)"))
                break
            prepared.append(prep)
    return prepared


def finetune(
    model: PASam,
    samples: Iterable[Sample | tuple[np.ndarray, np.ndarray]],
    *,
    steps: int = 200,
    lr: float = 1e-3,
    images_per_step: int = 2,
    objects_per_image: int = 4,
    prompt_kinds: Sequence[str] = ("box", "points", "box+points"),
    num_points: int = 10,
    mining: str = "gumbel",
    mining_from_step: int = 0,
    flip: bool = False,
    loss_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress_callback: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    save: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> PASam:
    """Fine-tune the adapter on a few annotated images; returns a new model.

    Arguments:
      model (PASam): the starting point (with or without adapter; a model without one gets a
        fresh adapter in guide mode ``"image"``). Not modified.
      samples: :class:`~pasam_plugins.train.datasets.Sample` objects or ``(image, labels)``
        pairs (labels: HxW ints, 0 background, each other value one object; a ZxHxW[xC]
        stack with ZxHxW labels counts as its labelled slices, e.g. napari layers).
      steps (int): optimizer steps (Adam, ``lr``).
      images_per_step, objects_per_image: each step draws this many cached images and up to
        this many objects of each.
      prompt_kinds: drawn per image and step ("box", "points", "mask" and "+" combinations).
      mining: ``"gumbel"`` (training-time point mining) or ``"off"``; on from
        ``mining_from_step``.
      flip (bool): also train on mirror images (encoder runs twice per image).
      loss_size (int): loss resolution in the padded 1024 frame (256: fast; 1024: the paper's).
      progress_callback: ``callback(step, steps, {"loss": ..., "seconds": ...})`` after
        every step (from the calling thread).
      should_stop: polled before every step; True ends training early.
      save: write the result there (adapter-only file in this project's format).

    Returns:
      PASam: the fine-tuned model (in eval mode), with ``finetune_report`` attached.

    Raises:
      ValueError: no usable sample.
    """
    t0 = time.perf_counter()
    report = FinetuneReport()
    dev = select_device(device)
    base = model.to(dev)
    untrained = bool(getattr(model, "metadata", {}).get("untrained", False))
    work = training_copy(base) if base.has_adapter else with_adapter(base, seed=seed)
    params = freeze_for_training(work)
    items = _as_samples(samples)
    prepared = prepare_samples(
        work,
        items,
        flip=flip,
        loss_size=loss_size,
        seed=seed,
        should_stop=should_stop,
        report=report,
    )
    report.prepare_seconds = time.perf_counter() - t0
    if not prepared and not report.stopped_early:
        why = "; ".join(f"{n}: {w}" for n, w in report.skipped[:5])
        raise ValueError(
            f"no usable training sample among {len(items)}" + (f" ({why})" if why else "")
        )
    report.images = len({p.name for p in prepared})
    report.objects = sum(len(p.objects) for p in prepared) // max(1, 2 if flip else 1)
    optimizer = torch.optim.Adam(params, lr=lr)
    autocast, amp_dtype = _autocast_factory(dev, True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    kinds = tuple(prompt_kinds)
    for step in range(steps if prepared else 0):
        if should_stop is not None and should_stop():
            report.stopped_early = True
            break
        rng = np.random.default_rng([seed, step, 3])
        pick = rng.choice(len(prepared), min(images_per_step, len(prepared)), replace=False)
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for j in pick:
            prep = prepared[int(j)]
            gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))
            terms = image_loss(
                work,
                prep,
                pick_objects(prep, objects_per_image, rng),
                rng,
                prompt_kinds=kinds,
                num_points=num_points,
                mining=mining if step >= mining_from_step else "off",
                generator=gen,
                autocast=autocast,
            )
            losses.append(terms.total)
        loss = torch.stack(losses).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        report.steps = step + 1
        report.losses.append(float(loss.detach()))
        if progress_callback is not None:
            progress_callback(
                step + 1,
                steps,
                {"loss": report.losses[-1], "seconds": time.perf_counter() - t0},
            )
    for p in work.parameters():
        p.requires_grad_(False)
    work.eval()
    report.seconds = time.perf_counter() - t0
    work.finetune_report = report  # type: ignore[attr-defined]
    if save is not None:
        meta: dict[str, Any] = {
            "provenance": {
                "kind": "pasam finetune",
                "base": str(getattr(model, "source", "")),
                "steps": report.steps,
                "images": report.images,
                "objects": report.objects,
                "lr": lr,
                "seed": seed,
                "first_loss": report.losses[0] if report.losses else None,
                "final_loss": report.losses[-1] if report.losses else None,
                "stopped_early": report.stopped_early,
            }
        }
        if untrained:
            meta["untrained"] = True
        src_meta = getattr(model, "metadata", None) or {}
        base_file = (
            src_meta.get("base_checkpoint")
            if src_meta.get("contents") == "adapter"
            else getattr(model, "source", None)
        )
        if base_file:
            meta["base_checkpoint"] = str(Path(base_file).resolve())
        if metadata:
            meta.update(metadata)
        save_checkpoint(work, save, metadata=meta, adapter_only=True)
    return work
