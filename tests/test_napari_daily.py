"""The annotator as a microscopist uses it all day (issue 15), in a real napari viewer under
Xvfb with random-weight models: suggestions that never outlive their object, a dock that
fits a laptop, layers reused per image, overlaps by a visible rule with undo, progress and
cancel in the dock, channels from the layer and napari's slider, a UI thread that only
updates layers, shortcuts, saving and real samples; and a zoomed model through every path."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402
from napari_support import (  # noqa: E402
    WAIT_MS,
    click,
    dock,
    drawn_pixels,
    errors_since,
    layers_ready,
    load,
    loaded_widget,
    press,
    wait_idle,
)
from qtpy.QtCore import Qt  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


@pytest.fixture(scope="module")
def em_stack(isbi_dir: Path) -> np.ndarray:
    """Six EM sections (256 x 256 crops) as a small stack."""
    files = [isbi_dir / "image" / f"{i}.png" for i in range(6)]
    return np.stack([np.asarray(PILImage.open(f))[:256, :256] for f in files])


def box3d(z, y0, x0, y1, x1) -> np.ndarray:
    """A rectangle on slice ``z`` of a stack (napari wants 4 corners in 3D)."""
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def features_match_labels(widget) -> None:
    """The features table has one row per object in the labels, with its true area and
    slice range."""
    data = widget.layers.labels.data
    feats = widget.layers.labels.features.set_index("index")
    ids = [int(i) for i in np.unique(data) if i]
    assert sorted(feats.index.tolist()) == ids
    for i in ids:
        assert feats.loc[i, "area"] == int((data == i).sum())
        if data.ndim == 3:
            zs = np.nonzero((data == i).any(axis=(1, 2)))[0]
            assert (feats.loc[i, "slice_start"], feats.loc[i, "slice_stop"]) == (zs[0], zs[-1])


# ---------------------------------------------------------------------------- item 1
def test_suggestions_never_outlive_their_object(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack
):
    viewer = make_napari_viewer(show=True)
    stack = viewer.add_image(em_stack[:3], name="em")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.start(stack)
    layers_ready(qtbot, widget)
    viewer.dims.set_current_step(0, 0)
    widget.overlay_panel.show_uncertainty_check.setChecked(False)
    sugg = widget.layers.suggestions

    click(qtbot, widget, (128, 128))
    assert len(sugg.data) == 8 and drawn_pixels(viewer, sugg) > 50, "markers are drawn"
    assert widget.accept() == 1
    assert len(sugg.data) == 0 and drawn_pixels(viewer, sugg) == 0, "none left after Accept"

    click(qtbot, widget, (60, 60))
    assert drawn_pixels(viewer, sugg) > 50
    press(qtbot, viewer, Qt.Key.Key_C, SHIFT)  # Clear
    assert widget.current is None and len(widget.layers.points.data) == 0
    assert len(sugg.data) == 0 and drawn_pixels(viewer, sugg) == 0, "none left after Clear"

    click(qtbot, widget, (60, 60))
    assert len(sugg.data) == 8
    viewer.dims.set_current_step(0, 1)  # another slice: nothing predicted there
    wait_idle(qtbot, widget)
    assert len(sugg.data) == 0 and drawn_pixels(viewer, sugg) == 0, "none on another slice"
    viewer.dims.set_current_step(0, 0)
    wait_idle(qtbot, widget)
    assert len(sugg.data) == 8, "back on the object's slice: its prediction again"

    # a model reload: the old model's suggestions go at once, the new model re-predicts
    at_switch = []
    original = widget.use_slot

    def use_slot(slot):
        original(slot)
        at_switch.append((len(sugg.data), widget.current))

    widget.use_slot = use_slot
    load(widget, qtbot, tiny_checkpoint)
    assert at_switch == [(0, None)]
    assert widget.current is not None and widget.current.plane_key[0] == id(widget.slot)
    np.testing.assert_allclose(
        sugg.data, widget.last_prediction.result.mined_points[:, ::-1], atol=1e-4
    )


# ---------------------------------------------------------------------------- item 2
def test_dock_fits_a_laptop_screen(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)
    widget = dock(viewer)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    qtbot.wait(300)
    assert window.height() <= 768 and window.width() <= 1366
    assert widget.minimumSizeHint().height() <= 300, "the panels scroll instead"
    bar = widget.scroll.verticalScrollBar()
    assert bar.maximum() > 0, "content taller than the dock scrolls"
    content = widget.scroll.widget()
    assert content.minimumSizeHint().width() <= content.width(), "no panel is squeezed"
    assert content.width() <= widget.scroll.viewport().width(), (
        "no panel is cut at the right edge behind the vertical scrollbar"
    )
    assert widget.scroll.horizontalScrollBar().maximum() == 0
    assert widget.task_panel.isVisible() and widget.task_panel.parentWidget() is widget, (
        "status and progress stay in view, outside the scrolled panels"
    )

    # a model from a long path: the label elides the path, never cuts it off
    deep = tmp_path.joinpath(*["a_rather_long_folder_name_for_models"] * 6)
    deep.mkdir(parents=True)
    path = deep / "tiny.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    load(widget, qtbot, path)
    qtbot.wait(100)
    label = widget.model_panel.model_label
    assert str(path) in label.full_text() and str(path) in label.toolTip()
    width = label.contentsRect().width()
    assert 0 < width <= widget.width()
    metrics = label.fontMetrics()
    for word in label.text().replace("\n", " ").split(" "):
        assert metrics.horizontalAdvance(word) <= width, f"{word!r} is cut off"
    assert "…" in label.text(), "the long path is shown elided"


# ---------------------------------------------------------------------------- item 3
def test_reannotating_an_image_reuses_its_layers(
    make_napari_viewer, qtbot, tiny_checkpoint, em_section
):
    viewer = make_napari_viewer()
    image = viewer.add_image(em_section[:256, :256], name="em")
    other = viewer.add_image(em_section[256:, 256:], name="em other")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.start(image)
    layers_ready(qtbot, widget)
    click(qtbot, widget, (128, 128))
    assert widget.accept() == 1
    labels, accepted = widget.layers.labels, widget.layers.labels.data.copy()
    n = len(viewer.layers)
    assert n == 2 + 6

    widget.image_panel.start_button.click()  # "Annotate this image" again
    layers_ready(qtbot, widget)
    assert len(viewer.layers) == n and widget.layers.labels is labels
    np.testing.assert_array_equal(labels.data, accepted)
    assert labels.features["index"].tolist() == [1]

    widget.start(other)
    layers_ready(qtbot, widget)
    assert len(viewer.layers) == n + 6 and widget.layers.labels is not labels
    widget.start(image)  # back: its own layers, its objects, the next id after them
    layers_ready(qtbot, widget)
    assert len(viewer.layers) == n + 6 and widget.layers.labels is labels
    click(qtbot, widget, (30, 30))
    assert widget.current.object_id == 2

    # a layer the user deleted comes back; nothing else is added
    viewer.layers.remove(widget.layers.uncertainty)
    widget.start(image)
    layers_ready(qtbot, widget)
    assert len(viewer.layers) == n + 6

    # read with other axes (here: the annotation layers of a 3-slice stack vs 3 channels),
    # the old labels layer is kept as it is, with a message
    mc = viewer.add_image(np.stack([em_section[:256, :256]] * 3), name="three")
    widget.start(mc, channel_axis=None)
    layers_ready(qtbot, widget)
    old = widget.layers.labels
    old.data[1, :10, :10] = 5
    m = len(viewer.layers)
    k = len(notification_manager.records)
    widget.start(mc, channel_axis=0)
    layers_ready(qtbot, widget)
    assert widget.layers.labels is not old and old in viewer.layers
    assert (old.data[1, :10, :10] == 5).all()
    warnings = [str(r.message) for r in notification_manager.records[k:]]
    assert any("kept three PA-SAM labels" in w for w in warnings)
    assert len(viewer.layers) == m + 3, "new labels, points, boxes; 2D overlays reused"


# ---------------------------------------------------------------------------- item 4
def test_overlaps_follow_the_rule_features_match_and_undo(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack
):
    viewer = make_napari_viewer(show=True)
    stack = viewer.add_image(em_stack, name="em stack")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    events = []
    widget.session_listeners.append(events.append)
    widget.start(stack)
    layers_ready(qtbot, widget)
    viewer.dims.set_current_step(0, 2)
    labels = widget.layers.labels
    overlap = widget.object_panel.overlap_combo
    assert overlap.currentData() == "keep", "accepted objects are safe by default"

    click(qtbot, widget, (128, 128))
    click(qtbot, widget, (40, 200), positive=False)
    assert "object 1 · 2 clicks · predicted IoU" in widget.object_panel.object_label.text()
    assert widget.accept() == 1
    one = labels.data == 1
    assert one.any()
    row = labels.features.set_index("index").loc[1]
    assert row["clicks"] == 2
    assert [e.kind for e in events] == ["prompt", "prompt", "accept"]
    assert events[0].point == (128.0, 128.0, 1) and events[1].point[2] == 0
    assert events[2].area == int(one.sum()) and events[0].image == "em stack[z=2]"

    # keep: a new object over object 1 paints only background
    click(qtbot, widget, (130, 126))
    mask2 = widget.current.mask.copy()
    assert (mask2 & one[2]).any(), "this click's object overlaps object 1"
    assert widget.accept() == 2
    np.testing.assert_array_equal(labels.data == 1, one)
    np.testing.assert_array_equal(labels.data[2] == 2, mask2 & ~one[2])
    features_match_labels(widget)

    # replace: object 3 takes the pixels it covers; object 1's row follows its pixels
    overlap.setCurrentIndex(overlap.findData("replace"))
    before = labels.data.copy()
    feats_before = labels.features.copy()
    click(qtbot, widget, (126, 130))
    mask3 = widget.current.mask.copy()
    assert widget.accept() == 3
    np.testing.assert_array_equal(labels.data[2] == 3, mask3)
    assert (labels.data == 1).sum() < one.sum()
    features_match_labels(widget)

    # Ctrl+Z (prompt layer active) undoes the accept: labels and features as before
    assert viewer.layers.selection.active is widget.layers.points
    press(qtbot, viewer, Qt.Key.Key_Z, CTRL)
    np.testing.assert_array_equal(labels.data, before)
    pd.testing.assert_frame_equal(labels.features, feats_before)
    press(qtbot, viewer, Qt.Key.Key_Z, CTRL | SHIFT)  # redo
    np.testing.assert_array_equal(labels.data[2] == 3, mask3)
    features_match_labels(widget)

    # a brush stroke in the labels layer, then Ctrl+Z with the labels layer active
    viewer.layers.selection.active = labels
    labels.selected_label = 9
    labels.paint((2, 250, 250), 9)
    qtbot.waitUntil(lambda: 9 in labels.features["index"].tolist(), timeout=5000)
    features_match_labels(widget)
    press(qtbot, viewer, Qt.Key.Key_Z, CTRL)
    assert 9 not in labels.features["index"].tolist() and not (labels.data == 9).any()
    features_match_labels(widget)

    # a propagation is one undo step
    viewer.layers.selection.active = widget.layers.points
    widget.propagation_panel.min_iou_spin.setValue(-1.0)  # off
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    widget.propagation_panel.max_slices_spin.setValue(1)
    before = labels.data.copy()
    widget.propagate()  # the last accepted object (3)
    wait_idle(qtbot, widget)
    kept = [s.slice_index for s in widget.last_propagation if s.kept]
    assert kept, "random weights still give a non-empty mask next door"
    assert sorted(np.nonzero((labels.data == 3).any(axis=(1, 2)))[0]) == sorted([2, *kept])
    features_match_labels(widget)
    widget.object_panel.undo_button.click()
    np.testing.assert_array_equal(labels.data, before)
    features_match_labels(widget)


# ---------------------------------------------------------------------------- item 5
def test_long_tasks_show_in_the_dock_disable_buttons_and_cancel(
    make_napari_viewer, qtbot, tiny_checkpoint, em_section
):
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(em_section[:256, :256], name="em")
    widget = dock(viewer)
    tp = widget.task_panel
    shown = lambda w: w.isVisibleTo(widget)  # noqa: E731
    assert not shown(tp.progress_bar) and not shown(tp.cancel_button)
    combo = widget.model_panel.source_combo
    combo.setCurrentIndex(combo.findData("file"))
    widget.model_panel.checkpoint_edit.setText(str(tiny_checkpoint))
    widget.model_panel.load_button.click()
    assert shown(tp.progress_bar) and tp.progress_bar.maximum() == 0, "busy indicator"
    assert "Loading model" in tp.progress_bar.format()
    assert not widget.model_panel.load_button.isEnabled()
    assert not widget.image_panel.start_button.isEnabled()
    assert shown(tp.cancel_button) and tp.cancel_button.isEnabled()
    wait_idle(qtbot, widget)
    assert not shown(tp.progress_bar) and widget.model_panel.load_button.isEnabled()

    # an embedding that takes long: visible, cancellable at once, its late result dropped
    widget.start(image)
    layers_ready(qtbot, widget)
    release = threading.Event()
    segmenter = widget.slot.segmenter
    original = segmenter.set_image

    def slow_set_image(*args, **kwargs):
        release.wait(WAIT_MS / 1000)
        return original(*args, **kwargs)

    segmenter.set_image = slow_set_image
    widget.layers.points.add([100, 100])
    assert widget.runner.task.kind == "embed" and shown(tp.progress_bar)
    assert "Embedding em" in tp.progress_bar.format()
    assert not widget.propagation_panel.propagate_button.isEnabled()
    assert not widget.finetune_panel.finetune_button.isEnabled()
    tp.cancel_button.click()
    assert not widget.busy and not shown(tp.progress_bar)
    assert widget.image_panel.start_button.isEnabled()
    release.set()
    qtbot.wait(500)
    wait_idle(qtbot, widget)
    assert widget.current is None, "the cancelled embedding's prediction is not shown"
    segmenter.set_image = original
    widget.layers.points.add([120, 120])  # a new click waits for the model, then predicts
    wait_idle(qtbot, widget)
    assert widget.current is not None and widget.current.prompts.count == 2


# ---------------------------------------------------------------------------- item 6
def test_channels_come_from_the_layer_and_follow_the_slider(
    make_napari_viewer, qtbot, tiny_checkpoint, em_section
):
    viewer = make_napari_viewer()
    crop = em_section[:256, :256].astype(np.uint16) * 200
    noise = np.random.default_rng(0).integers(0, 60000, crop.shape, dtype=np.uint16)
    mc = viewer.add_image(np.stack([noise, crop]), name="cyx", metadata={"axes": "CYX"})
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    panel = widget.image_panel
    assert panel.image_combo.currentText() == "cyx"
    assert panel.axes_label.full_text().startswith("C · Y · X = 2 · 256 · 256 (channel axis 0")
    assert "layer metadata 'axes'" in panel.axes_label.full_text()
    widget.start(mc)  # the panel's default: the axes the layer says
    layers_ready(qtbot, widget)
    assert widget.geometry.channel_axis == 0 and widget.layers.labels.data.shape == crop.shape

    viewer.dims.set_current_step(0, 1)  # napari's channel slider
    assert widget.current_channel() == 1 and panel.channel_spin.value() == 1
    click(qtbot, widget, (128, 128))
    assert widget.current.channel == 1
    np.testing.assert_array_equal(widget.last_prediction.plane.read(), crop)
    viewer.dims.set_current_step(0, 0)  # the slider again: re-predicted on channel 0
    wait_idle(qtbot, widget)
    assert widget.current.channel == 0 and panel.channel_spin.value() == 0
    np.testing.assert_array_equal(widget.last_prediction.plane.read(), noise)
    panel.channel_spin.setValue(1)  # ... and the panel's box moves the slider
    wait_idle(qtbot, widget)
    assert viewer.dims.current_step[0] == 1 and widget.current.channel == 1

    # a 3-slice layer that names no axes: read as a stack, with a hint
    three = viewer.add_image(np.stack([crop] * 3), name="three")
    panel.image_combo.setCurrentIndex(panel.image_combo.findText("three"))
    text = panel.axes_label.full_text()
    assert text.startswith("Z · Y · X") and "axis 0 has only 3 entries" in text

    # channels last (Y, X, C): refused with a readable message, nothing is added
    n_layers = len(viewer.layers)
    k = len(notification_manager.records)
    yxc = viewer.add_image(np.stack([crop] * 5, axis=-1), name="yxc", rgb=False)
    widget.start(yxc)
    errors = errors_since(k)
    assert len(errors) == 1 and "channels last" in errors[0] and "Traceback" not in errors[0]
    assert len(viewer.layers) == n_layers + 1 and widget.image_layer is mc
    assert three.ndim == 3


# ---------------------------------------------------------------------------- item 7
def test_the_ui_thread_only_updates_layers(make_napari_viewer, qtbot, tiny_checkpoint, em_stack):
    # opening the dock imports neither torch nor pandas (a fresh process, same display)
    code = (
        "import sys, time, napari\n"
        "v = napari.Viewer(show=False)\n"
        "t = time.perf_counter()\n"
        "v.window.add_plugin_dock_widget('pasam-plugins', 'PA-SAM Annotator')\n"
        "print(round(time.perf_counter() - t, 3), 'torch' in sys.modules)\n"
        "v.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    assert out.stdout.split()[-1] == "False", out.stdout

    viewer = make_napari_viewer()
    stack = viewer.add_image(em_stack[:3], name="em")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.start(stack)
    layers_ready(qtbot, widget)
    threads = []
    segmenter = widget.slot.segmenter
    for name in ("segment", "set_image"):
        original = getattr(segmenter, name)

        def record(*args, _original=original, _name=name, **kwargs):
            threads.append((_name, threading.current_thread() is threading.main_thread()))
            return _original(*args, **kwargs)

        setattr(segmenter, name, record)
    click(qtbot, widget, (128, 128))
    widget.layers.boxes.add_rectangles(box3d(widget.current_leading()[0], 60, 60, 200, 200))
    wait_idle(qtbot, widget)
    assert widget.accept() == 1
    widget.propagation_panel.max_slices_spin.setValue(1)
    widget.propagation_panel.min_iou_spin.setValue(-1.0)
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    widget.propagate()
    wait_idle(qtbot, widget)
    assert {n for n, _ in threads} == {"segment", "set_image"}
    assert len([1 for n, _ in threads if n == "segment"]) >= 3
    assert not any(main for _, main in threads), "no model call on the UI thread"


# ---------------------------------------------------------------------------- item 8
def test_shortcuts_help_save_and_real_samples(
    make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, em_stack
):
    import tifffile

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("pasam-plugins", "nuclei_fluorescence")
    nuclei = viewer.layers["nuclei fluorescence 360px"]
    assert nuclei.data.shape == (360, 360) and nuclei.data.dtype == np.uint8
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    help_text = widget.help_label.text()
    for key in ("Shift+C", "Shift+S", "Ctrl+Z", "<b>K</b>", "<b>N</b>"):
        assert key in help_text
    widget.start(nuclei)
    layers_ready(qtbot, widget)
    click(qtbot, widget, (180, 180))
    press(qtbot, viewer, Qt.Key.Key_C, SHIFT)
    assert widget.current is None and len(widget.layers.points.data) == 0
    click(qtbot, widget, (180, 180))
    press(qtbot, viewer, Qt.Key.Key_K)
    assert widget.layers.labels.features["index"].tolist() == [1]

    # save: label TIFF + features CSV that match the layer
    tif, csv = widget.save_labels(tmp_path / "out" / "nuclei.tif")
    np.testing.assert_array_equal(tifffile.imread(tif), widget.layers.labels.data)
    table = pd.read_csv(csv)
    assert table["image"].tolist() == ["nuclei fluorescence 360px"]
    feats = widget.layers.labels.features
    assert (
        table["area"].tolist()
        == feats["area"].tolist()
        == [int(widget.layers.labels.data.astype(bool).sum())]
    )
    assert table.columns.tolist()[1:] == feats.columns.tolist()

    # Shift+S on a stack: the current object is accepted and segmented through the slices
    stack = viewer.add_image(em_stack, name="em stack")
    widget.start(stack)
    layers_ready(qtbot, widget)
    viewer.dims.set_current_step(0, 2)
    widget.propagation_panel.min_iou_spin.setValue(-1.0)
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    click(qtbot, widget, (128, 128))
    press(qtbot, viewer, Qt.Key.Key_S, SHIFT)
    wait_idle(qtbot, widget)
    labels = widget.layers.labels.data
    kept = [s.slice_index for s in widget.last_propagation if s.kept]
    assert kept and sorted(np.nonzero((labels == 1).any(axis=(1, 2)))[0]) == sorted([2, *kept])
    features_match_labels(widget)


# ---------------------------------------------------------------------------- zoomed model
def test_a_zoomed_model_works_through_every_path(
    make_napari_viewer, qtbot, tmp_path, em_stack, monkeypatch
):
    from pasam_plugins.checkpoint import read_metadata, save_checkpoint
    from pasam_plugins.segment import ZoomSettings
    from pasam_plugins.testing import make_test_model

    monkeypatch.setenv("PASAM_MODEL_DIR", str(tmp_path / "models"))
    zoom = ZoomSettings().to_metadata()
    path = save_checkpoint(
        make_test_model(seed=0, variant="vit_tiny256"),
        tmp_path / "zoomed.safetensors",
        metadata={"untrained": True, "zoom": zoom},
    )
    viewer = make_napari_viewer()
    stack = viewer.add_image(em_stack, name="em stack")
    widget = loaded_widget(viewer, qtbot, path)
    assert widget.slot.segmenter.zoom is not None
    assert "zoomed in on each object" in widget.model_panel.model_label.full_text()
    widget.start(stack)
    layers_ready(qtbot, widget)
    viewer.dims.set_current_step(0, 2)

    click(qtbot, widget, (128, 128))  # a click: segmented in a window around it
    first = widget.current.result
    assert first.window is not None and widget.current.mask.shape == (256, 256)
    click(qtbot, widget, (150, 140))  # a refinement: the object's window and logits again
    assert widget.current.prompts.count == 2
    if first.window.contains(np.array([[140.0, 150.0]])):
        assert widget.current.result.window == first.window
    widget.clear_prompts()
    widget.layers.boxes.add_rectangles(box3d(2, 80, 80, 180, 200))
    wait_idle(qtbot, widget)
    assert widget.current is not None and widget.current.result.box is not None
    assert widget.current.mask.any() and widget.accept() == 1

    widget.propagation_panel.min_iou_spin.setValue(-1.0)
    widget.propagation_panel.max_uncertainty_spin.setValue(1.0)
    widget.propagation_panel.max_slices_spin.setValue(1)
    widget.propagate()
    wait_idle(qtbot, widget)
    assert len(widget.last_propagation) >= 1
    assert all(s.result.result.window is not None for s in widget.last_propagation)

    widget.finetune(steps=2)
    wait_idle(qtbot, widget)
    result = widget.last_finetune
    assert result is not None and result.steps == 2, widget.task_panel.status_label.full_text()
    assert read_metadata(result.path)["zoom"] == json.loads(json.dumps(zoom))
    assert widget.slot.segmenter.zoom is not None, "the fine-tuned model is zoomed too"
