"""Helpers shared by the real-viewer napari tests (import after ``importorskip("napari")``)."""

from pathlib import Path

from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_pasam._widget import AnnotatorWidget

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
    widget.source_combo.setCurrentIndex(0)
    widget.checkpoint_edit.setText(str(checkpoint))
    widget.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.predictor is not None, widget.status_label.text()


def loaded_widget(viewer, qtbot, checkpoint: Path) -> AnnotatorWidget:
    widget = dock(viewer)
    load(widget, qtbot, checkpoint)
    return widget


def click(qtbot, widget: AnnotatorWidget, yx, positive: bool = True) -> None:
    """What a click in the Points layer's add mode does: add a point at the cursor."""
    widget.set_point_polarity(positive)
    widget.points_layer.add([*widget.current_leading(), *yx])
    wait_idle(qtbot, widget)


def messages_since(n: int, severity=NotificationSeverity.ERROR) -> list[str]:
    """Notification messages of ``severity`` after the first ``n`` records."""
    return [str(r.message) for r in notification_manager.records[n:] if r.severity == severity]


def errors_since(n: int) -> list[str]:
    return messages_since(n, NotificationSeverity.ERROR)
