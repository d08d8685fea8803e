"""Evaluation as in PA-SAM's Table 1 (mIoU and boundary mIoU per dataset, SAM vs PA-SAM),
and what PA-SAM's extras are worth to an annotator.

Every object of every sample is prompted with its ground-truth box (optionally plus N
positive points drawn inside the object, seeded), once with the adapter (PA-SAM) and once
without it (SAM: the same weights, ``use_adapter=False``, whose decoder is exactly SAM's),
sharing one image embedding. Predictions are the model's masks at the image's size
thresholded at 0, the ground truth the object's mask (as 0/255 thresholded at 128); see
:mod:`pasam_plugins.metrics`. Per-dataset values are means over objects (= images for
one-object data sets such as HQSeg); the average column is the mean over datasets, as in
the paper.

The same run also measures (for rows with PA-SAM's adapter) what the uncertainty map is
worth, on those predictions:

- **errors found:** AUROC of the uncertainty map for wrong pixels (prediction != ground
  truth), inside the uncertainty band around the predicted contour
  (:func:`pasam_plugins.metrics.uncertainty_band`) and over the whole image; per image, and
  per dataset over all its pixels (:class:`pasam_plugins.metrics.RocCounts`).
- **calibration:** reliability diagram and expected calibration error (10 bins) of the
  predicted IoU against the true IoU, every row.
- **task queue:** Spearman correlation over a dataset's images of the task score
  (:func:`pasam_plugins.segment.task_score_of`, the Label Studio backend's rule) and of
  the mean predicted IoU with the true per-image mean IoU.

With ``clicks=N`` every object is also segmented by simulated annotators
(:func:`pasam_plugins.interactive.simulate_clicks`): the error-region oracle on every row,
and on PA-SAM rows the suggested-click and random-band annotators; NoC@85, NoC@90, NoF@90
and mIoU after k = 1..N clicks per dataset.
"""

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .interactive import STRATEGIES, simulate_clicks
from .metrics import (
    RocCounts,
    boundary_iou,
    expected_calibration_error,
    mask_box,
    mask_iou,
    never_reached,
    number_of_clicks,
    reliability_bins,
    spearman,
    uncertainty_band,
)
from .modeling import PASam
from .predictor import PASamPredictor
from .segment import ObjectMask, Segmenter, ZoomSettings, task_score_of

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
    #: predicted IoU of the mask
    score: float = float("nan")
    #: mean uncertainty over the mask's boundary band (NaN without adapter / empty mask)
    boundary_uncertainty: float = float("nan")


@dataclass
class ClickResult:
    """One object under one simulated annotator: IoU and predicted IoU after each click."""

    dataset: str
    image: str
    object_id: int
    model: str
    strategy: str
    ious: list[float]
    scores: list[float]
    #: clicks placed (fewer than N when the prediction became exact)
    clicks: int
    #: clicks the oracle placed because the annotator had no candidate
    fallbacks: int


@dataclass
class ImageResult:
    """One image under one model (box/point prompts of the main evaluation)."""

    dataset: str
    image: str
    model: str
    objects: int
    mean_iou: float
    mean_predicted_iou: float
    task_score: float
    #: AUROC of the uncertainty for wrong pixels (NaN without adapter or one class)
    auroc_band: float = float("nan")
    auroc_image: float = float("nan")


#: NoC thresholds reported
NOC_THRESHOLDS = (0.85, 0.90)
#: the issue's targets for the shipped model
TARGET_AUROC_BAND = 0.80
TARGET_NOC_RATIO = 1.3


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


@dataclass
class EvalReport:
    """All per-object results plus the skipped samples; click simulations, per-image task
    scores and pooled uncertainty ROC counts when measured."""

    results: list[ObjectResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    clicks: list[ClickResult] = field(default_factory=list)
    images: list[ImageResult] = field(default_factory=list)
    #: (model, dataset, "band" | "image") -> pooled counts of all that dataset's pixels
    roc: dict[tuple[str, str, str], RocCounts] = field(default_factory=dict)
    max_clicks: int = 0
    adapter_models: list[str] = field(default_factory=list)
    #: per evaluated sample: (index among all samples, results, images, clicks, skipped
    #: it added); lets :func:`merge_reports` put the parts of several ranks back in order
    spans: list[tuple[int, int, int, int, int]] = field(default_factory=list, repr=False)

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
        """Per-object results: dataset, image, object_id, model, iou, boundary_iou, score
        (predicted IoU), boundary_uncertainty."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(ObjectResult.__dataclass_fields__))
            w.writeheader()
            for r in self.results:
                w.writerow(asdict(r))
        return path

    # ------------------------------------------------------------------ clicks
    @property
    def click_rows(self) -> list[tuple[str, str]]:
        """(model, strategy) pairs simulated, in order."""
        return list(dict.fromkeys((c.model, c.strategy) for c in self.clicks))

    def click_summary(self, model: str, strategy: str, dataset: str) -> dict[str, Any]:
        """NoC@85, NoC@90 (means over objects), NoF@90 (objects never reaching 90 %),
        mIoU after k = 1..N clicks, objects, clicks placed and oracle fallbacks."""
        rows = [
            c
            for c in self.clicks
            if c.model == model and c.strategy == strategy and c.dataset == dataset
        ]
        n = self.max_clicks
        if not rows:
            return {"objects": 0}
        out: dict[str, Any] = {"objects": len(rows)}
        for thr in NOC_THRESHOLDS:
            out[f"noc{round(100 * thr)}"] = float(
                np.mean([number_of_clicks(c.ious, thr, n) for c in rows])
            )
        out["nof90"] = int(sum(never_reached(c.ious, 0.90, n) for c in rows))
        out["miou"] = [float(np.mean([c.ious[k] for c in rows])) for k in range(n)]
        out["clicks_placed"] = int(sum(c.clicks for c in rows))
        out["fallbacks"] = int(sum(c.fallbacks for c in rows))
        return out

    def click_table(self) -> str:
        """NoC / NoF / mIoU@k per dataset and annotator (Markdown)."""
        n = self.max_clicks
        ks = [k for k in (1, 2, 3, 5, 10, 20) if k <= n]
        if n not in ks:
            ks.append(n)
        head = ["Dataset", "Model", "Annotator", "NoC@85", "NoC@90", "NoF@90 (of)"]
        head += [f"mIoU@{k}" for k in ks] + ["oracle fallbacks"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in self.datasets:
            for model, strategy in self.click_rows:
                s = self.click_summary(model, strategy, d)
                if not s["objects"]:
                    continue
                cells = [d, model, strategy, f"{s['noc85']:.2f}", f"{s['noc90']:.2f}"]
                cells.append(f"{s['nof90']} ({s['objects']})")
                cells += [f"{100 * s['miou'][k - 1]:.1f}" for k in ks]
                placed = max(1, s["clicks_placed"] - s["objects"])  # clicks after the first
                cells.append(
                    "-" if strategy == "oracle" else f"{100 * s['fallbacks'] / placed:.0f}%"
                )
                lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"\nup to {n} clicks per object (RITM protocol: first click deepest inside the "
            "object, then in the largest error region; previous logits fed back); NoC: mean "
            f"clicks to reach the IoU ({n} if never), NoF@90: objects never reaching 90 %; "
            "mIoU in percent; fallbacks: share of clicks 2..N the oracle placed because the "
            "annotator had no candidate"
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ uncertainty
    def uncertainty_summary(self, model: str, dataset: str) -> dict[str, Any]:
        """AUROC of the uncertainty for wrong pixels (band / whole image, pooled over the
        dataset's pixels and mean over images), ECE of the predicted IoU, Spearman of the
        task score and of the mean predicted IoU with the true per-image mean IoU."""
        objs = [r for r in self.results if r.model == model and r.dataset == dataset]
        imgs = [r for r in self.images if r.model == model and r.dataset == dataset]
        out: dict[str, Any] = {"objects": len(objs), "images": len(imgs)}
        band = self.roc.get((model, dataset, "band"))
        whole = self.roc.get((model, dataset, "image"))
        out["auroc_band"] = band.auroc() if band is not None else float("nan")
        out["auroc_image"] = whole.auroc() if whole is not None else float("nan")
        out["auroc_band_image_mean"] = _mean([r.auroc_band for r in imgs])
        out["auroc_image_image_mean"] = _mean([r.auroc_image for r in imgs])
        pred = [r.score for r in objs]
        true = [r.iou for r in objs]
        out["ece"] = expected_calibration_error(pred, true) if objs else float("nan")
        out["reliability"] = reliability_bins(pred, true) if objs else []
        true_img = [r.mean_iou for r in imgs]
        out["spearman_task_score"] = spearman([r.task_score for r in imgs], true_img)
        out["spearman_predicted_iou"] = spearman([r.mean_predicted_iou for r in imgs], true_img)
        return out

    def uncertainty_table(self) -> str:
        """Errors found, calibration and task ranking per dataset and model (Markdown)."""
        head = [
            "Dataset",
            "Model",
            "AUROC band",
            "AUROC image",
            "ECE pred. IoU",
            "Spearman task score",
            "Spearman mean pred. IoU",
            "images",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def f(v: float, pct: bool = False) -> str:
            return "-" if math.isnan(v) else (f"{100 * v:.1f}" if pct else f"{v:.3f}")

        for d in self.datasets:
            for model in self.models:
                s = self.uncertainty_summary(model, d)
                if not s["images"]:
                    continue
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            d,
                            model,
                            f(s["auroc_band"]),
                            f(s["auroc_image"]),
                            f(s["ece"]),
                            f(s["spearman_task_score"]),
                            f(s["spearman_predicted_iou"]),
                            str(s["images"]),
                        ]
                    )
                    + " |"
                )
        lines.append(
            "\nAUROC of the uncertainty map for wrong pixels over all pixels of a dataset, in "
            "the band around the predicted contour (round(0.005 x diagonal) px each side) and "
            "over the whole image; ECE of the predicted IoU (10 bins); Spearman over images "
            "with the true per-image mean IoU (task score: 1 - boundary-band uncertainty, "
            "the Label Studio backend's; without adapter it is the mean predicted IoU)"
        )
        return "\n".join(lines)

    def targets(self, model: str | None = None) -> list[str]:
        """The issue's targets for an adapter row, per dataset: ``met``, ``MISSED`` (with
        the numbers) or ``not measured`` (e.g. a Spearman over fewer than 3 images)."""
        model = model or (self.adapter_models[0] if self.adapter_models else None)
        if model is None:
            return []

        def verdict(ok: bool | None) -> str:
            return "not measured" if ok is None else ("met" if ok else "MISSED")

        out = []
        for d in self.datasets:
            u = self.uncertainty_summary(model, d)
            if u["images"]:
                a = u["auroc_band"]
                ok = None if math.isnan(a) else a >= TARGET_AUROC_BAND
                out.append(
                    f"{d} {model}: uncertainty AUROC in the contour band {a:.3f} "
                    f"(target >= {TARGET_AUROC_BAND:.2f}): {verdict(ok)}"
                )
                st, sp = u["spearman_task_score"], u["spearman_predicted_iou"]
                ok = None if math.isnan(st) or math.isnan(sp) else st >= sp
                out.append(
                    f"{d} {model}: Spearman with the true per-image mean IoU over "
                    f"{u['images']} images: task score {st:.3f}, mean predicted IoU {sp:.3f} "
                    f"(target: task score >= mean predicted IoU): {verdict(ok)}"
                )
            o = self.click_summary(model, "oracle", d)
            g = self.click_summary(model, "suggested", d)
            if o["objects"] and g["objects"]:
                ratio = g["noc85"] / o["noc85"]
                # an oracle that never gets there leaves nothing to compare with
                ok = None if o["noc85"] >= self.max_clicks else ratio <= TARGET_NOC_RATIO
                out.append(
                    f"{d} {model}: NoC@85 following suggestions {g['noc85']:.2f} vs oracle "
                    f"{o['noc85']:.2f} = {ratio:.2f}x (target <= {TARGET_NOC_RATIO}x): "
                    f"{verdict(ok)}" + (" (the oracle never reaches 85 %)" if ok is None else "")
                )
        return out

    def summary(self) -> dict[str, Any]:
        """Every aggregate number (JSON-ready): Table 1 means, click and uncertainty
        summaries per dataset and model, the targets."""
        out: dict[str, Any] = {"max_clicks": self.max_clicks, "seconds": self.seconds}
        out["datasets"] = {}
        for d in self.datasets:
            entry: dict[str, Any] = {}
            for model in self.models:
                miou, mbiou = self.mean(model, d)
                m: dict[str, Any] = {"miou": miou, "mbiou": mbiou}
                m.update(self.uncertainty_summary(model, d))
                m["clicks"] = {
                    strat: self.click_summary(model, strat, d)
                    for mod, strat in self.click_rows
                    if mod == model
                }
                entry[model] = m
            out["datasets"][d] = entry
        out["targets"] = self.targets()
        return out

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        path.write_text(json.dumps(clean(self.summary()), indent=1), encoding="utf-8")
        return path

    def write_click_csv(self, path: str | Path) -> Path:
        """Per object and annotator: iou_1..iou_N and score_1..score_N (predicted IoU)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = self.max_clicks
        fields = ["dataset", "image", "object_id", "model", "strategy", "clicks", "fallbacks"]
        fields += [f"iou_{k}" for k in range(1, n + 1)]
        fields += [f"score_{k}" for k in range(1, n + 1)]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for c in self.clicks:
                w.writerow(
                    [c.dataset, c.image, c.object_id, c.model, c.strategy, c.clicks, c.fallbacks]
                    + [f"{v:.6f}" for v in c.ious]
                    + [f"{v:.6f}" for v in c.scores]
                )
        return path

    def write_image_csv(self, path: str | Path) -> Path:
        """Per image and model: objects, mean IoU, mean predicted IoU, task score, AUROCs."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(ImageResult.__dataclass_fields__))
            w.writeheader()
            for r in self.images:
                w.writerow(asdict(r))
        return path

    def plot_clicks(self, path: str | Path) -> Path | None:
        """mIoU after k clicks, one panel per dataset, one line per model and annotator."""
        if not self.clicks:
            return None
        fig, axes = _figure(len(self.datasets))
        ks = np.arange(1, self.max_clicks + 1)
        for ax, d in zip(axes, self.datasets, strict=False):
            for model, strategy in self.click_rows:
                s = self.click_summary(model, strategy, d)
                if s["objects"]:
                    ax.plot(
                        ks,
                        100 * np.asarray(s["miou"]),
                        marker="o",
                        markersize=3,
                        label=f"{model} {strategy} (NoC@85 {s['noc85']:.2f})",
                    )
            for thr in NOC_THRESHOLDS:
                ax.axhline(100 * thr, color="grey", linestyle=":", linewidth=0.8)
            ax.set_title(d)
            ax.set_xlabel("clicks")
            ax.set_ylabel("mIoU (%)")
            ax.set_ylim(0, 100)
            ax.set_xticks(ks if len(ks) <= 20 else ks[:: max(1, len(ks) // 10)])
            ax.legend(fontsize=7)
        return _save(fig, path)

    def plot_reliability(self, path: str | Path) -> Path | None:
        """Reliability diagram of the predicted IoU per dataset (mean true vs mean
        predicted IoU in 10 bins; marker area ~ objects), ECE in the legend."""
        if not self.results:
            return None
        fig, axes = _figure(len(self.datasets))
        for ax, d in zip(axes, self.datasets, strict=False):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
            for model in self.models:
                s = self.uncertainty_summary(model, d)
                rows = [r for r in s["reliability"] if r[2]]
                if not rows:
                    continue
                total = sum(r[2] for r in rows)
                (line,) = ax.plot(
                    [r[3] for r in rows],
                    [r[4] for r in rows],
                    marker="o",
                    markersize=3,
                    label=f"{model} (ECE {s['ece']:.3f}, {s['objects']} objects)",
                )
                ax.scatter(
                    [r[3] for r in rows],
                    [r[4] for r in rows],
                    s=[400 * r[2] / total for r in rows],
                    alpha=0.3,
                    color=line.get_color(),
                )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(d)
            ax.set_xlabel("predicted IoU")
            ax.set_ylabel("true IoU")
            ax.legend(fontsize=7)
        return _save(fig, path)

    def write_outputs(self, csv_path: str | Path) -> list[Path]:
        """Everything next to the per-object CSV ``X.csv``: ``X-images.csv``,
        ``X-reliability.png``, ``X.json``, and with clicks ``X-clicks.csv`` and
        ``X-clicks.png``."""
        base = Path(csv_path)
        stem = base.with_suffix("")
        out = [self.write_csv(base), self.write_image_csv(f"{stem}-images.csv")]
        out.append(self.write_json(f"{stem}.json"))
        rel = self.plot_reliability(f"{stem}-reliability.png")
        if rel is not None:
            out.append(rel)
        if self.clicks:
            out.append(self.write_click_csv(f"{stem}-clicks.csv"))
            png = self.plot_clicks(f"{stem}-clicks.png")
            if png is not None:
                out.append(png)
        return out


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * max(1, panels), 4.5), dpi=100)
    axes = fig.subplots(1, max(1, panels), squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
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
    adapter_name: str | None = None,
    baseline: PASam | None = None,
    others: Sequence[tuple[str, PASam]] = (),
    max_objects: int | None = None,
    min_pixels: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk: int = 16,
    progress: bool | Callable[[int, int], None] = False,
    zoom: ZoomSettings | None = None,
    clicks: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    uncertainty: bool = True,
    shard: tuple[int, int] | None = None,
) -> EvalReport:
    """Evaluate ``model`` on datasets (:class:`pasam_plugins.train.datasets.Dataset`).

    Arguments:
      num_points: positive points per object drawn inside its ground truth (with the box
        when ``use_box``; alone otherwise).
      compare_sam: also run the decoder without the adapter (row "SAM"). A model without an
        adapter (or other additions: HQ-SAM's token, a prompt learning module) gives only the
        SAM row.
      adapter_name: the name of the row with the additions on (default
        ``model.method_name``: "PA-SAM", "HQ-SAM", "SAM + PLM" ...).
      others: more ``(name, model)`` rows evaluated on the same objects with the same
        prompts in the same run (e.g. HQ-SAM next to PA-SAM; each with its additions on).
      baseline: weights for the SAM row (e.g. the original SAM checkpoint). Default: the
        same weights with the adapter off. PA-SAM also trains SAM's ``output_upscaling``,
        ``output_hypernetworks_mlps`` and ``mask_tokens``, so "adapter off" is SAM's decoder
        with those trained parts; pass the original SAM to compare with SAM exactly.
      max_objects: evaluate at most this many objects per image (seeded choice).
      min_pixels: ignore objects smaller than this.
      progress: True for a tqdm bar, or ``callback(done, total)``.
      zoom: zoom settings for a model whose metadata does not carry them yet (a model in
        training); default: the model's own.
      clicks: simulate annotators with up to this many clicks per object (0: off).
      strategies: the annotators (:data:`pasam_plugins.interactive.STRATEGIES`); the SAM
        row runs the oracle only, PA-SAM rows all of them.
      uncertainty: measure uncertainty AUROC, calibration and the task score ranking.
      shard: ``(rank, ranks)``: evaluate only samples ``rank, rank + ranks, ...`` (their
        seeds are those of the whole run); :func:`merge_reports` joins the ranks' reports
        into the report of the whole run.

    Returns:
      EvalReport: per-object results (``.table()``, ``.write_csv()``), and the click and
      uncertainty measurements (``.click_table()``, ``.uncertainty_table()``,
      ``.write_outputs()``).
    """
    if not use_box and num_points <= 0:
        raise ValueError("give a prompt: use_box=True and/or num_points > 0")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or (clicks and not strategies):
        raise ValueError(f"unknown annotators {unknown}; use some of {', '.join(STRATEGIES)}")
    t0 = time.perf_counter()
    segmenter = Segmenter(PASamPredictor(model, device=device), zoom=zoom)
    variants: list[tuple[str, bool, Segmenter]] = []
    if model.has_additions:
        variants.append((adapter_name or model.method_name, True, segmenter))
        if compare_sam:
            base = (
                segmenter
                if baseline is None
                else Segmenter(PASamPredictor(baseline, device=device), zoom=zoom)
            )
            variants.insert(0, (SAM_NAME, False, base))
    else:
        variants.append((SAM_NAME, False, segmenter))
    for name, other in others:
        if name in {n for n, _, _ in variants}:
            raise ValueError(f"two rows are called {name!r}; name the compared models apart")
        seg = Segmenter(PASamPredictor(other, device=device), zoom=zoom)
        variants.append((name, other.has_additions, seg))
    samples = [s for ds in datasets for s in ds.samples]
    report = EvalReport(max_clicks=clicks)
    report.adapter_models = [name for name, adapter, seg in variants if adapter and seg.has_adapter]
    mine = list(range(len(samples)))
    if shard is not None:
        rank, ranks = shard
        if not 0 <= rank < ranks:
            raise ValueError(f"shard {shard}: need 0 <= rank < ranks")
        mine = mine[rank::ranks]
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="eval", unit="image")
    for done, k in enumerate(mine):
        sample = samples[k]
        before = (len(report.results), len(report.images), len(report.clicks), len(report.skipped))
        try:
            image, labels = sample.load()
        except ValueError as exc:
            report.skipped.append((sample.name, str(exc)))
        else:
            rng = np.random.default_rng([seed, k])
            ids = select_objects(labels, max_objects, rng, min_pixels)
            if ids:

                def tick(done: int, total: int, name: str = "") -> None:
                    if bar is not None:
                        bar.set_postfix_str(f"{name} click {done}/{total}")

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
                    clicks=clicks,
                    strategies=strategies,
                    uncertainty=uncertainty,
                    click_rng=np.random.default_rng([seed, k, 1]),
                    tick=tick,
                )
        report.spans.append(
            (
                k,
                len(report.results) - before[0],
                len(report.images) - before[1],
                len(report.clicks) - before[2],
                len(report.skipped) - before[3],
            )
        )
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(done + 1, len(mine))
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def merge_reports(parts: Sequence[EvalReport]) -> EvalReport:
    """The report of the whole run from the reports of its shards (``evaluate_model(...,
    shard=(r, n))`` for r = 0..n-1): rows in the order one process would have written
    them, pooled ROC counts added; ``seconds`` is the slowest shard's."""
    if not parts:
        raise ValueError("no reports to merge")
    first = parts[0]
    out = EvalReport(max_clicks=first.max_clicks, adapter_models=list(first.adapter_models))
    cursors = [[0, 0, 0, 0] for _ in parts]
    order = sorted((span[0], i, span) for i, p in enumerate(parts) for span in p.spans)
    for _, i, (k, n_res, n_img, n_clk, n_skip) in order:
        p, c = parts[i], cursors[i]
        out.results += p.results[c[0] : c[0] + n_res]
        out.images += p.images[c[1] : c[1] + n_img]
        out.clicks += p.clicks[c[2] : c[2] + n_clk]
        out.skipped += p.skipped[c[3] : c[3] + n_skip]
        for j, n in enumerate((n_res, n_img, n_clk, n_skip)):
            c[j] += n
        out.spans.append((k, n_res, n_img, n_clk, n_skip))
    for p in parts:
        for key, counts in p.roc.items():
            if key not in out.roc:
                out.roc[key] = RocCounts(counts.bins)
            out.roc[key] += counts
    out.seconds = max(p.seconds for p in parts)
    return out


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
    clicks: int = 0,
    strategies: Sequence[str] = (),
    uncertainty: bool = False,
    click_rng: np.random.Generator | None = None,
    tick: Callable[..., None] | None = None,
) -> None:
    for seg in dict.fromkeys(s for _, _, s in variants):
        seg.set_image(image)
    dataset = sample.dataset or "data"
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
                    dataset=dataset,
                    image=sample.name,
                    object_id=int(obj),
                    model=name,
                    iou=mask_iou(res.mask, gt),
                    boundary_iou=boundary_iou(res.mask, gt),
                    score=float(res.score),
                    boundary_uncertainty=_nan(res.boundary_uncertainty),
                )
            )
        if uncertainty:
            _image_uncertainty(report, dataset, sample.name, name, masks, results)
    if clicks:
        for name, use_adapter, seg in variants:
            strats = [s for s in strategies if (use_adapter and seg.has_adapter) or s == "oracle"]
            if not strats:
                continue
            tracks = simulate_clicks(
                seg,
                masks,
                clicks=clicks,
                strategies=strats,
                use_adapter=use_adapter,
                rng=click_rng,
                chunk=chunk,
                progress=None if tick is None else lambda d, t, n=name: tick(d, t, n),
            )
            for obj, per in zip(ids, tracks, strict=True):
                for strat, t in per.items():
                    report.clicks.append(
                        ClickResult(
                            dataset=dataset,
                            image=sample.name,
                            object_id=int(obj),
                            model=name,
                            strategy=strat,
                            ious=t.ious,
                            scores=t.scores,
                            clicks=len(t.clicks),
                            fallbacks=t.fallbacks,
                        )
                    )


def _image_uncertainty(
    report: EvalReport,
    dataset: str,
    image: str,
    model: str,
    gts: list[np.ndarray],
    results: list[ObjectMask],
) -> None:
    """Per-image task score and predicted IoU; uncertainty ROC counts (image and pooled)."""
    band_roc, image_roc = RocCounts(), RocCounts()
    has_u = False
    for gt, res in zip(gts, results, strict=True):
        if res.uncertainty is None:
            continue
        has_u = True
        wrong = res.mask != gt
        image_roc.add(res.uncertainty, wrong)
        band = uncertainty_band(res.mask)
        band_roc.add(res.uncertainty[band], wrong[band])
    entry = ImageResult(
        dataset=dataset,
        image=image,
        model=model,
        objects=len(results),
        mean_iou=float(np.mean([mask_iou(r.mask, g) for g, r in zip(gts, results, strict=True)])),
        mean_predicted_iou=float(np.mean([r.score for r in results])),
        task_score=task_score_of(results),
    )
    if has_u:
        entry.auroc_band = band_roc.auroc()
        entry.auroc_image = image_roc.auroc()
        for kind, counts in (("band", band_roc), ("image", image_roc)):
            key = (model, dataset, kind)
            if key not in report.roc:
                report.roc[key] = RocCounts(counts.bins)
            report.roc[key] += counts
    report.images.append(entry)


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
