"""Instance-segmentation quality as the DSB 2018 / StarDist evaluations define it.

Predicted and true objects are matched one-to-one (Hungarian, on IoU) among pairs with IoU
at least ``t``; then ``AP(t) = TP / (TP + FP + FN)`` (StarDist's ``accuracy``, the DSB 2018
"average precision" at one threshold). Per data set the mean over images is reported (DSB
2018 averages per image). Label images: 0 = background, every other value one object.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IoU matrix T x P, true ids, predicted ids) of two HxW label images."""
    t = np.asarray(true).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {np.shape(true)} vs {np.shape(pred)}")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    overlap = np.zeros((len(t_ids), len(p_ids)), np.int64)
    np.add.at(overlap, (t_inv, p_inv), 1)
    t_area = overlap.sum(1, keepdims=True)
    p_area = overlap.sum(0, keepdims=True)
    union = t_area + p_area - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    tk, pk = t_ids != 0, p_ids != 0
    return iou[np.ix_(tk, pk)], t_ids[tk], p_ids[pk]


@dataclass
class Matching:
    """Counts at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing was found."""
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0


def match(
    true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5, 0.75)
) -> list[Matching]:
    """One-to-one matching of two label images at each IoU threshold."""
    iou, t_ids, p_ids = iou_matrix(true, pred)
    out = []
    for th in thresholds:
        if iou.size == 0:
            tp = 0
        else:
            ok = iou >= th
            # maximize the number of matches first, then the IoU (StarDist's cost)
            n = max(1, min(iou.shape))
            cost = -(ok / (2 * n)) - iou / (2 * n) * ok
            rows, cols = linear_sum_assignment(cost)
            tp = int(ok[rows, cols].sum())
        out.append(Matching(th, tp, len(p_ids) - tp, len(t_ids) - tp))
    return out
