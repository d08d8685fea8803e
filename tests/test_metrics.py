"""Mask IoU and boundary IoU on hand-made masks with hand-computed values; the task score,
AUROC, calibration, rank correlation and click counts on hand-made numbers."""

import numpy as np
import pytest

from pasam_plugins.metrics import (
    RocCounts,
    auroc,
    band_uncertainty_sum,
    binarize_ground_truth,
    binarize_prediction,
    boundary_iou,
    erosion_iterations,
    expected_calibration_error,
    mask_box,
    mask_iou,
    mask_to_boundary,
    never_reached,
    number_of_clicks,
    reliability_bins,
    spearman,
    task_score,
    uncertainty_band,
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


def test_task_score_weights_band_pixels_and_counts_empty_masks_as_uncertain():
    # 100 band pixels at mean 0.2 and 300 at mean 0.6 -> pixel-weighted mean 0.5
    assert task_score([0.9, 0.9], [20.0, 180.0], [100, 300], [50, 80]) == pytest.approx(0.5)
    # an empty mask counts as one fully uncertain object next to the average of the others
    assert task_score([0.9, 0.9], [20.0, 0.0], [100, 0], [50, 0]) == pytest.approx(1 - 0.6)
    assert task_score([0.9], [0.0], [0], [0]) == 0.0
    assert task_score([]) == 0.0
    # without uncertainty (plain SAM): the mean predicted IoU
    assert task_score([0.4, 0.8]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="one value per object"):
        task_score([0.4, 0.8], [1.0], [1], [1])


def test_band_uncertainty_sum_is_over_the_uncertainty_band():
    mask = _square((40, 40), 10, 29, 10, 29)
    unc = np.zeros((40, 40), np.float32)
    band = uncertainty_band(mask)
    unc[band] = 0.5
    unc[0, 0] = 1.0  # outside the band: not counted
    total, n = band_uncertainty_sum(mask, unc)
    assert n == band.sum() > 0 and total == pytest.approx(0.5 * n)
    assert band_uncertainty_sum(np.zeros((40, 40), bool), unc) == (0.0, 0)


def test_auroc_counts_pairs_and_ties_half():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ordered -> 0.75
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert auroc([0.9, 0.1], [1, 0]) == 1.0 and auroc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_roc_counts_match_the_exact_auroc_and_add_up():
    rng = np.random.default_rng(0)
    # scores on bin centres: the histogram has no extra ties, so it is exact
    a = (rng.integers(0, 64, 500) + 0.5) / 64
    ya = rng.random(500) < a  # informative scores
    b = (rng.integers(0, 64, 300) + 0.5) / 64
    yb = rng.random(300) < 0.5
    counts = RocCounts(bins=64).add(a, ya)
    assert counts.auroc() == pytest.approx(auroc(a, ya), abs=1e-12)
    assert counts.auroc() > 0.7
    other = RocCounts(bins=64).add(b, yb)
    counts += other
    assert counts.positives == ya.sum() + yb.sum()
    both = np.concatenate([a, b]), np.concatenate([ya, yb])
    assert counts.auroc() == pytest.approx(auroc(*both), abs=1e-12)
    assert np.isnan(RocCounts().auroc())
    with pytest.raises(ValueError, match="different bins"):
        counts += RocCounts(bins=8)


def test_reliability_bins_and_ece():
    pred = [0.05, 0.15, 0.95, 1.0]
    true = [0.05, 0.35, 0.75, 0.85]
    rows = reliability_bins(pred, true, bins=10)
    assert [r[2] for r in rows] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 in the last bin
    assert rows[9][3] == pytest.approx(0.975) and rows[9][4] == pytest.approx(0.8)
    assert np.isnan(rows[2][3])
    # |0.05-0.05| x 1/4 + |0.15-0.35| x 1/4 + |0.975-0.8| x 2/4
    assert expected_calibration_error(pred, true) == pytest.approx(0.05 + 0.0875)
    assert expected_calibration_error(true, true) == 0.0
    assert np.isnan(expected_calibration_error([], []))


def test_spearman_is_a_rank_correlation():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(x, [10, 20, 25, 100, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1, 0): 1 - 6 x 2 / (5 x 24) = 0.9
    assert spearman(x, [1, 2, 4, 3, 5]) == pytest.approx(0.9)
    assert np.isnan(spearman(x, [1, 1, 1, 1, 1]))
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_number_of_clicks_and_never_reached():
    ious = [0.5, 0.86, 0.91, 0.7]
    assert number_of_clicks(ious, 0.85, 20) == 2
    assert number_of_clicks(ious, 0.90, 20) == 3
    assert number_of_clicks(ious, 0.95, 20) == 20  # never: the maximum
    assert number_of_clicks(ious, 0.90, 2) == 2  # only the first 2 clicks count
    assert never_reached(ious, 0.90, 2) and not never_reached(ious, 0.90, 3)
    assert number_of_clicks([0.9], 0.90, 20) == 1  # reaching exactly counts
