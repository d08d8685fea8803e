"""Helpers shared by the real-viewer napari tests (import after ``importorskip("napari")``)."""

from pathlib import Path

from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_pasam._compat import avoid_triton_llvm_clash
from napari_pasam._widget import AnnotatorWidget

# the viewers load Mesa's LLVM; fixtures import torch afterwards (test checkpoints): block
# Triton for these processes (docking the annotator itself imports no torch)
avoid_triton_llvm_clash(force=True)

#: generous: the 2-core CI machine runs the encoder and napari together
WAIT_MS = 180_000


def dock(viewer) -> AnnotatorWidget:
    """The annotator, docked through the plugin manifest as a user would."""
    _, widget = viewer.window.add_plugin_dock_widget("pasam-plugins", "PA-SAM Annotator")
    assert isinstance(widget, AnnotatorWidget)
    return widget


def wait_idle(qtbot, widget: AnnotatorWidget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def load(widget: AnnotatorWidget, qtbot, checkpoint: Path) -> None:
    """Load a checkpoint file through the model panel."""
    combo = widget.model_panel.source_combo
    combo.setCurrentIndex(combo.findData("file"))
    widget.model_panel.checkpoint_edit.setText(str(checkpoint))
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.predictor is not None, widget.task_panel.status_label.full_text()


def loaded_widget(viewer, qtbot, checkpoint: Path) -> AnnotatorWidget:
    widget = dock(viewer)
    load(widget, qtbot, checkpoint)
    return widget


def click(qtbot, widget: AnnotatorWidget, yx, positive: bool = True) -> None:
    """What a click in the Points layer's add mode does: add a point at the cursor."""
    widget.set_point_polarity(positive)
    widget.layers.points.add([*widget.current_leading(), *yx])
    wait_idle(qtbot, widget)


def messages_since(n: int, severity=NotificationSeverity.ERROR) -> list[str]:
    """Notification messages of ``severity`` after the first ``n`` records."""
    return [str(r.message) for r in notification_manager.records[n:] if r.severity == severity]


def errors_since(n: int) -> list[str]:
    return messages_since(n, NotificationSeverity.ERROR)


def layers_ready(qtbot, widget: AnnotatorWidget) -> None:
    """Wait until every annotation layer is in the viewer (they are added one per pass)."""
    qtbot.waitUntil(
        lambda: all(la in widget.viewer.layers for la in widget.layers.all()), timeout=WAIT_MS
    )


def press(qtbot, viewer, key, modifier=None) -> None:
    """A key press on the canvas, as a user types it."""
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifier or Qt.KeyboardModifier.NoModifier)


def drawn_pixels(viewer, layer) -> int:
    """How many canvas pixels ``layer`` changes: screenshots with it shown and hidden."""
    import numpy as np

    visible = layer.visible
    layer.visible = True
    on = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    layer.visible = False
    off = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    layer.visible = visible
    return int((np.abs(on - off).sum(-1) > 30).sum())
