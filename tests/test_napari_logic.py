"""napari plugin logic that needs neither Qt nor a model: propagation rule, prompts from masks,
plane geometry, prompt selection per slice, sample data, manifest and light import."""

import subprocess
import sys

import numpy as np
import pytest

from napari_pasam.planes import PlaneGeometry, box_on_slice, points_on_slice
from napari_pasam.propagation import (
    STOP_EDGE,
    STOP_EMPTY,
    STOP_IOU,
    STOP_LIMIT,
    STOP_UNCERTAINTY,
    PropagationRule,
    PropagationSummary,
    SliceResult,
    prompt_from_mask,
    propagate,
)


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


# ---------------------------------------------------------------------------- prompts


def test_prompt_from_mask_box_and_points_inside():
    mask = np.zeros((64, 80), bool)
    mask[10:30, 20:70] = True
    p = prompt_from_mask(mask, num_points=3)
    np.testing.assert_array_equal(p.box, [20, 10, 69, 29])
    assert p.points.shape == (3, 2) and p.labels.tolist() == [1, 1, 1]
    xs, ys = p.points[:, 0].astype(int), p.points[:, 1].astype(int)
    assert mask[ys, xs].all(), "every prompt point lies inside the mask"
    assert len({tuple(q) for q in p.points.tolist()}) == 3, "points are distinct"
    # the first point is the deepest pixel: the middle row of the rectangle
    assert 18 <= p.points[0, 1] <= 21


def test_prompt_from_mask_small_and_empty():
    mask = np.zeros((10, 10), bool)
    mask[4, 5] = True
    p = prompt_from_mask(mask, num_points=3)
    np.testing.assert_array_equal(p.points, [[5, 4]])
    np.testing.assert_array_equal(p.box, [5, 4, 5, 4])
    with pytest.raises(ValueError, match="empty"):
        prompt_from_mask(np.zeros((5, 5), bool))


def test_object_uncertainty_is_mean_over_object():
    """Propagation's per-slice uncertainty is the core's summary (one rule everywhere):
    the mean inside the mask; None without a map or for an empty mask."""
    from pasam_plugins.segment import summarize

    unc = np.zeros((4, 4), np.float32)
    unc[:2] = 0.8
    mask = np.zeros((4, 4), bool)
    mask[1:3, :] = True  # half at 0.8, half at 0
    assert summarize(mask, unc)[0] == pytest.approx(0.4)
    assert summarize(mask, None) == (None, None)
    assert summarize(np.zeros((4, 4), bool), unc) == (None, None)


# ---------------------------------------------------------------------------- stop rule


def test_rule_checks_each_threshold():
    m = np.ones((3, 3), bool)
    rule = PropagationRule(min_iou=0.7, max_uncertainty=0.3)
    assert rule.check(SliceResult(m, 0.8, 0.2)) is None
    assert rule.check(SliceResult(m, 0.69, 0.2)) == STOP_IOU
    assert rule.check(SliceResult(m, 0.8, 0.31)) == STOP_UNCERTAINTY
    assert rule.check(SliceResult(np.zeros((3, 3), bool), 0.99, 0.0)) == STOP_EMPTY
    assert rule.check(SliceResult(m, float("nan"), 0.2)) == STOP_IOU
    off = PropagationRule(min_iou=None, max_uncertainty=None)
    assert off.check(SliceResult(m, -5.0, 1.0)) is None
    # a model without adapter has no uncertainty: only the IoU rule applies
    assert rule.check(SliceResult(m, 0.8, None)) is None


class FakeStack:
    """A 'model' whose object drifts one pixel per slice; IoU and uncertainty per slice are
    given, and every prompt it receives is recorded."""

    def __init__(self, n, ious, uncs, empty=()):
        self.n, self.ious, self.uncs, self.empty = n, ious, uncs, set(empty)
        self.calls = []

    def mask(self, z):
        return disk((64, 64), 32, 20 + z, 8)

    def __call__(self, z, prompt):
        self.calls.append((z, prompt))
        m = np.zeros((64, 64), bool) if z in self.empty else self.mask(z)
        return SliceResult(m, self.ious[z], self.uncs[z])


def test_propagate_runs_to_the_edges_when_rule_never_triggers():
    n = 8
    fake = FakeStack(n, [0.9] * n, [0.1] * n)
    summary = PropagationSummary()
    steps = list(
        propagate(
            fake,
            start_slice=3,
            start_mask=fake.mask(3),
            num_slices=n,
            rule=PropagationRule(min_iou=0.5, max_uncertainty=0.5),
            summary=summary,
        )
    )
    assert [s.slice_index for s in steps] == [4, 5, 6, 7, 2, 1, 0]
    assert all(s.kept for s in steps)
    assert sorted(summary.kept) == [0, 1, 2, 4, 5, 6, 7]
    assert summary.stops == {1: STOP_EDGE, -1: STOP_EDGE}


def test_propagate_prompts_with_the_neighbour_mask():
    n = 6
    fake = FakeStack(n, [0.9] * n, [0.1] * n)
    list(
        propagate(
            fake,
            start_slice=2,
            start_mask=fake.mask(2),
            num_slices=n,
            rule=PropagationRule(),
            directions=(1,),
        )
    )
    for z, prompt in fake.calls:
        prev = fake.mask(z - 1)
        ys, xs = np.nonzero(prev)
        np.testing.assert_array_equal(prompt.box, [xs.min(), ys.min(), xs.max(), ys.max()])
        px, py = prompt.points[:, 0].astype(int), prompt.points[:, 1].astype(int)
        assert prev[py, px].all()


def test_propagate_stops_at_first_failing_slice_and_does_not_keep_it():
    n = 10
    ious = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.4, 0.9, 0.9, 0.9]
    uncs = [0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    fake = FakeStack(n, ious, uncs)
    summary = PropagationSummary()
    steps = list(
        propagate(
            fake,
            start_slice=4,
            start_mask=fake.mask(4),
            num_slices=n,
            rule=PropagationRule(min_iou=0.5, max_uncertainty=0.5),
            summary=summary,
        )
    )
    assert [(s.slice_index, s.stop) for s in steps] == [
        (5, None),
        (6, STOP_IOU),
        (3, None),
        (2, None),
        (1, STOP_UNCERTAINTY),
    ]
    assert sorted(summary.kept) == [2, 3, 5]
    assert summary.stops == {1: STOP_IOU, -1: STOP_UNCERTAINTY}
    # slice 7 and 0 are never segmented
    assert sorted(z for z, _ in fake.calls) == [1, 2, 3, 5, 6]


def test_propagate_empty_mask_and_slice_limit():
    n = 10
    fake = FakeStack(n, [0.9] * n, [0.1] * n, empty={7})
    summary = PropagationSummary()
    list(
        propagate(
            fake,
            start_slice=5,
            start_mask=fake.mask(5),
            num_slices=n,
            rule=PropagationRule(max_slices=2),
            summary=summary,
        )
    )
    assert sorted(summary.kept) == [3, 4, 6]
    assert summary.stops == {1: STOP_EMPTY, -1: STOP_LIMIT}


def test_propagate_rejects_bad_start():
    fake = FakeStack(3, [0.9] * 3, [0.1] * 3)
    with pytest.raises(ValueError, match="outside"):
        list(
            propagate(
                fake, start_slice=3, start_mask=fake.mask(0), num_slices=3, rule=PropagationRule()
            )
        )
    with pytest.raises(ValueError, match="empty"):
        list(
            propagate(
                fake,
                start_slice=1,
                start_mask=np.zeros((64, 64), bool),
                num_slices=3,
                rule=PropagationRule(),
            )
        )


def test_propagate_can_be_cancelled_between_slices():
    n = 20
    fake = FakeStack(n, [0.9] * n, [0.1] * n)
    gen = propagate(
        fake, start_slice=10, start_mask=fake.mask(10), num_slices=n, rule=PropagationRule()
    )
    next(gen)
    next(gen)
    gen.close()  # what napari's worker.quit() amounts to: no further slice is segmented
    assert len(fake.calls) == 2


# ---------------------------------------------------------------------------- planes


def test_plane_geometry_layouts():
    g = PlaneGeometry((30, 64, 48))
    assert g.spatial_shape == (30, 64, 48) and g.leading_ndim == 1 and g.num_slices == 30
    assert g.clamp_index([12.6]) == (13,) and g.clamp_index([-3.0]) == (0,)
    assert g.clamp_index([99.0]) == (29,)
    rgb = PlaneGeometry((64, 48, 3), rgb=True)
    assert rgb.spatial_shape == (64, 48) and rgb.leading_ndim == 0 and rgb.num_slices == 1
    mc = PlaneGeometry((3, 5, 64, 48), channel_axis=0)
    assert mc.spatial_shape == (5, 64, 48) and mc.num_channels == 3 and mc.plane_shape == (64, 48)
    ts = PlaneGeometry((4, 6, 32, 32))
    assert ts.leading_ndim == 2 and ts.num_slices == 6
    with pytest.raises(ValueError, match="spatial"):
        PlaneGeometry((64,))
    with pytest.raises(ValueError, match="first axis"):
        PlaneGeometry((5, 3, 64, 48), channel_axis=1)
    # channels last cannot be a channel axis (napari shows the last two axes as the image)
    with pytest.raises(ValueError, match="channels-last"):
        PlaneGeometry((64, 48, 5), channel_axis=-1)
    # read without a channel axis, a (Y, X, C) layer would be 64 planes of 48 x 5 pixels
    with pytest.raises(ValueError, match="48 x 5 pixels; the last axis has only 5 entries"):
        PlaneGeometry((64, 48, 5))
    # a 512-entry axis as channels leaves a 512 x 3 "plane": refused, not 512 channels
    with pytest.raises(ValueError, match="512 x 3 pixels"):
        PlaneGeometry((512, 512, 3), channel_axis=0)


def test_plane_extraction():
    data = np.arange(3 * 4 * 9 * 10).reshape(3, 4, 9, 10)  # planes of at least 8 x 8 pixels
    mc = PlaneGeometry(data.shape, channel_axis=0)
    np.testing.assert_array_equal(mc.plane(data, (2,), channel=1), data[1, 2])
    with pytest.raises(ValueError, match="channel 3"):
        mc.plane(data, (2,), channel=3)
    g = PlaneGeometry(data.shape)
    np.testing.assert_array_equal(g.plane(data, (1, 2)), data[1, 2])
    with pytest.raises(ValueError, match="expected 2"):
        g.plane(data, (1,))


def test_points_and_box_on_slice():
    coords = np.array([[3, 10, 20], [3.2, 11, 21], [4, 12, 22]], float)
    positive = np.array([True, False, True])
    xy, lab = points_on_slice(coords, positive, (3,))
    np.testing.assert_array_equal(xy, [[20, 10], [21, 11]])
    np.testing.assert_array_equal(lab, [1, 0])
    xy, lab = points_on_slice(np.zeros((0, 3)), np.zeros(0, bool), (3,))
    assert xy.shape == (0, 2) and lab.shape == (0,)
    xy2, _ = points_on_slice(np.array([[5.0, 7.0]]), np.array([True]), ())
    np.testing.assert_array_equal(xy2, [[7, 5]])

    rect_a = np.array([[3, 10, 20], [3, 10, 40], [3, 30, 40], [3, 30, 20]], float)
    rect_b = np.array([[3, 1, 2], [3, 1, 4], [3, 6, 4], [3, 6, 2]], float)
    rect_other = np.array([[5, 0, 0], [5, 0, 9], [5, 9, 9], [5, 9, 0]], float)
    np.testing.assert_array_equal(
        box_on_slice([rect_a, rect_b, rect_other], ["rectangle"] * 3, (3,)), [2, 1, 4, 6]
    )
    assert box_on_slice([rect_a], ["ellipse"], (3,)) is None
    assert box_on_slice([rect_other], ["rectangle"], (3,)) is None


# ---------------------------------------------------------------------------- package


def test_sample_data_needs_no_download():
    from napari_pasam import _sample_data as sd

    ((img2d, meta2d, kind2d),) = sd.fluorescence_2d()
    assert kind2d == "image" and img2d.dtype == np.uint16 and img2d.ndim == 2
    assert img2d.std() > 50, "the synthetic nuclei have contrast"
    ((stack, _, _),) = sd.stack_3d()
    assert stack.dtype == np.uint16 and stack.ndim == 3 and stack.shape[0] >= 10
    ((ihc, meta, _),) = sd.ihc_slide()
    assert ihc.dtype == np.uint8 and ihc.shape[-1] == 3 and meta["rgb"] is True


def test_nuclei_samples_are_the_shipped_dsb_images():
    """The real samples: byte-identical copies of the shared DSB 2018 training images (CC0,
    attributed in samples/README.md); fluorescence opens grayscale, tissue as RGB."""
    from PIL import Image

    from napari_pasam import _sample_data as sd

    readme = (sd.SAMPLES_DIR / "README.md").read_text()
    assert "CC0" in readme and "Caicedo" in readme and "ISBI" in readme
    shared = sd.SAMPLES_DIR.parents[2] / "shared" / "data" / "dsb2018-nuclei" / "image"
    assert len(sd.NUCLEI) <= 5
    for key, (filename, _) in sd.NUCLEI.items():
        original = shared / filename.removeprefix("dsb2018_")
        assert (sd.SAMPLES_DIR / filename).read_bytes() == original.read_bytes()
        assert int(filename.split("_")[1]) % 5 != 4, "a training-split image"
        assert filename in readme
        ((data, meta, kind),) = getattr(sd, key)()
        rgb = np.asarray(Image.open(original).convert("RGB"))
        assert kind == "image" and data.dtype == np.uint8
        if meta["rgb"]:
            np.testing.assert_array_equal(data, rgb)
        else:
            np.testing.assert_array_equal(data, rgb[..., 0])
            assert data.ndim == 2 and (rgb[..., 0] == rgb[..., 2]).all()
    assert sd.nuclei_tissue()[0][1]["rgb"] and not sd.nuclei_fluorescence()[0][1]["rgb"]


def test_manifest_is_valid_and_package_import_is_light():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("pasam-plugins")
    assert mf.name == "pasam-plugins"
    assert [w.display_name for w in mf.contributions.widgets] == ["PA-SAM Annotator"]
    assert {s.key for s in mf.contributions.sample_data} == {
        "nuclei_fluorescence",
        "nuclei_fluorescence_small",
        "nuclei_tissue",
        "nuclei_fluorescence_wide",
        "fluorescence_2d",
        "stack_3d",
        "ihc",
    }
    code = "import sys, napari_pasam; print('torch' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    # the state, job, axes and plane modules are Qt-free and import no torch (and no pandas)
    mods = "session, jobs, axes, planes, propagation, _finetune"
    code = (
        f"import sys\nfrom napari_pasam import {mods}\n"
        "print(*[m in sys.modules for m in ('torch', 'qtpy', 'napari', 'pandas')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 4


def test_uncertainty_summary_on_the_bounding_box_equals_the_whole_image():
    """The core's per-object summary (band cropped to the object, or to the window the mask
    lies in) is the band over the whole image, for objects inside, at the border and
    covering the image; the backend and task scores add up its band sums."""
    from pasam_plugins.metrics import uncertainty_band
    from pasam_plugins.segment import summarize_uncertainty

    rng = np.random.default_rng(0)
    unc = rng.random((300, 410)).astype(np.float32)
    yy, xx = np.mgrid[:300, :410]
    masks = [
        (yy - 150) ** 2 + (xx - 200) ** 2 < 40**2,  # inside
        (yy - 5) ** 2 + (xx - 3) ** 2 < 30**2,  # at a corner
        (yy > 250) & (xx > 100),  # along two borders
        np.ones((300, 410), bool),  # everything: no boundary inside the image
        rng.random((300, 410)) > 0.7,  # noise
    ]
    one = np.zeros((300, 410), bool)
    one[100, 409] = True
    masks.append(one)
    for m in masks:
        band = uncertainty_band(m)
        for bounds in (None, (0, 300, 0, 410)):
            s = summarize_uncertainty(m, unc, bounds=bounds)
            assert s.band_pixels == int(band.sum())
            # float32 accumulation (segment._masked_sum): summaries are reported to 6 digits
            assert s.band_sum == pytest.approx(float(unc[band].sum(dtype=np.float64)), rel=1e-6)
            assert s.mean == pytest.approx(float(unc[m].mean()), rel=1e-6)
            if band.any():
                assert s.boundary == pytest.approx(float(unc[band].mean()), rel=1e-6)
            else:
                assert s.boundary == s.mean
    empty = summarize_uncertainty(np.zeros((4, 4), bool), unc[:4, :4])
    assert (empty.mean, empty.boundary, empty.band_sum, empty.band_pixels) == (None, None, 0.0, 0)
