"""Mask IoU and boundary IoU on hand-made masks with hand-computed values."""

import numpy as np
import pytest

from pasam_plugins.metrics import (
    binarize_ground_truth,
    binarize_prediction,
    boundary_iou,
    erosion_iterations,
    mask_box,
    mask_iou,
    mask_to_boundary,
)


def _square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def test_thresholds_prediction_at_zero_ground_truth_at_128():
    assert binarize_prediction(np.array([-1.0, 0.0, 1e-3])).tolist() == [False, False, True]
    gt = np.array([0, 128, 129, 255], np.uint8)
    assert binarize_ground_truth(gt).tolist() == [False, False, True, True]


def test_mask_iou_of_overlapping_squares():
    # two 4x4 squares overlapping in a 4x2 strip: 8 / (16 + 16 - 8) = 1/3
    a = _square((10, 10), 0, 3, 0, 3)
    b = _square((10, 10), 0, 3, 2, 5)
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, _square((10, 10), 6, 9, 6, 9)) == 0.0


def test_erosion_iterations_follow_the_diagonal():
    assert erosion_iterations(10, 10, 0.02) == 1  # 0.28 rounds to 0, at least 1
    assert erosion_iterations(100, 100, 0.02) == 3  # 2.83
    assert erosion_iterations(512, 512, 0.02) == 14  # 14.48
    assert erosion_iterations(1024, 1024, 0.005) == 7  # 7.24


def test_boundary_is_a_ring_of_the_band_width():
    # 10x10 image: one erosion; a 6x6 square leaves a 4x4 interior -> 36 - 16 = 20 pixels
    ring = mask_to_boundary(_square((10, 10), 2, 7, 2, 7))
    assert ring.sum() == 20
    assert not ring[3:7, 3:7].any() and ring[2, 2:8].all() and ring[2:8, 7].all()
    # 100x100 image: three erosions; a 40x40 square keeps a 34x34 interior
    assert mask_to_boundary(_square((100, 100), 30, 69, 30, 69)).sum() == 40 * 40 - 34 * 34


def test_image_border_counts_as_boundary():
    full = np.ones((10, 10), bool)
    assert mask_to_boundary(full).sum() == 100 - 64  # outer ring of the image


def test_boundary_iou_of_shifted_squares():
    # GT ring of a 6x6 square and the ring of the same square shifted right by one pixel
    # share the top and bottom rows over columns 3..7: 10 pixels; union 20 + 20 - 10 = 30
    gt = _square((10, 10), 2, 7, 2, 7)
    pred = _square((10, 10), 2, 7, 3, 8)
    assert boundary_iou(pred, gt) == pytest.approx(10 / 30)
    assert mask_iou(pred, gt) == pytest.approx(30 / 42)


def test_boundary_iou_counts_the_rim_of_a_hole():
    # 100x100 image -> band of 3 px. GT: 80x80 square, ring 80^2 - 74^2 = 924 px. The
    # prediction adds a 20x20 hole whose rim (pixels within 3 px of it) is 26^2 - 20^2 = 276
    gt = _square((100, 100), 10, 89, 10, 89)
    pred = gt.copy()
    pred[40:60, 40:60] = False
    assert boundary_iou(pred, gt) == pytest.approx(924 / (924 + 276))
    assert mask_iou(pred, gt) == pytest.approx((80 * 80 - 400) / (80 * 80))


def test_empty_masks():
    empty = np.zeros((8, 8), bool)
    assert mask_iou(empty, empty) == 1.0
    assert boundary_iou(empty, empty) == 1.0
    some = _square((8, 8), 1, 3, 1, 3)
    assert mask_iou(empty, some) == 0.0
    assert boundary_iou(some, empty) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_mask_box():
    assert mask_box(_square((10, 12), 2, 5, 3, 9)).tolist() == [3, 2, 9, 5]
    assert mask_box(np.zeros((3, 3), bool)) is None
