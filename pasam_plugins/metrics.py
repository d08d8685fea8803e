"""Segmentation metrics as the PA-SAM / HQ-SAM evaluation defines them.

- mask IoU: ``|P & G| / |P | G|`` with the prediction thresholded at 0 (logits) and the
  ground truth at 128 (0..255 masks), as ``sam-hq/train/utils/misc.py:mask_iou``.
- boundary IoU (Cheng et al. 2021, as ``misc.boundary_iou``): the boundary of a mask is the
  mask minus its erosion with a 3x3 kernel applied ``d = max(1, round(0.02 x image
  diagonal))`` times, the mask being zero-padded by one pixel first (so an object cut by the
  image border has a boundary there); boundary IoU is the IoU of the two boundaries.

Both functions take boolean masks (threshold first with :func:`binarize_prediction` /
:func:`binarize_ground_truth`). When both masks (or both boundaries) are empty the IoU is
defined as 1.0 (perfect agreement on "nothing"); the reference code divides 0 by 0 there.

What the extras are worth to an annotator (``pasam eval``, :mod:`pasam_plugins.interactive`):
the task score (:func:`task_score`, the rule the Label Studio backend sorts tasks by), AUROC
of the uncertainty map for wrong pixels (:func:`auroc`, :class:`RocCounts`), calibration of
the predicted IoU (:func:`reliability_bins`, :func:`expected_calibration_error`), rank
correlation (:func:`spearman`) and the click counts NoC / NoF (:func:`number_of_clicks`,
:func:`never_reached`).
"""

from collections.abc import Sequence

import cv2
import numpy as np

#: band width of the boundary IoU, relative to the image diagonal
BOUNDARY_DILATION_RATIO = 0.02
#: half-width of the uncertainty band PA-SAM is trained on, relative to the image diagonal
UNCERTAINTY_BAND_RATIO = 0.005


def binarize_prediction(logits: np.ndarray) -> np.ndarray:
    """Prediction logits (any float) -> bool mask ``logits > 0``."""
    return np.asarray(logits) > 0


def binarize_ground_truth(mask: np.ndarray) -> np.ndarray:
    """Ground truth (uint8 0..255, or bool) -> bool mask ``mask > 128`` (bool passes)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask > 128


def erosion_iterations(height: int, width: int, ratio: float) -> int:
    """``max(1, round(ratio x diagonal))``: how often the 3x3 erosion is applied."""
    return max(1, int(round(ratio * float(np.sqrt(height**2 + width**2)))))


def mask_to_boundary(
    mask: np.ndarray, dilation_ratio: float = BOUNDARY_DILATION_RATIO
) -> np.ndarray:
    """The inner boundary band of a bool HxW mask (bool HxW).

    The mask minus its erosion (3x3 kernel, ``erosion_iterations`` times) after zero-padding
    by one pixel, so pixels on the image border belong to the boundary.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {m.shape}")
    h, w = m.shape
    d = erosion_iterations(h, w, dilation_ratio)
    padded = cv2.copyMakeBorder(m.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return m & ~eroded.astype(bool)


def uncertainty_band(mask: np.ndarray, iterations: int | None = None) -> np.ndarray:
    """The band PA-SAM's uncertainty is trained on, for a bool HxW mask (bool HxW).

    Pixels within ``iterations`` (default ``max(1, round(0.005 x diagonal))``, chessboard
    distance) of the mask's boundary, on both sides: dilation minus erosion with a 3x3 kernel
    applied ``iterations`` times. The image border is not a boundary (as in the training
    target, :func:`pasam_plugins.train.losses.uncertainty_target`).
    """
    m = np.asarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {m.shape}")
    d = iterations or erosion_iterations(*m.shape, UNCERTAINTY_BAND_RATIO)
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1))
    return cv2.dilate(m, k) > cv2.erode(m, k, borderType=cv2.BORDER_REPLICATE)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b)) / float(union)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(
            f"prediction and ground truth must be 2D masks of the same shape, got "
            f"{pred.shape} and {gt.shape}"
        )
    return pred, gt


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool HxW masks (1.0 when both are empty)."""
    pred, gt = _check_pair(pred, gt)
    return _iou(pred, gt)


def boundary_iou(
    pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = BOUNDARY_DILATION_RATIO
) -> float:
    """Boundary IoU of two bool HxW masks (band width ``round(0.02 x diagonal)``)."""
    pred, gt = _check_pair(pred, gt)
    return _iou(mask_to_boundary(pred, dilation_ratio), mask_to_boundary(gt, dilation_ratio))


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box of a bool HxW mask as float32 ``[x0, y0, x1, y1]`` (pixel indices of the
    extreme foreground pixels, as ``misc.masks_to_boxes``), or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


# ---------------------------------------------------------------------------------------
# What the uncertainty is worth: the task score, ranking, calibration and click counts.


def band_uncertainty_sum(
    mask: np.ndarray, uncertainty: np.ndarray, iterations: int | None = None
) -> tuple[float, int]:
    """(sum of ``uncertainty`` over the mask's :func:`uncertainty_band`, band pixels);
    ``(0.0, 0)`` for an empty mask."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return 0.0, 0
    band = uncertainty_band(m, iterations)
    return float(np.asarray(uncertainty)[band].sum(dtype=np.float64)), int(band.sum())


def task_score(
    scores: Sequence[float],
    band_sums: Sequence[float] | None = None,
    band_pixels: Sequence[int] | None = None,
    areas: Sequence[int] | None = None,
) -> float:
    """The score of one image (a Label Studio task) from its predicted objects: higher means
    more certain, so sorting by it ascending puts the images that need a person first.

    With PA-SAM's uncertainty (``band_sums`` given, from :func:`band_uncertainty_sum`):
    ``1 - `` the mean uncertainty over the boundary bands of all objects, weighted by band
    pixels; an object with an empty mask (``areas[i] == 0``) counts as one fully uncertain
    object (uncertainty 1, weighted as an average object); 0.0 when every mask is empty.
    Without uncertainty (plain SAM): the mean predicted IoU ``scores``. No object: 0.0.

    This is the one definition: the Label Studio backend and ``pasam eval`` both call it.
    """
    n = len(scores)
    if n == 0:
        return 0.0
    if band_sums is None:
        return float(np.mean(np.asarray(scores, dtype=np.float64)))
    if band_pixels is None or areas is None or not (len(band_sums) == len(band_pixels) == n):
        raise ValueError("band_sums, band_pixels and areas need one value per object")
    total = float(np.sum(np.asarray(band_sums, dtype=np.float64)))
    pixels = int(np.sum(np.asarray(band_pixels, dtype=np.int64)))
    empty = int(np.count_nonzero(np.asarray(areas) == 0))
    if pixels == 0:
        return 0.0
    mean_u = total / pixels
    if empty:
        mean_u = (mean_u * (n - empty) + empty) / n
    return float(1.0 - mean_u)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for predicting bool ``labels``: the
    probability that a random positive scores higher than a random negative, ties counted
    half (Mann-Whitney U / (P x N)). NaN when either class is missing."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # ties get their average rank
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


class RocCounts:
    """AUROC over many pixels without keeping them: histograms of the scores (in [0, 1]) of
    positives and negatives in ``bins`` equal bins; scores in one bin count as ties. With
    the default 4096 bins this differs from :func:`auroc` by less than the share of
    positive/negative pairs closer than 1/4096. Add counts of several images with ``+=``."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> "RocCounts":
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=bool).ravel()
        idx = np.clip((s * self.bins).astype(np.int64), 0, self.bins - 1)
        self.pos += np.bincount(idx[y], minlength=self.bins)
        self.neg += np.bincount(idx[~y], minlength=self.bins)
        return self

    def __iadd__(self, other: "RocCounts") -> "RocCounts":
        if other.bins != self.bins:
            raise ValueError("cannot add RocCounts with different bins")
        self.pos += other.pos
        self.neg += other.neg
        return self

    @property
    def positives(self) -> int:
        return int(self.pos.sum())

    @property
    def negatives(self) -> int:
        return int(self.neg.sum())

    def auroc(self) -> float:
        """NaN when either class is missing."""
        n_pos, n_neg = self.positives, self.negatives
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(self.neg) - self.neg  # negatives in lower bins
        wins = (self.pos * (below + 0.5 * self.neg)).sum(dtype=np.float64)
        return float(wins) / (float(n_pos) * float(n_neg))


def reliability_bins(
    predicted: np.ndarray, true: np.ndarray, bins: int = 10
) -> list[tuple[float, float, int, float, float]]:
    """Reliability diagram data of predicted vs true IoU: for each of ``bins`` equal bins of
    the predicted value in [0, 1] (the last one closed), ``(low, high, count, mean
    predicted, mean true)``; empty bins have NaN means."""
    p = np.clip(np.asarray(predicted, dtype=np.float64).ravel(), 0.0, 1.0)
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError("predicted and true values must have the same length")
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        mp = float(p[sel].mean()) if n else float("nan")
        mt = float(t[sel].mean()) if n else float("nan")
        out.append((b / bins, (b + 1) / bins, n, mp, mt))
    return out


def expected_calibration_error(predicted: np.ndarray, true: np.ndarray, bins: int = 10) -> float:
    """ECE of a predicted IoU: ``sum_b n_b / N x |mean predicted_b - mean true_b|`` over
    :func:`reliability_bins`. NaN without values."""
    rows = reliability_bins(predicted, true, bins)
    total = sum(r[2] for r in rows)
    if total == 0:
        return float("nan")
    return float(sum(r[2] / total * abs(r[3] - r[4]) for r in rows if r[2]))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged); NaN for fewer than 3 pairs or a constant
    side."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError("x and y must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def number_of_clicks(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    """NoC of one object (RITM's ``_get_noc``): the first click count k (1-based) whose IoU
    reaches ``threshold``; ``max_clicks`` when none does."""
    for k, v in enumerate(ious[:max_clicks], start=1):
        if v >= threshold:
            return k
    return max_clicks


def never_reached(ious: Sequence[float], threshold: float, max_clicks: int) -> bool:
    """True when no IoU of the first ``max_clicks`` clicks reaches ``threshold`` (NoF
    counts these objects)."""
    return not any(v >= threshold for v in ious[:max_clicks])
