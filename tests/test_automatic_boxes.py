"""Box proposals for zoomed models (pasam_plugins.automatic, issue 17): the proposal
geometry, the box-agreement filter, the segmenter with a stand-in decoder, and that
``pasam segment-all``, the Label Studio backend and napari's "Segment all" use the zoomed
defaults for a zoomed model."""

from dataclasses import replace

import numpy as np
import pytest
from automatic_support import ComponentModel, disc

from pasam_plugins.automatic import (
    AutomaticSegmenter,
    AutomaticSettings,
    Instance,
    box_iou,
    box_proposals,
    box_scales_for,
    default_settings,
    is_zoomed,
    lattice,
    passes,
    region_boxes,
    region_proposals,
    select_boxes,
)
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import ZoomSettings
from pasam_plugins.testing import make_test_model
from pasam_plugins.zoom import window_around_box


def _zoomed(variant: str = "vit_tiny256"):
    model = make_test_model(seed=0, variant=variant)
    model.origin = model.origin.derived(metadata={"zoom": ZoomSettings().to_metadata()})
    return model


# ---------------------------------------------------------------------------- geometry
def test_scales_are_capped_by_the_image():
    assert box_scales_for(100, 300, (16, 64, 512, 1024)) == [16, 64, 300]
    assert box_scales_for(40, 30, (64,)) == [40]
    assert lattice(30, 64, 32) == [15.0]  # a box longer than the side: one, centred


@pytest.mark.parametrize(
    "h, w, per_window, stride, context",
    [
        (100, 300, 2, 0.5, 2.0),
        (257, 129, 1, 1.0, 2.0),
        (64, 64, 3, 0.5, 2.5),
        (37, 500, 2, 0.5, 2.0),
    ],
)
def test_grid_boxes_cover_the_image_and_lie_inside_their_windows(h, w, per_window, stride, context):
    scales = (16, 32, 64, 128, 256)
    props = box_proposals(h, w, scales, stride=stride, per_window=per_window, context=context)
    capped = box_scales_for(h, w, scales)
    assert sorted({p.scale for p in props}) == capped
    for s in capped:
        mine = [p for p in props if p.scale == s]
        covered = np.zeros((h, w), bool)
        centres = set()
        for p in mine:
            assert 1 <= len(p.boxes) <= per_window**2
            side = context * s + (per_window - 1) * stride * s
            assert p.window.size == pytest.approx(side)
            for x0, y0, x1, y1 in p.boxes:
                assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h  # clipped to the image
                assert x1 - x0 + 1 <= s and y1 - y0 + 1 <= s
                covered[y0 : y1 + 1, x0 : x1 + 1] = True
                centres.add(((x0 + x1) / 2, (y0 + y1) / 2))
                # inside the window with (context - 1) / 2 x s of context around it
                margin = (context - 1) / 2 * s - 1
                assert p.window.x0 <= x0 - margin and x1 + 1 + margin <= p.window.x0 + side
                assert p.window.y0 <= y0 - margin and y1 + 1 + margin <= p.window.y0 + side
        assert covered.all(), f"scale {s} leaves pixels without a box"
        # neighbouring box centres are at most stride x s apart (plus rounding)
        xs = sorted({c[0] for c in centres})
        assert all(b - a <= stride * s + 1 for a, b in zip(xs, xs[1:], strict=False))


def test_region_boxes_find_blobs_and_get_the_prompted_box_window():
    img = np.full((120, 160), 20, np.uint8)
    truth = [(40, 50, 12), (110, 70, 20)]
    for cx, cy, r in truth:
        img[disc(120, 160, cx, cy, r)] = 200
    boxes = region_boxes(img, min_area=30)
    for cx, cy, r in truth:
        t = np.array([[cx - r, cy - r, cx + r, cy + r]])
        assert box_iou(np.repeat(t, len(boxes), 0), boxes).max() > 0.9
    props = region_proposals(boxes, 2.0, 12.0)
    for p, b in zip(props, boxes, strict=True):
        assert p.window == window_around_box(b, context=2.0, min_size=12.0)
        assert p.scale == max(b[2] - b[0], b[3] - b[1]) + 1


# ---------------------------------------------------------------------------- filter
def _inst(box, prompt, iou=0.9, stab=0.95):
    x0, y0, x1, y1 = box
    return Instance(
        crop=np.ones((y1 - y0 + 1, x1 - x0 + 1), bool),
        box=box,
        predicted_iou=iou,
        stability_score=stab,
        point=(0.0, 0.0),
        window=(0, 0, 100, 100),
        prompt_box=prompt,
        box_agreement=float(box_iou(np.array(box), np.array(prompt))[0]),
    )


def test_box_agreement_filter_on_synthetic_masks():
    # a 10x10 mask from a 10x10 prompt agrees (1.0); the same mask from a 30x30 prompt
    # around it does not (100 / 900); a mask half out of its prompt: 50 / 150
    good = _inst((10, 10, 19, 19), (10, 10, 19, 19))
    small = _inst((50, 50, 59, 59), (40, 40, 69, 69))
    shifted = _inst((70, 10, 79, 19), (65, 10, 74, 19))
    assert good.box_agreement == 1.0
    assert small.box_agreement == pytest.approx(100 / 900)
    assert shifted.box_agreement == pytest.approx(50 / 150)
    s = AutomaticSettings.for_zoom(
        pred_iou_thresh=0.5, stability_score_thresh=0.5, min_box_agreement=0.3
    )
    assert [passes(i, s) for i in (good, small, shifted)] == [True, False, True]
    kept = select_boxes([good, small, shifted], s, (100, 100))
    assert {i.box for i in kept} == {good.box, shifted.box}
    off = AutomaticSettings.for_zoom(
        pred_iou_thresh=0.5, stability_score_thresh=0.5, min_box_agreement=0.0
    )
    assert len(select_boxes([good, small, shifted], off, (100, 100))) == 3


# ---------------------------------------------------------------------------- segmenter
def _discs():
    img = np.full((200, 240, 3), 20, np.uint8)
    truth = [(50, 60, 10), (150, 50, 16), (120, 150, 24), (200, 160, 8)]
    for i, (cx, cy, r) in enumerate(truth):
        img[disc(200, 240, cx, cy, r)] = 100 + 30 * i
    return img, truth


@pytest.mark.parametrize("source", ["grid", "regions"])
def test_box_proposals_find_every_disc_once(source):
    img, truth = _discs()
    pred = PASamPredictor(_zoomed(), device="cpu")
    fake = ComponentModel(pred)
    settings = AutomaticSettings.for_zoom(
        box_source=source,
        box_scales=(16, 32, 64),
        pred_iou_thresh=0.5,
        stability_score_thresh=0.5,
        min_box_agreement=0.3,
        max_boundary_uncertainty=None,
    )
    seg = AutomaticSegmenter(pred, settings)
    assert seg.prompt_mode == "boxes"
    res = seg.generate(img)
    assert fake.calls == len(res.windows) > 0  # one decoder call per window
    assert len(res) == len(truth)
    for cx, cy, r in truth:
        t = disc(200, 240, cx, cy, r)
        ious = [(t & i.mask(200, 240)).sum() / (t | i.mask(200, 240)).sum() for i in res]
        assert max(ious) > 0.8
    assert all(i.box_agreement >= 0.3 and i.prompt_box is not None for i in res)
    assert all(i.boundary_uncertainty is not None for i in res)
    # grid boxes too small for their disc give masks that disagree with them: the
    # agreement filter removes those (region boxes fit the discs: nothing to remove)
    loose = AutomaticSegmenter(pred, replace(settings, min_box_agreement=0.0))
    runs = pred.encoder_runs
    res0 = loose.generate(img)
    assert pred.encoder_runs == runs  # every window's embedding from the cache
    worst = min(i.box_agreement for i in loose.box_candidates(img)[0])
    if source == "grid":
        assert res0.masks_before_nms > res.masks_before_nms and worst < 0.3
    else:
        assert res0.masks_before_nms == res.masks_before_nms and worst > 0.8


def test_points_stay_available_for_zoomed_models_and_boxes_for_whole_image_ones():
    pred = PASamPredictor(_zoomed(), device="cpu")
    assert AutomaticSegmenter(pred, AutomaticSettings(prompts="points")).prompt_mode == "points"
    whole = PASamPredictor(make_test_model(seed=0), device="cpu")
    assert AutomaticSegmenter(whole, AutomaticSettings()).prompt_mode == "points"
    assert AutomaticSegmenter(whole, AutomaticSettings(prompts="boxes")).prompt_mode == "boxes"
    with pytest.raises(ValueError, match="prompts"):
        AutomaticSettings(prompts="clicks")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="box_source"):
        AutomaticSettings(box_source="lattice")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- front ends
def test_default_settings_are_per_model():
    zoomed, whole = _zoomed(), make_test_model(seed=0)
    assert is_zoomed(zoomed) and not is_zoomed(whole)
    assert default_settings(zoomed) == AutomaticSettings.for_zoom()
    assert default_settings(whole) == AutomaticSettings()
    assert AutomaticSettings.for_zoom().prompts == "boxes"
    # None means "the model's default"; values override it
    s = default_settings(zoomed, pred_iou_thresh=None, stability_score_thresh=0.5)
    assert s == AutomaticSettings.for_zoom(stability_score_thresh=0.5)


class _Stop(Exception):
    pass


def _record(monkeypatch) -> list:
    """Replace AutomaticSegmenter by a recorder of the settings it is built with."""
    import pasam_plugins.automatic as automatic

    seen = []

    class Recorder:
        def __init__(self, predictor, settings=None, **_):
            seen.append(settings)
            raise _Stop

    monkeypatch.setattr(automatic, "AutomaticSegmenter", Recorder)
    return seen


def test_segment_all_cli_uses_the_zoomed_defaults(tmp_path, monkeypatch):
    import cv2
    from typer.testing import CliRunner

    from pasam_plugins.checkpoint import save_checkpoint
    from pasam_plugins.cli import app

    ckpt = save_checkpoint(
        _zoomed(), tmp_path / "zoomed.safetensors", metadata={"zoom": ZoomSettings().to_metadata()}
    )
    cv2.imwrite(str(tmp_path / "a.png"), _discs()[0])
    seen = _record(monkeypatch)
    args = ["segment-all", str(tmp_path / "a.png"), "-c", str(ckpt), "--device", "cpu"]
    CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "o")])
    assert seen == [AutomaticSettings.for_zoom()]
    CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "o"), "--pred-iou-thresh", "0.3"])
    assert seen[-1] == AutomaticSettings.for_zoom(pred_iou_thresh=0.3)


def test_label_studio_automatic_config_uses_the_zoomed_defaults(monkeypatch):
    from label_studio_backend.automatic import AutomaticConfig

    for name in ("PASAM_AUTO_PRED_IOU", "PASAM_AUTO_STABILITY", "PASAM_AUTO_BOX_AGREEMENT"):
        monkeypatch.delenv(name, raising=False)
    cfg = AutomaticConfig.from_env()
    assert cfg.settings(_zoomed()) == AutomaticSettings.for_zoom()
    assert cfg.settings(make_test_model(seed=0)) == AutomaticSettings()
    monkeypatch.setenv("PASAM_AUTO_BOX_AGREEMENT", "0.6")
    assert AutomaticConfig.from_env().settings(_zoomed()).min_box_agreement == 0.6


def test_napari_segment_all_uses_the_zoomed_defaults(monkeypatch):
    from types import SimpleNamespace

    from napari_pasam.jobs import segment_all_steps

    seen = _record(monkeypatch)
    slot = SimpleNamespace(predictor=SimpleNamespace(model=_zoomed()))
    with pytest.raises(_Stop):
        segment_all_steps(slot, {}, (64, 64))  # type: ignore[arg-type]
    assert seen == [AutomaticSettings.for_zoom()]


def test_napari_panel_shows_the_models_defaults(qtbot):
    pytest.importorskip("pytestqt")
    from napari_pasam._automatic import SegmentAllPanel

    panel = SegmentAllPanel()
    qtbot.addWidget(panel)
    z = AutomaticSettings.for_zoom()
    panel.use_defaults(z)
    got = default_settings(_zoomed(), **panel.settings(True))
    assert got == z
    panel.use_defaults(AutomaticSettings())
    assert default_settings(make_test_model(seed=0), **panel.settings(True)) == AutomaticSettings()
