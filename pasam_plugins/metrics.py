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
"""

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
