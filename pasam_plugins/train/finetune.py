"""Fast task-specific fine-tuning on a few annotated images: the PA-SAM adapter, a prompt
learning module (with or without the point matching loss), HQ-SAM's additions, or a
combination (``train=``, default ``$PASAM_TRAIN_PARTS`` or ``"adapter"``).

The same training step as ``pasam train`` (:class:`pasam_plugins.train.trainer.Trainer`), in
memory. Whole-image models: the frozen image encoder runs once per image (and once more for
its mirror image when ``flip=True``); the embeddings, guide inputs, targets and prompt pools
are cached, so each step costs only the decoder (forward and backward) and the small
``guiding_conv``. Zoomed models (this project's small models) train on crops around one
object each, as they are used.

Meant to be called from a background thread (Label Studio's ``/webhook`` START_TRAINING, a
napari button): the caller's model is not modified (the returned model shares the frozen
encoders with it and owns a trained copy of the decoder), ``progress_callback`` reports each
step and ``should_stop()`` ends the run early (the model trained so far is returned). The
caller saves the result with :func:`pasam_plugins.checkpoint.save_finetuned` (which decides
between an adapter file naming its base and a whole model) and gives it a new model version.
"""

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..modeling import PASam
from ..predictor import select_device
from .datasets import Sample, SampleError, samples_from_arrays
from .trainer import (
    PreparedImage,
    _autocast_factory,
    parse_parts,
    prepare_for_training,
    prepare_image,
)

#: what :func:`finetune` adapts when the caller does not say (Label Studio's Start Training
#: and napari's fine-tuning pass nothing): e.g. ``plm`` or ``adapter,plm,pmm``
TRAIN_PARTS_ENV = "PASAM_TRAIN_PARTS"
#: the parts :func:`finetune` can adapt (the whole SAM is not offered)
FINETUNE_PARTS = ("adapter", "hq", "head", "plm", "pmm")

logger = logging.getLogger(__name__)

#: progress_callback(step, total_steps, info): info has "loss" (float) and "seconds"
ProgressCallback = Callable[[int, int, dict[str, Any]], None]


@dataclass
class FinetuneReport:
    """What happened during :func:`finetune`."""

    steps: int = 0
    images: int = 0
    objects: int = 0
    losses: list[float] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    prepare_seconds: float = 0.0


def training_copy(model: PASam) -> PASam:
    """A model of the same class sharing ``model``'s frozen encoders, with its own copy of
    the decoder (any family: PA-SAM, HQ-SAM; with its prompt learning module)."""
    memo = {
        id(model.image_encoder): model.image_encoder,
        id(model.prompt_encoder): model.prompt_encoder,
    }
    new = copy.deepcopy(model, memo)
    return new.to(next(model.parameters()).device).eval()


def finetune_parts(train: str | None = None) -> tuple[str, ...]:
    """The parts a fine-tuning run adapts: ``train``, else ``$PASAM_TRAIN_PARTS``, else
    ``("adapter",)``. Raises ValueError for an unknown or unsupported choice."""
    spec = train or os.environ.get(TRAIN_PARTS_ENV, "").strip() or "adapter"
    parts = parse_parts(spec)
    if "sam" in parts:
        raise ValueError(
            "fine-tuning adapts a frozen model; training the whole SAM is `pasam train`"
        )
    return parts


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


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the trained model (its ``origin`` says what it was
    trained from) and the report. Save it with :func:`pasam_plugins.checkpoint.save_finetuned`."""

    model: PASam
    report: FinetuneReport


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
    train: str | None = None,
) -> FinetuneResult:
    """Fine-tune the adapter (or what ``train`` names) on a few annotated images; returns a
    new model.

    The same training step as ``pasam train --train adapter``
    (:class:`pasam_plugins.train.trainer.Trainer`), run in memory: whole frames with cached
    embeddings for whole-image models, zoomed-in crops (one object each, as the model is
    used) for zoomed models.

    Arguments:
      model (PASam): the starting point (with or without adapter; a model without one gets a
        fresh adapter in guide mode ``"image"``). Not modified.
      samples: :class:`~pasam_plugins.train.datasets.Sample` objects or ``(image, labels)``
        pairs (labels: HxW ints, 0 background, each other value one object; a ZxHxW[xC]
        stack with ZxHxW labels counts as its labelled slices, e.g. napari layers).
      steps (int): optimizer steps (Adam, ``lr``).
      images_per_step, objects_per_image: each step draws this many images (zoomed models:
        crops) and up to this many objects of each whole image.
      prompt_kinds: drawn per image and step ("box", "points", "mask" and "+" combinations;
        whole-image models).
      mining: ``"gumbel"`` (training-time point mining) or ``"off"``; on from
        ``mining_from_step``.
      flip (bool): also train on mirror images (whole-image models: the encoder runs twice
        per image; zoomed models always flip and rotate their crops).
      loss_size (int): loss resolution in the padded input frame (whole-image models).
      progress_callback: ``callback(step, steps, {"loss": ..., "seconds": ...})`` after
        every step (from the calling thread).
      should_stop: polled before every step; True ends training early.
      train: what to adapt (:func:`pasam_plugins.train.trainer.parse_parts`): ``adapter``
        (PA-SAM's adapter and SAM's mask head), ``plm`` (a prompt learning module on the
        frozen model), ``plm,pmm`` (plus the point matching module's auxiliary loss),
        ``adapter,plm`` (both), ``hq`` (HQ-SAM's additions), ``head``. Default
        ``$PASAM_TRAIN_PARTS``, else ``adapter``. Parts the model lacks are added (a new
        adapter in guide mode ``"image"``, a new PLM whose untrained output is the model's).

    Returns:
      FinetuneResult: the model (eval mode) and the :class:`FinetuneReport`.

    Raises:
      ValueError: no usable sample.
    """
    from .trainer import TrainConfig, Trainer

    t0 = time.perf_counter()
    parts = finetune_parts(train)
    report = FinetuneReport()
    dev = select_device(device)
    base = model.to(dev)
    work = prepare_for_training(training_copy(base), ",".join(parts), seed=seed)
    work.origin = base.origin.derived(
        kind="finetuned",
        file=None,
        base_file=base.origin.complete_base,
        has_adapter=work.has_adapter,
        family=work.family,
        plm=work.plm is not None,
    )
    items = _as_samples(samples)
    if not items:
        raise ValueError("no usable training sample among 0")
    zoomed = base.origin.zoom is not None
    cfg = TrainConfig(
        out_dir=None,
        train=",".join(parts),
        crops=zoomed,
        epochs=max(1, steps),
        epoch_steps=1,
        max_steps=steps,
        # zoomed models see one object per crop: as many crops as whole-image objects
        batch_size=images_per_step * (objects_per_image if zoomed else 1),
        lr=lr,
        lr_drop_epoch=10**9,
        mining_start_epoch=mining_from_step if mining == "gumbel" else 10**9,
        prompt_kinds=tuple(prompt_kinds),
        num_points=num_points,
        objects_per_image=objects_per_image,
        flip=flip,
        jitter=None,
        loss_size=loss_size,
        seed=seed,
        save_every=0,
        device=str(dev),
        cache_embeddings=not zoomed,
        corrective_clicks=2 if zoomed else 0,
    )
    try:
        trainer = Trainer(work, items, config=cfg, progress=False)
    except ValueError as exc:  # zoomed: no sample with an object
        raise ValueError(f"no usable training sample among {len(items)} ({exc})") from None
    usable = trainer.prepare_all(should_stop)
    report.skipped = list(trainer.skipped.items())
    report.prepare_seconds = time.perf_counter() - t0
    stopped_before = should_stop is not None and should_stop()
    if usable == 0 and not stopped_before:
        why = "; ".join(f"{n}: {w}" for n, w in report.skipped[:5])
        raise ValueError(
            f"no usable training sample among {len(items)}" + (f" ({why})" if why else "")
        )
    report.images = usable
    report.objects = _count_objects(trainer)

    def on_step(rec: dict[str, Any]) -> None:
        report.steps = int(rec["step"])
        report.losses.append(float(rec.get("total", float("nan"))))
        if progress_callback is not None:
            progress_callback(
                report.steps,
                steps,
                {"loss": report.losses[-1], "seconds": time.perf_counter() - t0},
            )

    if not stopped_before:
        trainer.run(should_stop=should_stop, on_step=on_step)
    report.stopped_early = report.steps < steps
    for p in work.parameters():
        p.requires_grad_(False)
    work.eval()
    report.seconds = time.perf_counter() - t0
    return FinetuneResult(work, report)


def _count_objects(trainer) -> int:
    if trainer.crop_sampler is not None:
        return sum(len(s.objects) for s in trainer.crop_sampler.samples)
    if trainer.cache is None:
        return 0
    return sum(len(p.objects) for (_, flipped), p in trainer.cache.items() if p and not flipped)
