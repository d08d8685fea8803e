"""Simulated annotators: click placement on hand-made masks (RITM's protocol), suggested and
band clicks, the click loop (previous logits fed back, batching, early finish, fallbacks)
with a hand-made model, and with the real tiny models (batched == one object at a time)."""

import cv2
import numpy as np
import pytest
import torch

from pasam_plugins.interactive import (
    Click,
    _distance_in_errors,
    band_click,
    error_click,
    first_click,
    simulate_clicks,
    suggested_click,
)
from pasam_plugins.metrics import mask_iou, number_of_clicks, uncertainty_band
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import ObjectMask, Segmenter, ZoomSettings
from pasam_plugins.testing import make_test_model


def _square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


# ------------------------------------------------------------------ click placement


def test_first_click_is_the_interior_point_farthest_from_the_boundary():
    # a 9x9 square: its centre is the only pixel 5 px from the outside
    assert first_click(_square((13, 13), 2, 10, 2, 10)) == Click(6, 6, True)
    # a 7x11 rectangle: row 5 is 4 px from both long sides for columns 6..10; the first in
    # row-major order (as RITM's np.where(...)[0]) is taken
    assert first_click(_square((12, 20), 2, 8, 3, 13)) == Click(6, 5, True)


def test_the_image_border_counts_as_boundary():
    # an object in the top-left corner, 5 rows x 10 columns: with the border as boundary its
    # deepest pixels are 3 px from it (row 2, columns 2..7); without, row 0 would be deepest
    assert first_click(_square((10, 20), 0, 4, 0, 9)) == Click(2, 2, True)


def test_next_click_goes_to_the_larger_error_region_with_its_sign():
    gt = _square((20, 30), 2, 10, 2, 10)
    # false negative: columns 2..4 of the object (3 wide: 2 px deep); false positive: a 7x7
    # square elsewhere (4 px deep) -> negative click in the false positive's centre
    pred = gt.copy()
    pred[:, 2:5] = False
    pred |= _square((20, 30), 2, 8, 15, 21)
    assert error_click(pred, gt) == Click(18, 5, False)
    # false negative 9x9 (5 px deep) against a false positive strip 3 wide (2 px deep)
    pred = _square((20, 30), 2, 10, 15, 17)
    assert error_click(pred, gt) == Click(6, 6, True)


def test_equal_depths_give_a_negative_click_and_a_perfect_mask_none():
    gt = _square((20, 30), 2, 6, 2, 6)  # 5x5: 3 px deep
    pred = _square((20, 30), 2, 6, 15, 19)  # the same shape elsewhere
    assert error_click(pred, gt) == Click(17, 4, False)  # RITM: fn > fp is strict
    assert error_click(gt, gt) is None


def test_clicked_pixels_are_not_clicked_again():
    sq = _square((13, 13), 2, 10, 2, 10)
    empty = np.zeros_like(sq)
    # the centre is taken: the next deepest pixel (4 px) first in row-major order
    assert error_click(empty, sq, [Click(6, 6, True)]) == Click(5, 5, True)
    # every error pixel clicked: nothing left
    one = _square((5, 5), 2, 2, 2, 2)
    assert error_click(np.zeros_like(one), one, [Click(2, 2, True)]) is None


def test_distances_in_the_error_box_equal_those_of_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(20):
        errors = cv2.dilate(
            (rng.random((40, 50)) < 0.01).astype(np.uint8), np.ones((5, 7), np.uint8)
        ).astype(bool)
        clicked_y, clicked_x = np.nonzero(errors)
        pick = rng.permutation(len(clicked_y))[:3]
        ys, xs = clicked_y[pick], clicked_x[pick]
        full = cv2.distanceTransform(
            np.pad(errors, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )[1:-1, 1:-1]
        full[ys, xs] = 0
        d, y, x = _distance_in_errors(errors, ys, xs)
        assert d == pytest.approx(float(full.max()))
        first = np.flatnonzero(full.ravel() == full.max())[0]
        assert (y, x) == divmod(int(first), 50)


def _object(mask, points=None, labels=None, scores=None):
    return ObjectMask(
        mask=mask,
        score=0.5,
        low_res_logits=np.zeros((1, 8, 8), np.float32),
        mined_points=None if points is None else np.asarray(points, np.float32),
        mined_labels=None if labels is None else np.asarray(labels),
        mined_scores=None if scores is None else np.asarray(scores, np.float32),
    )


def test_suggested_click_is_the_strongest_mined_point_labelled_by_the_ground_truth():
    gt = _square((20, 30), 2, 10, 2, 10)
    obj = _object(
        gt,
        points=[[6.2, 5.8], [20.4, 15.0], [29.9, 25.0], [3.0, 3.0]],
        labels=[1, 1, 0, 0],  # what the model mined them as; the user looks at the GT
        scores=[0.1, 0.7, 0.4, 0.05],
    )
    # strongest: (20.4, 15) mined positive, but background -> a negative click
    assert suggested_click(obj, gt) == Click(20, 15, False, "suggested")
    # then (29.9, 25) -> pixel (29, 19)... rounded to 30 and clipped into the image
    assert suggested_click(obj, gt, [Click(20, 15, False)]) == Click(29, 19, False, "suggested")
    done = [Click(20, 15, False), Click(29, 19, False)]
    assert suggested_click(obj, gt, done) == Click(6, 6, True, "suggested")
    done += [Click(6, 6, True), Click(3, 3, True)]
    assert suggested_click(obj, gt, done) is None
    assert suggested_click(_object(gt), gt) is None  # no adapter, no suggestions


def test_band_click_is_a_seeded_random_pixel_of_the_contour_band():
    gt = _square((40, 40), 5, 30, 5, 30)
    pred = _square((40, 40), 10, 25, 10, 25)
    band = uncertainty_band(pred)
    clicks = [band_click(pred, gt, np.random.default_rng(s)) for s in range(30)]
    assert all(band[c.y, c.x] and c.positive == gt[c.y, c.x] for c in clicks)
    assert len({(c.x, c.y) for c in clicks}) > 10  # spread over the band
    again = band_click(pred, gt, np.random.default_rng(3))
    assert again == clicks[3] and again.source == "band"
    # clicked pixels are excluded; an empty prediction has no band
    tiny = _square((9, 9), 4, 4, 4, 4)
    all_band = [
        Click(int(x), int(y), True)
        for y, x in zip(*np.nonzero(uncertainty_band(tiny)), strict=True)
    ]
    assert band_click(tiny, tiny, np.random.default_rng(0), all_band) is None
    assert band_click(np.zeros_like(gt), gt, np.random.default_rng(0)) is None


# ------------------------------------------------------------------ the click loop


class RegionModel:
    """A hand-made 'model' on a map of regions: the prediction is the union of the regions
    holding a positive click and no negative one; it suggests fixed points. Records every
    call."""

    has_adapter = True

    def __init__(self, regions, suggestions):
        self.regions = regions
        self.suggestions = suggestions  # [(x, y, label, score)]
        self.calls = []

    def segment_many(self, boxes, points, labels, *, previous=None, use_adapter=True, chunk=16):
        self.calls.append((len(points), points.shape[1], previous))
        out = []
        for i, (pts, labs) in enumerate(zip(points, labels, strict=True)):
            pos = {
                self.regions[int(y), int(x)]
                for (x, y), lab in zip(pts, labs, strict=True)
                if lab == 1
            }
            neg = {
                self.regions[int(y), int(x)]
                for (x, y), lab in zip(pts, labs, strict=True)
                if lab == 0
            }
            keep = [r for r in pos - neg if r != 0]
            mask = np.isin(self.regions, keep)
            sug = self.suggestions
            obj = ObjectMask(
                mask=mask,
                score=0.1 * len(pts),
                low_res_logits=np.full((1, 4, 4), float(len(pts))),
                mined_points=np.array([s[:2] for s in sug], np.float32) if sug else None,
                mined_labels=np.array([s[2] for s in sug]) if sug else None,
                mined_scores=np.array([s[3] for s in sug], np.float32) if sug else None,
            )
            obj.extra["previous"] = None if previous is None else previous[i]
            out.append(obj)
        return out


def _two_part_scene():
    """One object made of a 9x9 square (region 1) and a 5x5 square (region 2)."""
    regions = np.zeros((20, 30), np.int32)
    regions[2:11, 2:11] = 1
    regions[12:17, 20:25] = 2
    return regions, regions > 0


def test_oracle_loop_feeds_back_and_finishes_a_perfect_object():
    regions, gt = _two_part_scene()
    model = RegionModel(regions, [])
    (track,) = [t["oracle"] for t in simulate_clicks(model, [gt], clicks=5)]
    # click 1: centre of the big square -> IoU 81/106; click 2: centre of the small one
    assert track.clicks == [Click(6, 6, True), Click(22, 14, True)]
    assert track.ious == pytest.approx([81 / 106, 1.0, 1.0, 1.0, 1.0])
    assert track.scores == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2])  # kept after finishing
    assert number_of_clicks(track.ious, 0.85, 5) == 2
    # click 2 was given the result of click 1 as `previous` (its logits are the mask prompt)
    assert [c[:2] for c in model.calls] == [(1, 1), (1, 2)]
    assert model.calls[0][2] is None and model.calls[1][2][0].score == pytest.approx(0.1)


def test_suggested_clicks_follow_the_mined_points_and_fall_back_to_the_oracle():
    regions, gt = _two_part_scene()
    # the strongest suggestion is background (the user clicks it as negative: no change),
    # the next one is inside the small square
    model = RegionModel(regions, [(27, 2, 1, 0.9), (21, 13, 1, 0.5)])
    tracks = simulate_clicks(model, [gt], clicks=4, strategies=("oracle", "suggested", "band"))
    sug = tracks[0]["suggested"]
    assert sug.clicks[1:] == [Click(27, 2, False, "suggested"), Click(21, 13, True, "suggested")]
    assert sug.ious == pytest.approx([81 / 106, 81 / 106, 1.0, 1.0])
    assert sug.fallbacks == 0
    assert tracks[0]["oracle"].ious == pytest.approx([81 / 106, 1.0, 1.0, 1.0])
    # the band around the big square never reaches the small one: no gain, labels from GT
    band = tracks[0]["band"]
    assert band.ious == pytest.approx([81 / 106] * 4)
    assert all(c.source == "band" and c.positive == gt[c.y, c.x] for c in band.clicks[1:])
    # all three annotators share click 1 and are batched together afterwards
    # (the oracle is exact after click 2, the suggestions after click 3)
    assert [c[0] for c in model.calls] == [1, 3, 2, 1]

    only_bg = RegionModel(regions, [(27, 2, 1, 0.9)])
    sug = simulate_clicks(only_bg, [gt], clicks=4, strategies=("suggested",))[0]["suggested"]
    assert sug.clicks[2] == Click(22, 14, True, "oracle") and sug.fallbacks == 1
    assert sug.ious == pytest.approx([81 / 106, 81 / 106, 1.0, 1.0])


def test_several_objects_are_segmented_in_one_call_per_round():
    regions, gt = _two_part_scene()
    other = np.zeros_like(gt)
    other[12:17, 2:9] = True
    regions[12:17, 2:9] = 3
    model = RegionModel(regions, [])
    tracks = simulate_clicks(model, [gt, other], clicks=3)
    assert [c[:2] for c in model.calls] == [(2, 1), (1, 2)]  # the second object was exact
    assert tracks[1]["oracle"].ious == [1.0, 1.0, 1.0]
    assert len(tracks[1]["oracle"].clicks) == 1


def test_bad_arguments():
    regions, gt = _two_part_scene()
    model = RegionModel(regions, [])
    with pytest.raises(ValueError, match="unknown strategies"):
        simulate_clicks(model, [gt], strategies=("psychic",))
    with pytest.raises(ValueError, match="needs PA-SAM's adapter"):
        simulate_clicks(model, [gt], strategies=("suggested",), use_adapter=False)
    with pytest.raises(ValueError, match="empty object"):
        simulate_clicks(model, [np.zeros_like(gt)])


# ------------------------------------------------------------------ real models


def _scene():
    rng = np.random.default_rng(1)
    img = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
    gts = [_square((96, 128), 10, 40, 10, 50), _square((96, 128), 50, 85, 70, 120)]
    for k, g in enumerate(gts):
        img[g] = 170 + 40 * k
    return img, gts


def test_mined_scores_rank_the_mined_points_by_the_mining_map(tiny_model):
    img, gts = _scene()
    predictor = PASamPredictor(tiny_model, device="cpu")
    seg = Segmenter(predictor)
    seg.set_image(img)
    obj = seg.segment([[30, 25]], [1])
    out = predictor.predict_torch(
        torch.as_tensor(predictor.transform.apply_coords(np.array([[[30.0, 25.0]]]), (96, 128))),
        torch.ones(1, 1, dtype=torch.int),
        multimask_output=True,
    )
    d = out.decoder
    phi = (d.uncertainty * (torch.sigmoid(d.refined_mask) - torch.sigmoid(d.coarse_mask)))[0]
    phi = np.sort(phi.flatten().numpy())
    # positives: the 4 largest values of phi; negatives: minus the 4 smallest
    assert np.sort(obj.mined_scores[:4]) == pytest.approx(phi[-4:], abs=1e-6)
    assert np.sort(-obj.mined_scores[4:]) == pytest.approx(phi[:4], abs=1e-6)
    sugg = obj.suggestions()
    best = int(np.argmax(obj.mined_scores))
    assert sugg[0] == pytest.approx((*obj.mined_points[best].tolist(), int(obj.mined_labels[best])))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vit_tiny", "vit_tiny256"])
def test_batched_simulation_equals_one_object_at_a_time(variant):
    """The loop's batched calls give what an annotator gets clicking each object alone
    through Segmenter.segment with `previous` (whole-image and zoomed models)."""
    model = make_test_model(seed=0, variant=variant)
    zoom = ZoomSettings() if variant == "vit_tiny256" else None
    img, gts = _scene()
    seg = Segmenter(PASamPredictor(model, device="cpu"), zoom=zoom)
    seg.set_image(img)
    tracks = simulate_clicks(seg, gts, clicks=3, strategies=("oracle", "suggested"))
    for gt, per in zip(gts, tracks, strict=True):
        for strategy, track in per.items():
            assert len(track.ious) == 3
            res = seg.segment([[track.clicks[0].x, track.clicks[0].y]], [1])
            ious = [mask_iou(res.mask, gt)]
            for k in range(1, len(track.clicks)):
                pts = [[c.x, c.y] for c in track.clicks[: k + 1]]
                labs = [int(c.positive) for c in track.clicks[: k + 1]]
                if strategy == "suggested" and track.clicks[k].source == "suggested":
                    assert suggested_click(res, gt, track.clicks[:k]) == track.clicks[k]
                else:
                    assert error_click(res.mask, gt, track.clicks[:k]) == track.clicks[k]
                res = seg.segment(pts, labs, previous=res)
                ious.append(mask_iou(res.mask, gt))
            ious += [ious[-1]] * (3 - len(ious))
            assert track.ious == pytest.approx(ious, abs=1e-6)
