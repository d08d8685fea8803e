"""Fine-tuning the loaded model's adapter on the objects accepted in the annotator (no Qt).

The samples are the planes of the annotated image that hold at least one labelled object,
cut out and normalized exactly as for prediction (:meth:`PlaneGeometry.plane` and the
predictor's :func:`~pasam_plugins.imageio.normalize_image` settings), with that plane of the
Labels layer (0 background, every other value one object). Training is
:func:`pasam_plugins.train.finetune.finetune`; the result is saved atomically into
:func:`models_dir` and wrapped in a new predictor (its model signature changes with the
guiding conv, so cached embeddings of the old model are not reused).
"""

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import avoid_triton_llvm_clash
from .planes import PlaneGeometry


def models_dir() -> Path:
    """Where fine-tuned adapters are saved (:func:`pasam_plugins.paths.models_dir`:
    ``$PASAM_MODEL_DIR``, else ``$PASAM_CACHE_DIR/models``), as the Label Studio backend."""
    from pasam_plugins.paths import models_dir as core_models_dir

    return core_models_dir()


def output_path(directory: Path, image_name: str, steps: int) -> Path:
    """A new timestamped file name ``napari-<image>-<UTC time>-<steps>steps.safetensors``
    in ``directory`` (a counter is added if that name exists)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).strip("._-")[:40] or "image"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = f"napari-{stem}-{stamp}-{steps}steps"
    path = directory / f"{base}.safetensors"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{base}-{n}.safetensors"
    return path


def labelled_planes(labels: np.ndarray, leading_ndim: int) -> list[tuple[int, ...]]:
    """Leading indices of the planes of a Labels layer's data that hold an object."""
    labels = np.asarray(labels)
    if leading_ndim == 0:
        return [()] if labels.any() else []
    hit = labels.any(axis=(-2, -1))
    return [tuple(int(i) for i in idx) for idx in np.argwhere(hit)]


def training_samples(
    data,
    geometry: PlaneGeometry,
    labels: dict[tuple[int, ...], np.ndarray],
    *,
    channel: int | None,
    percentiles: tuple[float, float],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image HxWx3 uint8, labels HxW)`` pairs for :func:`finetune`: each labelled plane
    cut out as the annotator does for prediction and normalized as the predictor does."""
    from pasam_plugins.imageio import normalize_image

    out = []
    for leading, lab in labels.items():
        plane = geometry.plane(data, leading, channel)
        out.append((normalize_image(plane, percentiles=percentiles), np.asarray(lab)))
    return out


#: what the napari panel offers to adapt: (``train`` value, label); see
#: :func:`pasam_plugins.train.trainer.parse_parts`
ADAPT_CHOICES: tuple[tuple[str, str], ...] = (
    ("adapter", "PA-SAM adapter"),
    ("plm", "prompt learning module (PLM)"),
    ("plm,pmm", "PLM + point matching loss (PMM)"),
    ("adapter,plm", "PA-SAM adapter + PLM"),
    ("hq", "HQ-SAM token (SAM / HQ-SAM models)"),
)


def adapt_choices(model) -> list[tuple[str, str]]:
    """The :data:`ADAPT_CHOICES` that fit ``model``: the PA-SAM adapter is trained on SAM
    (not on HQ-SAM), HQ-SAM's token on SAM or HQ-SAM (not on a PA-SAM model)."""
    family = getattr(model, "family", "pasam")
    out = []
    for value, label in ADAPT_CHOICES:
        if "adapter" in value and family != "pasam":
            continue
        if value == "hq" and model.has_adapter:
            continue
        out.append((value, label))
    return out


@dataclass
class FinetuneStep:
    """One optimizer step, as reported to the progress bar."""

    step: int
    total: int
    loss: float


@dataclass
class FinetuneResult:
    """A finished fine-tuning run (``predictor`` is None when no step ran)."""

    predictor: Any
    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    path: Path | None = None
    stopped_early: bool = False
    planes: int = 0
    objects: int = 0
    seconds: float = 0.0
    #: what was adapted (``adapter``, ``plm``, ``plm,pmm``, ``adapter,plm`` ...)
    train: str = "adapter"

    def describe(self) -> str:
        text = f"fine-tuned {self.train.replace(',', ' + ')}, {self.steps} steps"
        if self.losses:
            text += f", loss {self.losses[0]:.3f}→{self.losses[-1]:.3f}"
        if self.stopped_early:
            text += f" (stopped early of {self.total_steps})"
        objects = f"{self.objects} object" + ("s" if self.objects != 1 else "")
        planes = f"{self.planes} plane" + ("s" if self.planes != 1 else "")
        return text + f", on {objects} in {planes}"


def finetune_job(
    predictor,
    data,
    geometry: PlaneGeometry,
    labels: dict[tuple[int, ...], np.ndarray],
    *,
    channel: int | None,
    steps: int,
    image_name: str,
    stop: threading.Event,
    train: str = "adapter",
) -> Iterator[FinetuneStep]:
    """Generator for a napari thread worker: yields a :class:`FinetuneStep` per optimizer
    step and returns a :class:`FinetuneResult` (``stop`` set: ends after the current step).
    ``train``: what to adapt (:data:`ADAPT_CHOICES`; the PMM's module is discarded after
    training, the rest is saved).

    Training runs in a helper thread so that steps reach the progress bar as they happen;
    the generator returns only once that thread is done. Errors raise (the widget reports
    them as notifications).
    """
    avoid_triton_llvm_clash()
    from pasam_plugins.checkpoint import save_finetuned
    from pasam_plugins.predictor import PASamPredictor
    from pasam_plugins.train.finetune import finetune

    t0 = time.perf_counter()
    samples = training_samples(
        data, geometry, labels, channel=channel, percentiles=predictor.percentiles
    )
    objects = sum(len(np.setdiff1d(np.unique(lab), [0])) for _, lab in samples)
    model = predictor.model
    directory = models_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the models directory {directory}: {exc}") from None
    path = output_path(directory, image_name, steps)
    extra = {"napari": {"image": image_name, "planes": len(samples), "objects": objects}}

    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def progress(step: int, total: int, info: dict[str, Any]) -> None:
        events.put(FinetuneStep(step, total, float(info["loss"])))

    def run() -> None:
        try:
            outcome["result"] = finetune(
                model,
                samples,
                steps=steps,
                device=predictor.device,
                progress_callback=progress,
                train=train,
                should_stop=stop.is_set,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker below
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=run, name="pasam-finetune", daemon=True)
    thread.start()
    while (item := events.get()) is not None:
        yield item
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    tuned = outcome["result"]
    report = tuned.report
    result = FinetuneResult(
        predictor=None,
        steps=report.steps,
        total_steps=steps,
        losses=list(report.losses),
        stopped_early=bool(report.stopped_early),
        planes=len(samples),
        objects=objects,
        train=train,
    )
    if report.steps == 0:  # stopped before the first step: nothing trained, nothing kept
        result.seconds = time.perf_counter() - t0
        return result
    provenance = {
        "kind": "pasam finetune (napari)",
        "train": train,
        "steps": report.steps,
        "images": report.images,
        "objects": report.objects,
        "first_loss": report.losses[0],
        "final_loss": report.losses[-1],
        "stopped_early": report.stopped_early,
    }
    # an adapter file naming its base when the model came from a complete file, else whole
    result.path = save_finetuned(tuned.model, path, provenance=provenance, metadata=extra)
    result.predictor = PASamPredictor(
        tuned.model,
        device=predictor.device,
        cache=predictor.cache,
        autocast_bf16=predictor.autocast_bf16,
        percentiles=predictor.percentiles,
    )
    result.seconds = time.perf_counter() - t0
    return result
