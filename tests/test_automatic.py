"""Automatic instance segmentation (pasam_plugins.automatic): windows, grid, filters, NMS and
cleanup on synthetic masks, and parity with segment_anything's SamAutomaticMaskGenerator."""

import numpy as np
import pytest
from automatic_support import ComponentModel
from segment_anything.utils.amg import remove_small_regions

from pasam_plugins.automatic import (
    AutomaticResult,
    AutomaticSegmenter,
    AutomaticSettings,
    Instance,
    box_nms,
    crop_uncertainty,
    instance_attributes,
    mask_nms,
    postprocess_small_regions,
    review_flags,
    tile_boxes,
)
from pasam_plugins.metrics import UNCERTAINTY_BAND_RATIO, erosion_iterations
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import ZoomSettings, summarize
from pasam_plugins.testing import make_test_model, sam_reference


def _inst(mask: np.ndarray, iou: float = 0.9, u: float | None = None) -> Instance:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    return Instance(
        crop=mask[y0 : y1 + 1, x0 : x1 + 1].copy(),
        box=(int(x0), int(y0), int(x1), int(y1)),
        predicted_iou=iou,
        stability_score=1.0,
        point=(float(xs.mean()), float(ys.mean())),
        window=(0, 0, mask.shape[1], mask.shape[0]),
        boundary_uncertainty=u,
        mean_uncertainty=u,
    )


def _disc(h, w, cx, cy, r) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ---------------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    "h,w,tile,overlap", [(512, 512, 256, 0.25), (600, 257, 256, 0.3), (100, 90, 256, 0.25)]
)
def test_tiles_cover_the_image_with_the_requested_overlap(h, w, tile, overlap):
    boxes = tile_boxes(h, w, tile, overlap)
    covered = np.zeros((h, w), int)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(tile, w) and y1 - y0 == min(tile, h)  # native size, never cut
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({b[0] for b in boxes})
    for a, b in zip(xs, xs[1:], strict=False):  # neighbours overlap by at least the share asked
        assert (a + tile) - b >= overlap * tile - 1


def test_whole_image_models_use_sam_crop_layers_and_zoomed_models_native_tiles():
    model = make_test_model(seed=0)
    pred = PASamPredictor(model, device="cpu")
    seg = AutomaticSegmenter(pred, AutomaticSettings(crop_n_layers=1))
    boxes, layers = seg.windows(300, 400)
    assert boxes[0] == (0, 0, 400, 300) and layers == [0, 1, 1, 1, 1]
    small = make_test_model(seed=0, variant="vit_tiny256")
    small.origin = small.origin.derived(metadata={"zoom": ZoomSettings().to_metadata()})
    # the point grid on native tiles (prompts="points"; zoomed models default to boxes)
    seg = AutomaticSegmenter(
        PASamPredictor(small, device="cpu"), AutomaticSettings(prompts="points")
    )
    boxes, _ = seg.windows(300, 700)
    assert all(b[2] - b[0] == 256 and b[3] - b[1] == 256 for b in boxes) and len(boxes) == 8
    # grid: points_per_side**2 prompts per window, one progress step per batch + embedding
    seg = AutomaticSegmenter(
        PASamPredictor(small, device="cpu"),
        AutomaticSettings(points_per_side=10, points_per_batch=64, prompts="points"),
    )
    assert seg.plan(300, 700) == 8 * (2 + 1)


# ---------------------------------------------------------------------------- NMS
def test_mask_nms_keeps_the_best_of_duplicates_and_both_of_neighbours():
    h, w = 80, 120
    a = _disc(h, w, 30, 40, 15)
    a2 = _disc(h, w, 31, 40, 15)  # near duplicate of a
    b = _disc(h, w, 60, 40, 15)  # touching neighbour: boxes overlap, masks barely
    inside = _disc(h, w, 30, 40, 5)  # nested small object: box inside a's box
    insts = [_inst(a, 0.8), _inst(a2, 0.9), _inst(b, 0.85), _inst(inside, 0.7)]
    keep = mask_nms(insts, np.array([i.predicted_iou for i in insts]), 0.7)
    assert keep == [1, 2, 3]  # highest score first, a dropped as a2's duplicate
    # where mask NMS and SAM's box NMS differ: two masks with the same box but few common
    # pixels are duplicates for box NMS only
    left = np.zeros((h, w), bool)
    left[10:70, 10:60] = True
    left[10:70, 30:60] = False
    left[10:12, 10:60] = True
    left[68:70, 10:60] = True  # a "C" spanning the box
    right = np.zeros((h, w), bool)
    right[12:68, 35:60] = True
    right[10:70, 59] = True
    right[10:70, 10] = True
    c1, c2 = _inst(left, 0.9), _inst(right, 0.8)
    assert c1.box == c2.box
    assert box_nms([c1, c2], np.array([0.9, 0.8]), 0.7) == [0]  # SAM: same box = duplicate
    assert mask_nms([c1, c2], np.array([0.9, 0.8]), 0.7) == [0, 1]  # masks differ


def test_crop_uncertainty_equals_summarize_on_the_whole_image():
    rng = np.random.default_rng(0)
    h, w = 200, 150
    unc = rng.random((h, w)).astype(np.float32)
    d = erosion_iterations(h, w, UNCERTAINTY_BAND_RATIO)
    for mask in (_disc(h, w, 70, 100, 30), _disc(h, w, 5, 195, 20), np.ones((h, w), bool)):
        inst = _inst(mask)
        got = crop_uncertainty(unc, mask, inst.box, d)
        want = summarize(mask, unc)
        assert got == pytest.approx(want, abs=1e-6)


def test_small_region_cleanup_matches_sam_on_the_full_image():
    h, w = 90, 110
    rng = np.random.default_rng(3)
    masks = []
    m = _disc(h, w, 50, 45, 30)
    m[40:43, 48:51] = False  # a small hole
    m[5:7, 100:102] = True  # a small island
    masks.append(m)
    notch = _disc(h, w, 0, 0, 40)  # touches the image corner: background pockets vs border
    notch[0:3, 10:13] = False
    masks.append(notch)
    noisy = _disc(h, w, 70, 60, 25) ^ (rng.random((h, w)) < 0.02)
    masks.append(noisy)
    insts = [_inst(x, 0.9 - 0.1 * i) for i, x in enumerate(masks)]
    out = postprocess_small_regions(insts, (h, w), 20, 0.99, "box")
    assert len(out) == 3
    for m, inst in zip(masks, sorted(out, key=lambda i: -i.predicted_iou), strict=True):
        ref, _ = remove_small_regions(m, 20, "holes")
        ref, _ = remove_small_regions(ref, 20, "islands")
        np.testing.assert_array_equal(inst.mask(h, w), ref)


def test_label_image_keeps_small_objects_on_top_and_review_order_is_by_uncertainty():
    h, w = 60, 60
    big = _inst(_disc(h, w, 30, 30, 20), 0.9, 0.1)
    small = _inst(_disc(h, w, 30, 30, 5), 0.95, 0.7)
    other = _inst(_disc(h, w, 55, 55, 3), 0.5, 0.3)
    res = AutomaticResult(instances=[small, big, other], image_size=(h, w))
    lab = res.label_image()
    assert lab[30, 30] == 1 and lab[30, 15] == 2 and lab[55, 55] == 3
    assert res.review_order() == [0, 2, 1]
    assert review_flags(res).tolist() == [True, False, False]
    attrs = instance_attributes(res)
    assert [a["review_rank"] for a in attrs] == [1, 3, 2]
    assert res.label_image(min_area=30)[55, 55] == 0  # the 3-px disc (29 px) is dropped


# ---------------------------------------------------------------------------- pipeline
def _scene(h=300, w=400):
    """Discs (value = 100 + 20 k) on a dark background; returns image and the discs."""
    img = np.full((h, w), 20, np.uint8)
    discs = [(60, 60, 25), (200, 80, 18), (330, 220, 30), (120, 230, 22), (250, 150, 16)]
    for k, (cx, cy, r) in enumerate(discs):
        img[_disc(h, w, cx, cy, r)] = 100 + 30 * k
    return img, discs


@pytest.mark.parametrize("zoomed", [False, True])
def test_every_object_found_once_with_its_uncertainty(zoomed):
    img, discs = _scene()
    h, w = img.shape
    variant = "vit_tiny256" if zoomed else "vit_tiny"
    model = make_test_model(seed=0, variant=variant)
    if zoomed:  # native-resolution 256-px tiles: discs cross tile borders
        model.origin = model.origin.derived(metadata={"zoom": ZoomSettings().to_metadata()})
    pred = PASamPredictor(model, device="cpu")
    fake = ComponentModel(pred)
    settings = AutomaticSettings(
        points_per_side=16, pred_iou_thresh=0.88, stability_score_thresh=0.9, prompts="points"
    )
    seg = AutomaticSegmenter(pred, settings)
    steps = []
    res = seg.generate(img, progress=lambda d, t: steps.append((d, t)))
    assert steps[-1][0] == steps[-1][1] == seg.plan(h, w)
    assert len(res.windows) == (4 if zoomed else 1)
    assert res.prompts == 256 * len(res.windows)
    assert fake.calls == 4 * len(res.windows)  # 256 points in batches of 64
    assert len(res) == len(discs)  # background (IoU 0.3) filtered, duplicates removed
    found = sorted(res.instances, key=lambda i: i.box[0])
    for inst, (k, (cx, cy, r)) in zip(
        found, sorted(enumerate(discs), key=lambda t: t[1][0] - t[1][2]), strict=True
    ):
        truth = _disc(h, w, cx, cy, r)
        m = inst.mask(h, w)
        assert (m & truth).sum() / (m | truth).sum() > 0.9
        assert inst.boundary_uncertainty == pytest.approx((100 + 30 * k) / 255, abs=1e-3)
        assert inst.predicted_iou == pytest.approx(0.95)
    # the uncertainty filter drops the two brightest (most "uncertain") objects
    seg.settings = AutomaticSettings(
        points_per_side=16,
        pred_iou_thresh=0.88,
        stability_score_thresh=0.9,
        max_boundary_uncertainty=0.7,
        prompts="points",
    )
    runs = pred.encoder_runs
    res2 = seg.generate(img)
    assert len(res2) == 3 and max(i.boundary_uncertainty for i in res2) < 0.7
    assert pred.encoder_runs == runs and res2.encoder_runs == 0  # embeddings from the cache


def test_uncertainty_filter_needs_the_adapter():
    pred = PASamPredictor(make_test_model(seed=0, adapter=False), device="cpu")
    seg = AutomaticSegmenter(pred, AutomaticSettings(max_boundary_uncertainty=0.5))
    with pytest.raises(ValueError, match="adapter"):
        seg.generate(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="nms"):
        AutomaticSettings(nms="boxes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- parity
def _structured_model():
    """vit_tiny with random weights whose masks follow the image: the mask head's
    transposed convolutions made constant over each 2x2 kernel (no sub-pixel pattern) and
    the hypernetworks' outputs scaled up (sharper logits). Both generators use exactly
    these weights."""
    m = make_test_model(seed=0)
    for conv in (m.mask_decoder.output_upscaling[0], m.mask_decoder.output_upscaling[3]):
        conv.weight.data[:] = conv.weight.data[..., :1, :1]
    for mlp in m.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.data *= 20
    return m


def _disc_image():
    rng = np.random.default_rng(0)
    img = np.full((160, 200, 3), 40, np.uint8)
    for _ in range(8):
        cy, cx, r = rng.integers(20, 140), rng.integers(20, 180), rng.integers(8, 25)
        img[_disc(160, 200, cx, cy, r)] = rng.integers(120, 255, 3)
    return img


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        # predicted IoU and stability filters both cut, box NMS removes duplicates
        dict(
            points_per_side=4,
            pred_iou_thresh=0.02,
            stability_score_thresh=0.02,
            stability_score_offset=0.5,
            box_nms_thresh=0.9,
        ),
        # SAM's crop layers (NMS across crops) and small-region cleanup
        dict(
            points_per_side=4,
            pred_iou_thresh=0.01,
            stability_score_thresh=0.01,
            stability_score_offset=0.5,
            box_nms_thresh=0.9,
            crop_n_layers=1,
            crop_n_points_downscale_factor=2,
            crop_nms_thresh=0.8,
            min_mask_region_area=30,
        ),
    ],
)
def test_same_masks_as_sam_automatic_mask_generator(settings):
    from segment_anything import SamAutomaticMaskGenerator

    model = _structured_model()
    img = _disc_image()
    ref = SamAutomaticMaskGenerator(sam_reference(model), **settings).generate(img)
    seg = AutomaticSegmenter(PASamPredictor(model, device="cpu"), AutomaticSettings.sam(**settings))
    ours = seg.generate(img)
    assert ours.masks_before_nms > len(ours) >= 2  # the filters passed some, NMS removed some
    assert len(ours) == len(ref)
    for a, b in zip(ref, ours.instances, strict=True):  # same order (NMS order)
        np.testing.assert_array_equal(a["segmentation"], b.mask(*img.shape[:2]))
        assert b.predicted_iou == pytest.approx(a["predicted_iou"], abs=1e-6)
        assert b.stability_score == pytest.approx(a["stability_score"], abs=1e-6)
        assert list(b.point) == a["point_coords"][0]
        assert b.area == a["area"]
