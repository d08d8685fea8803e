"""Evaluation as in PA-SAM's Table 1: mIoU and boundary mIoU per dataset, SAM vs PA-SAM.

Every object of every sample is prompted with its ground-truth box (optionally plus N
positive points drawn inside the object, seeded), once with the adapter (PA-SAM) and once
without it (SAM: the same weights, ``use_adapter=False``, whose decoder is exactly SAM's),
sharing one image embedding. Predictions are the model's masks at the image's size
thresholded at 0, the ground truth the object's mask (as 0/255 thresholded at 128); see
:mod:`pasam_plugins.metrics`. Per-dataset values are means over objects (= images for
one-object data sets such as HQSeg); the average column is the mean over datasets, as in
the paper.
"""

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .metrics import boundary_iou, mask_box, mask_iou
from .modeling import PASam
from .predictor import PASamPredictor
from .segment import Segmenter, ZoomSettings

SAM_NAME = "SAM"
PASAM_NAME = "PA-SAM"
FILLED_BOX_NAME = "filled box"


@dataclass
class ObjectResult:
    """One object under one model."""

    dataset: str
    image: str
    object_id: int
    model: str
    iou: float
    boundary_iou: float


@dataclass
class EvalReport:
    """All per-object results plus the skipped samples."""

    results: list[ObjectResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.results))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.results))

    def mean(self, model: str, dataset: str | None = None) -> tuple[float, float]:
        """(mIoU, boundary mIoU) of ``model`` on ``dataset``; with ``dataset=None`` the mean
        of the per-dataset values. NaN when there is no result."""
        if dataset is None:
            per = [self.mean(model, d) for d in self.datasets]
            per = [p for p in per if not np.isnan(p[0])]
            if not per:
                return float("nan"), float("nan")
            return float(np.mean([p[0] for p in per])), float(np.mean([p[1] for p in per]))
        rows = [r for r in self.results if r.model == model and r.dataset == dataset]
        if not rows:
            return float("nan"), float("nan")
        return float(np.mean([r.iou for r in rows])), float(np.mean([r.boundary_iou for r in rows]))

    def table(self) -> str:
        """A Markdown table shaped like the paper's Table 1 (values in percent)."""
        datasets = self.datasets
        head = ["Model"]
        for d in [*datasets, "Avg."]:
            head += [f"{d} mIoU", f"{d} mBIoU"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in self.models:
            cells = [model]
            for d in [*datasets, None]:
                miou, mbiou = self.mean(model, d)
                cells += [f"{100 * miou:.1f}", f"{100 * mbiou:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        n = len({(r.dataset, r.image, r.object_id) for r in self.results})
        lines.append(
            f"\n{n} objects; IoU / boundary IoU in percent (boundary band 2% of the diagonal)"
        )
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> Path:
        """Per-object results: dataset, image, object_id, model, iou, boundary_iou."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(ObjectResult.__dataclass_fields__))
            w.writeheader()
            for r in self.results:
                w.writerow(asdict(r))
        return path


def sample_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` (x, y) pixel coordinates drawn uniformly inside a bool mask (with replacement
    when it has fewer pixels), float32 nx2."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("cannot sample points in an empty mask")
    idx = rng.choice(ys.size, size=n, replace=ys.size < n)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32)


def select_objects(
    labels: np.ndarray, max_objects: int | None, rng: np.random.Generator, min_pixels: int = 1
) -> list[int]:
    """Object ids of a label map with at least ``min_pixels`` pixels; at most ``max_objects``
    of them (a seeded random choice, returned sorted)."""
    ids, counts = np.unique(labels, return_counts=True)
    keep = [int(i) for i, c in zip(ids, counts, strict=True) if i != 0 and c >= min_pixels]
    if max_objects is not None and len(keep) > max_objects:
        keep = sorted(int(i) for i in rng.choice(keep, size=max_objects, replace=False))
    return keep


@torch.no_grad()
def evaluate_model(
    model: PASam,
    datasets: Sequence,
    *,
    num_points: int = 0,
    use_box: bool = True,
    compare_sam: bool = True,
    adapter_name: str = PASAM_NAME,
    baseline: PASam | None = None,
    max_objects: int | None = None,
    min_pixels: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk: int = 16,
    progress: bool | Callable[[int, int], None] = False,
    zoom: ZoomSettings | None = None,
) -> EvalReport:
    """Evaluate ``model`` on datasets (:class:`pasam_plugins.train.datasets.Dataset`).

    Arguments:
      num_points: positive points per object drawn inside its ground truth (with the box
        when ``use_box``; alone otherwise).
      compare_sam: also run the decoder without the adapter (row "SAM"). A model without an
        adapter gives only the SAM row.
      baseline: weights for the SAM row (e.g. the original SAM checkpoint). Default: the
        same weights with the adapter off. PA-SAM also trains SAM's ``output_upscaling``,
        ``output_hypernetworks_mlps`` and ``mask_tokens``, so "adapter off" is SAM's decoder
        with those trained parts; pass the original SAM to compare with SAM exactly.
      max_objects: evaluate at most this many objects per image (seeded choice).
      min_pixels: ignore objects smaller than this.
      progress: True for a tqdm bar, or ``callback(done, total)``.
      zoom: zoom settings for a model whose metadata does not carry them yet (a model in
        training); default: the model's own.

    Returns:
      EvalReport: per-object results (``.table()``, ``.write_csv()``).
    """
    if not use_box and num_points <= 0:
        raise ValueError("give a prompt: use_box=True and/or num_points > 0")
    t0 = time.perf_counter()
    segmenter = Segmenter(PASamPredictor(model, device=device), zoom=zoom)
    variants: list[tuple[str, bool, Segmenter]] = []
    if model.has_adapter:
        variants.append((adapter_name, True, segmenter))
        if compare_sam:
            base = (
                segmenter
                if baseline is None
                else Segmenter(PASamPredictor(baseline, device=device), zoom=zoom)
            )
            variants.insert(0, (SAM_NAME, False, base))
    else:
        variants.append((SAM_NAME, False, segmenter))
    samples = [s for ds in datasets for s in ds.samples]
    report = EvalReport()
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), desc="eval", unit="image")
    for k, sample in enumerate(samples):
        try:
            image, labels = sample.load()
        except ValueError as exc:
            report.skipped.append((sample.name, str(exc)))
        else:
            rng = np.random.default_rng([seed, k])
            ids = select_objects(labels, max_objects, rng, min_pixels)
            if ids:
                _eval_image(
                    sample,
                    image,
                    labels,
                    ids,
                    variants,
                    report,
                    num_points=num_points,
                    use_box=use_box,
                    rng=rng,
                    chunk=chunk,
                )
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(k + 1, len(samples))
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _eval_image(
    sample,
    image: np.ndarray,
    labels: np.ndarray,
    ids: list[int],
    variants: list[tuple[str, bool, Segmenter]],
    report: EvalReport,
    *,
    num_points: int,
    use_box: bool,
    rng: np.random.Generator,
    chunk: int,
) -> None:
    for seg in dict.fromkeys(s for _, _, s in variants):
        seg.set_image(image)
    masks = [labels == i for i in ids]
    boxes = np.stack([mask_box(m) for m in masks]) if use_box else None
    points = np.stack([sample_points(m, num_points, rng) for m in masks]) if num_points else None
    point_labels = None if points is None else np.ones(points.shape[:2], np.int64)
    for name, use_adapter, seg in variants:
        results = seg.segment_many(
            boxes, points, point_labels, use_adapter=use_adapter, chunk=chunk
        )
        for obj, gt, res in zip(ids, masks, results, strict=True):
            report.results.append(
                ObjectResult(
                    dataset=sample.dataset or "data",
                    image=sample.name,
                    object_id=int(obj),
                    model=name,
                    iou=mask_iou(res.mask, gt),
                    boundary_iou=boundary_iou(res.mask, gt),
                )
            )


def evaluate_filled_box(
    datasets: Sequence,
    *,
    max_objects: int | None = None,
    min_pixels: int = 1,
    seed: int = 0,
) -> EvalReport:
    """The trivial baseline: every object's ground-truth box, filled, as its mask. The same
    objects as :func:`evaluate_model` with the same ``max_objects``/``seed`` (the choice of
    objects draws from the same seeded generator first)."""
    t0 = time.perf_counter()
    report = EvalReport()
    samples = [s for ds in datasets for s in ds.samples]
    for k, sample in enumerate(samples):
        try:
            _, labels = sample.load()
        except ValueError as exc:
            report.skipped.append((sample.name, str(exc)))
            continue
        rng = np.random.default_rng([seed, k])
        for obj in select_objects(labels, max_objects, rng, min_pixels):
            gt = labels == obj
            x0, y0, x1, y1 = (int(v) for v in mask_box(gt))
            filled = np.zeros_like(gt)
            filled[y0 : y1 + 1, x0 : x1 + 1] = True
            report.results.append(
                ObjectResult(
                    dataset=sample.dataset or "data",
                    image=sample.name,
                    object_id=int(obj),
                    model=FILLED_BOX_NAME,
                    iou=mask_iou(filled, gt),
                    boundary_iou=boundary_iou(filled, gt),
                )
            )
    report.seconds = time.perf_counter() - t0
    return report
