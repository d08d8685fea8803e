"""The PA-SAM annotator in a real napari viewer (pytest-qt ``make_napari_viewer``; under Xvfb
via pytest-xvfb). The model is a `make-test-checkpoint` random-weight vit_tiny, so the tests
assert what holds for any weights: layer shapes, ids, features, the stop rule, errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402
from napari_support import (  # noqa: E402
    WAIT_MS,
    click,
    dock,
    errors_since,
    load,
    loaded_widget,
    wait_idle,
)

from napari_pasam.propagation import (  # noqa: E402
    STOP_EMPTY,
    STOP_IOU,
    STOP_LIMIT,
    STOP_UNCERTAINTY,
)
from napari_pasam.session import FEATURE_COLUMNS  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def em_stack(isbi_dir: Path) -> np.ndarray:
    """The 30 EM sections as a 30x512x512 uint8 stack."""
    files = sorted((isbi_dir / "image").glob("*.png"), key=lambda p: int(p.stem))
    return np.stack([np.asarray(PILImage.open(f)) for f in files])


def test_widget_and_samples_come_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    assert widget.model_panel.model_label.full_text() == "No model loaded"
    viewer.open_sample("pasam-plugins", "fluorescence_2d")
    viewer.open_sample("pasam-plugins", "ihc")
    names = [layer.name for layer in viewer.layers]
    assert names == ["synthetic nuclei 2D", "IHC slide"]
    assert viewer.layers["synthetic nuclei 2D"].data.dtype == np.uint16
    assert viewer.layers["IHC slide"].rgb
    # the widget offers the new image layers
    items = [
        widget.image_panel.image_combo.itemText(i)
        for i in range(widget.image_panel.image_combo.count())
    ]
    assert items == names


def test_click_predicts_overlays_and_accept_increments_ids(
    make_napari_viewer, qtbot, tiny_checkpoint, em_section
):
    viewer = make_napari_viewer()
    image = viewer.add_image(em_section, name="em")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    assert "SAM + PA-SAM adapter" in widget.model_panel.model_label.full_text()
    assert "guide mode: reference" in widget.model_panel.model_label.full_text()
    widget.start(image)
    assert widget.layers.labels.data.shape == em_section.shape

    click(qtbot, widget, (200, 300))
    assert widget.current is not None
    # the same prompt through the core's Segmenter gives the same object (one rule set)
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor
    from pasam_plugins.segment import Segmenter

    # (with the panel's encoder settings: fast path, precision as chosen)
    settings = {**widget.predictor.settings(), "cache": None}
    core = Segmenter(PASamPredictor(load_model(tiny_checkpoint), **settings))
    core.set_image(em_section)
    ref = core.segment([[300, 200]], [1])
    np.testing.assert_array_equal(widget.current.mask, ref.mask)
    assert widget.current.iou == pytest.approx(ref.score, abs=1e-6)
    h, w = em_section.shape
    assert widget.current.mask.shape == (h, w)
    assert widget.layers.current.data.shape == (h, w)
    np.testing.assert_array_equal(widget.layers.current.data > 0, widget.current.mask)
    unc = widget.layers.uncertainty.data
    assert unc.shape == (h, w) and unc.dtype == np.float32
    assert 0.0 <= unc.min() and unc.max() <= 1.0 and unc.max() > 0
    assert widget.layers.uncertainty.colormap.name == "magma"
    assert str(widget.layers.uncertainty.blending) == "additive"
    sugg = widget.layers.suggestions
    assert sugg.data.shape == (8, 2) and sugg.shown.all()
    np.testing.assert_array_equal(widget.suggestions()[0], sugg.data)
    assert ((sugg.data >= 0) & (sugg.data < [h, w])).all()
    assert sugg.features["positive"].tolist() == [True] * 4 + [False] * 4
    colors = {tuple(c) for c in sugg.face_color}
    assert len(colors) == 2, "positive and negative suggestions have distinct colours"

    # a negative click re-predicts; the prompt is shown in the negative colour
    click(qtbot, widget, (50, 60), positive=False)
    assert widget.layers.points.features["positive"].tolist() == [True, False]
    # a refinement click: the object's last result is fed back, as the core expects
    ref2 = core.segment([[300, 200], [60, 50]], [1, 0], previous=ref)
    np.testing.assert_array_equal(widget.current.mask, ref2.mask)
    pos_color, neg_color = widget.layers.points.face_color
    assert not np.allclose(pos_color, neg_color)
    assert widget.prompts().labels.tolist() == [1, 0]

    # overlays can be hidden and their opacity follows the slider
    widget.overlay_panel.opacity_slider.setValue(25)
    assert widget.layers.uncertainty.opacity == pytest.approx(0.25)
    widget.overlay_panel.show_uncertainty_check.setChecked(False)
    widget.overlay_panel.show_suggestions_check.setChecked(False)
    assert not widget.layers.uncertainty.visible and not widget.layers.suggestions.visible

    mask1 = widget.current.mask.copy()
    unc1 = widget.layers.uncertainty.data.copy()
    assert mask1.any(), "random weights still give a non-empty mask for this click"
    assert widget.object_panel.accept_button.text().startswith("Accept")
    widget.object_panel.accept_button.click()
    assert len(widget.layers.points.data) == 0, "accept clears the prompts"
    assert widget.current is None and not widget.layers.current.data.any()
    assert len(widget.suggestions()[0]) == 0 and not widget.layers.uncertainty.data.any()
    labels = widget.layers.labels
    np.testing.assert_array_equal(labels.data == 1, mask1)
    feats = labels.features
    assert list(feats.columns) == list(FEATURE_COLUMNS)
    assert feats["index"].tolist() == [1]
    assert feats.loc[0, "slice_start"] == 0 and feats.loc[0, "slice_stop"] == 0
    assert 0.0 <= feats.loc[0, "mean_uncertainty"] <= 1.0
    assert feats.loc[0, "mean_uncertainty"] == pytest.approx(unc1[mask1].mean(), rel=1e-4)

    # second object: a box; accept by key binding path
    widget.layers.boxes.add_rectangles(np.array([[300, 300], [420, 460]]))
    wait_idle(qtbot, widget)
    assert widget.prompts().box.tolist() == [300, 300, 460, 420]
    mask2 = widget.current.mask.copy()
    widget._accept_key(viewer)
    assert labels.features["index"].tolist() == [1, 2]
    assert len(widget.layers.boxes.data) == 0
    # the default overlap rule: a new object paints only background, object 1 stays
    np.testing.assert_array_equal(labels.data == 2, mask2 & ~mask1)
    np.testing.assert_array_equal(labels.data == 1, mask1)
    # accepting with no prompt is refused with a message, not an exception
    n = len(notification_manager.records)
    assert widget.accept() is None
    assert any("nothing to accept" in str(r.message) for r in notification_manager.records[n:])


def test_uint16_and_multichannel_inputs(make_napari_viewer, qtbot, tiny_checkpoint, em_section):
    viewer = make_napari_viewer()
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    crop = em_section[:400, :300]

    # 16-bit, non-square: percentile-normalized by the core, layers at the image's shape
    img16 = crop.astype(np.uint16) * 200 + 1000
    layer16 = viewer.add_image(img16, name="em16")
    widget.start(layer16)
    click(qtbot, widget, (150, 120))
    assert widget.current.mask.shape == img16.shape
    assert widget.layers.uncertainty.data.shape == img16.shape
    assert widget.layers.labels.data.shape == img16.shape
    assert widget.accept() == 1

    # multichannel (C, Y, X), channel axis first: channel 1 segments like the same data alone
    noise = np.random.default_rng(0).integers(0, 60000, crop.shape, dtype=np.uint16)
    mc = np.stack([noise, img16])
    layer_mc = viewer.add_image(mc, name="em multichannel")
    widget.start(layer_mc, channel_axis=0)
    widget.image_panel.channel_spin.setValue(1)  # moves napari's channel slider
    assert viewer.dims.current_step[0] == 1 and widget.current_channel() == 1
    assert widget.layers.labels.data.shape == img16.shape
    click(qtbot, widget, (150, 120))
    mc_mask = widget.current.mask.copy()
    mc_unc = widget.layers.uncertainty.data.copy()
    single_mask = viewer.layers["em16 PA-SAM labels"].data == 1
    np.testing.assert_array_equal(mc_mask, single_mask)
    # switching to the noise channel re-embeds and predicts on different content
    widget.image_panel.channel_spin.setValue(0)
    wait_idle(qtbot, widget)
    assert widget.current is not None
    assert not np.array_equal(widget.layers.uncertainty.data, mc_unc)
    widget.image_panel.channel_spin.setValue(1)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(widget.current.mask, mc_mask)

    # float RGB-like data (3 channels, rgb=True) works too
    rgb = np.stack([crop, crop // 2, 255 - crop], axis=-1).astype(np.float32) / 255
    layer_rgb = viewer.add_image(rgb, name="em rgb", rgb=True)
    widget.start(layer_rgb)
    click(qtbot, widget, (150, 120))
    assert widget.current.mask.shape == crop.shape
    assert widget.layers.labels.data.shape == crop.shape


def test_large_image_sam_only_model_and_time_series(
    make_napari_viewer, qtbot, tmp_path, em_section
):
    from pasam_plugins.testing import make_test_checkpoint

    viewer = make_napari_viewer()
    sam_only = make_test_checkpoint(tmp_path / "sam_only.safetensors", seed=1, adapter=False)
    widget = loaded_widget(viewer, qtbot, sam_only)
    assert "SAM only" in widget.model_panel.model_label.full_text()

    # a large 16-bit image (2048 x 3072): overlays and labels at full resolution
    big = np.tile(em_section, (4, 6)).astype(np.uint16) * 100
    layer = viewer.add_image(big, name="big")
    widget.start(layer)
    click(qtbot, widget, (1500, 2500))
    assert widget.current.mask.shape == big.shape
    # no adapter: no uncertainty, no mined points, and the features say so
    assert widget.current.uncertainty is None
    assert not widget.layers.uncertainty.data.any() and len(widget.suggestions()[0]) == 0
    assert widget.current.mask.any(), "this seed and click give a non-empty mask"
    label_id = widget.accept()
    row = widget.layers.labels.features.set_index("index").loc[label_id]
    assert np.isnan(row["mean_uncertainty"])

    # the same image as a multiscale pyramid: segmented at full resolution (level 0)
    pyramid = viewer.add_image([big, big[::2, ::2], big[::4, ::4]], name="pyramid", multiscale=True)
    widget.start(pyramid)
    assert widget.layers.labels.data.shape == big.shape
    click(qtbot, widget, (1500, 2500))
    assert widget.current.mask.shape == big.shape
    np.testing.assert_array_equal(widget.current.mask, viewer.layers["big PA-SAM labels"].data > 0)

    # a time series of stacks (T, Z, Y, X): the slice under the dims is (t, z)
    series = np.stack([np.stack([em_section[:128, :160]] * 3)] * 2)
    series[1, 2] = em_section[200:328, 100:260]
    ts = viewer.add_image(series, name="series")
    widget.start(ts)
    assert widget.layers.labels.data.shape == series.shape
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    assert widget.current_leading() == (1, 2)
    click(qtbot, widget, (60, 80))
    assert widget.current.leading == (1, 2)
    assert widget.layers.points.data[-1][:2].tolist() == [1, 2]
    assert widget.current.mask.any(), "this seed and click give a non-empty mask"
    label_id = widget.accept()
    written = np.argwhere((widget.layers.labels.data == label_id).any(axis=(2, 3)))
    assert written.tolist() == [[1, 2]]


def test_stack_propagation_follows_the_stop_rule(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack
):
    viewer = make_napari_viewer()
    stack = viewer.add_image(em_stack, name="em stack")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.start(stack)
    assert widget.layers.labels.data.shape == em_stack.shape
    # every object here starts from the same click: each replaces the one before it
    overlap = widget.object_panel.overlap_combo
    overlap.setCurrentIndex(overlap.findData("replace"))
    z0 = 15
    viewer.dims.set_current_step(0, z0)
    assert widget.current_leading() == (z0,)

    # object 1: permissive rule, at most 2 slices each way
    click(qtbot, widget, (256, 256))
    assert widget.current.leading == (z0,)
    assert widget.layers.uncertainty.data.shape == em_stack.shape[1:]
    assert widget.accept() == 1
    widget.propagation_panel.min_iou_spin.setValue(
        widget.propagation_panel.min_iou_spin.minimum()
    )  # "off"
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    widget.propagation_panel.max_slices_spin.setValue(2)
    rule = widget.propagation_rule()
    assert rule.min_iou is None and rule.max_uncertainty == 1.0 and rule.max_slices == 2
    widget.propagation_panel.propagate_button.click()
    wait_idle(qtbot, widget)
    steps = widget.last_propagation
    summary = widget.last_propagation_summary
    kept = sorted(s.slice_index for s in steps if s.kept)
    labelled = sorted(
        int(z) for z in np.nonzero((widget.layers.labels.data == 1).any(axis=(1, 2)))[0]
    )
    assert labelled == sorted([z0, *kept])
    assert set(summary.stops.values()) <= {STOP_LIMIT, STOP_EMPTY}
    if all(s.kept for s in steps):  # no empty mask: both directions ran 2 slices
        assert kept == [z0 - 2, z0 - 1, z0 + 1, z0 + 2]
    assert len(kept) >= 2, "labels on several slices"
    for s in steps:
        if s.kept:
            np.testing.assert_array_equal(
                widget.layers.labels.data[s.slice_index] == 1, s.result.mask
            )
    row = widget.layers.labels.features.set_index("index").loc[1]
    assert (row["slice_start"], row["slice_stop"]) == (min(labelled), max(labelled))

    # object 2: the same start, with an IoU threshold between the values seen above, must
    # keep exactly the slices before the first one under the threshold (per direction)
    ious = [s.result.iou for s in steps if s.kept]
    threshold = float(np.median(ious)) + 1e-6
    click(qtbot, widget, (256, 256))
    assert widget.accept() == 2
    widget.propagation_panel.min_iou_spin.setValue(threshold)
    threshold = widget.propagation_rule().min_iou  # as the spin box holds it
    assert min(ious) < threshold, "the threshold lies between the IoUs of the first run"
    widget.propagate()
    wait_idle(qtbot, widget)
    expected = []
    for d in (1, -1):
        for s in [s for s in steps if s.direction == d]:
            if not s.kept or s.result.iou < threshold:
                break
            expected.append(s.slice_index)
    kept2 = sorted(s.slice_index for s in widget.last_propagation if s.kept)
    assert kept2 == sorted(expected)
    stops2 = widget.last_propagation_summary.stops
    assert STOP_IOU in stops2.values()
    labelled2 = np.nonzero((widget.layers.labels.data == 2).any(axis=(1, 2)))[0].tolist()
    assert sorted(labelled2) == sorted([z0, *expected])

    # object 3: max uncertainty 0 stops at the very first neighbour in both directions
    click(qtbot, widget, (256, 256))
    assert widget.accept() == 3
    widget.propagation_panel.min_iou_spin.setValue(widget.propagation_panel.min_iou_spin.minimum())
    widget.propagation_panel.max_uncertainty_spin.setValue(0.0)
    widget.propagate()
    wait_idle(qtbot, widget)
    assert [s.slice_index for s in widget.last_propagation] == [z0 + 1, z0 - 1]
    assert not any(s.kept for s in widget.last_propagation)
    assert set(widget.last_propagation_summary.stops.values()) <= {STOP_UNCERTAINTY, STOP_EMPTY}
    assert np.nonzero((widget.layers.labels.data == 3).any(axis=(1, 2)))[0].tolist() == [z0]
    row = widget.layers.labels.features.set_index("index").loc[3]
    assert (row["slice_start"], row["slice_stop"]) == (z0, z0)

    # object 4: whole-stack propagation, cancelled after the first slice
    click(qtbot, widget, (256, 256))
    assert widget.accept() == 4
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    widget.propagation_panel.max_slices_spin.setValue(0)  # "whole stack"
    assert widget.propagation_rule().max_slices is None
    widget.propagate()
    assert widget.busy
    qtbot.waitUntil(lambda: len(widget.last_propagation) >= 1, timeout=WAIT_MS)
    widget.task_panel.cancel_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_propagation_summary.cancelled
    assert len(widget.last_propagation) <= 3, "stops within a slice or two of the cancel"
    written = np.nonzero((widget.layers.labels.data == 4).any(axis=(1, 2)))[0].tolist()
    kept4 = [s.slice_index for s in widget.last_propagation if s.kept]
    assert sorted(written) == sorted([z0, *kept4])

    # moving to another slice clears the current object; prompts live on their slice
    click(qtbot, widget, (100, 100))
    assert widget.current is not None
    viewer.dims.set_current_step(0, z0 + 1)
    wait_idle(qtbot, widget)
    assert widget.current is None and not widget.layers.current.data.any()
    assert len(widget.suggestions()[0]) == 0
    assert len(widget.prompts().points) == 0
    viewer.dims.set_current_step(0, z0)
    wait_idle(qtbot, widget)
    assert widget.current is not None and widget.current.leading == (z0,)


def test_bad_checkpoint_shows_error_and_viewer_stays_usable(
    make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, em_section
):
    viewer = make_napari_viewer()
    image = viewer.add_image(em_section[:256, :256], name="em")
    widget = dock(viewer)
    bad = tmp_path / "not_a_model.pth"
    bad.write_bytes(b"this is not a checkpoint")
    n = len(notification_manager.records)
    combo = widget.model_panel.source_combo
    combo.setCurrentIndex(combo.findData("file"))
    widget.model_panel.checkpoint_edit.setText(str(bad))
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    errors = errors_since(n)
    assert len(errors) == 1 and "could not load the model" in errors[0]
    assert str(bad) in errors[0] or "not_a_model" in errors[0]
    assert "Traceback" not in errors[0]
    assert (
        widget.predictor is None and widget.model_panel.model_label.full_text() == "No model loaded"
    )

    # empty path: a message, no worker
    widget.model_panel.checkpoint_edit.setText("")
    widget.load_model()
    assert not widget.busy and "choose a checkpoint" in errors_since(n)[-1]

    # the viewer and the widget keep working: load a good model and segment
    widget.model_panel.checkpoint_edit.setText(str(tiny_checkpoint))
    widget.load_model()
    wait_idle(qtbot, widget)
    widget.start(image)
    click(qtbot, widget, (100, 100))
    assert widget.current is not None and widget.current.mask.shape == (256, 256)
    assert len(errors_since(n)) == 2


def test_key_bindings_reach_the_annotator(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((64, 64), np.uint8), name="blank")
    widget = dock(viewer)
    widget.start(image)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    assert widget.object_panel.positive_radio.isChecked()
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert widget.object_panel.negative_radio.isChecked()
    assert not widget.layers.points.feature_defaults["positive"].iloc[0]
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert widget.layers.points.feature_defaults["positive"].iloc[0]
    n = len(notification_manager.records)
    qtbot.keyClick(canvas, Qt.Key.Key_K)  # accept with nothing predicted: a message
    assert any("nothing to accept" in str(r.message) for r in notification_manager.records[n:])


def test_precision_choice_reaches_the_encoder(make_napari_viewer, qtbot, tiny_checkpoint):
    """The model panel's Precision: auto by default (resolved as ``pasam info`` says), and a
    forced bf16 or float32 is what the loaded model's fast encoder runs in (one of the two
    differs from auto on any machine)."""
    from pasam_plugins.precision import resolve_precision

    viewer = make_napari_viewer()
    widget = dock(viewer)
    assert widget.model_panel.precision_combo.currentText() == "auto"
    load(widget, qtbot, tiny_checkpoint)
    assert widget.predictor.fast_encoder
    assert widget.predictor.precision == resolve_precision("auto", widget.predictor.device)
    for choice in ("bf16", "float32"):
        widget.model_panel.precision_combo.setCurrentText(choice)
        load(widget, qtbot, tiny_checkpoint)
        assert widget.predictor.precision == choice and widget.predictor.fast_encoder


def test_model_registry_entries(make_napari_viewer, qtbot, monkeypatch, tmp_path, tiny_checkpoint):
    """Registry entries (here a private registry via PASAM_REGISTRY) load from the cache
    directory without network; entries that need a browser say so in a notification."""
    import hashlib
    import json
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tiny_checkpoint, cache / "tiny.safetensors")
    digest = hashlib.sha256((cache / "tiny.safetensors").read_bytes()).hexdigest()
    registry = {
        "schema_version": 1,
        "models": {
            "tiny_pasam": {
                "kind": "pasam",
                "variant": "vit_tiny",
                "title": "tiny test model",
                "url": "https://example.invalid/tiny.safetensors",
                "filename": "tiny.safetensors",
                "sha256": digest,
            },
            "manual": {
                "kind": "pasam-decoder",
                "variant": "vit_l",
                "url": "https://pan.example.invalid/share",
                "filename": "epoch_20.pth",
                "direct_download": False,
                "requires": "tiny_pasam",
            },
        },
    }
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    monkeypatch.setenv("PASAM_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("PASAM_CACHE_DIR", str(cache))

    viewer = make_napari_viewer()
    widget = dock(viewer)
    entries = {
        widget.model_panel.source_combo.itemData(i): widget.model_panel.source_combo.itemText(i)
        for i in range(widget.model_panel.source_combo.count())
    }
    assert entries["registry:tiny_pasam"] == "tiny_pasam: tiny test model (download)"
    assert "manual download" in entries["registry:manual"]
    assert "random:vit_b" in entries

    widget.model_panel.source_combo.setCurrentIndex(
        widget.model_panel.source_combo.findData("registry:tiny_pasam")
    )
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.predictor is not None
    assert "registry entry tiny_pasam" in widget.model_panel.model_label.full_text()
    assert "SAM + PA-SAM adapter" in widget.model_panel.model_label.full_text()
    loaded = widget.predictor

    n = len(notification_manager.records)
    widget.model_panel.source_combo.setCurrentIndex(
        widget.model_panel.source_combo.findData("registry:manual")
    )
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    errors = errors_since(n)
    assert len(errors) == 1 and "cannot be downloaded automatically" in errors[0]
    assert str(cache) in errors[0]
    assert widget.predictor is loaded, "the loaded model stays in use"

    # embeddings persist in $PASAM_CACHE_DIR/embeddings when asked to
    widget.model_panel.disk_cache_check.setChecked(True)
    assert Path(widget.predictor.cache.disk_dir) == cache / "embeddings"
    image = viewer.add_image(np.tile(np.arange(96, dtype=np.uint8), (80, 1)), name="ramp")
    widget.start(image)
    click(qtbot, widget, (40, 50))
    assert widget.current is not None
    assert len(list((cache / "embeddings").glob("*.safetensors"))) == 1
