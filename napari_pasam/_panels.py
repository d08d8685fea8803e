"""The dock's panels: small Qt widgets holding controls, no annotation logic (the
:class:`~napari_pasam._widget.AnnotatorWidget` connects them to the session and the
workers). Each panel says which of its controls must wait while a long task runs
(:meth:`set_busy`).

Further panels are added with :meth:`AnnotatorWidget.add_panel` ("Segment all" lives in
:mod:`napari_pasam._automatic`).
"""

from qtpy.QtCore import Qt
from qtpy.QtGui import QFontMetrics
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .session import OVERLAP_KEEP, OVERLAP_RULES

#: key bindings (installed on the viewer), shown in the panels and the help text
ACCEPT_KEY = "K"
TOGGLE_POLARITY_KEY = "N"
CLEAR_KEY = "Shift+C"
PROPAGATE_KEY = "Shift+S"
UNDO_KEY = "Ctrl+Z"
REDO_KEY = "Ctrl+Shift+Z"

HELP_TEXT = f"""<b>Mouse</b>: click in the <i>points</i> layer (add mode) to prompt; select
the <i>boxes</i> layer to draw a box.<br>
<b>{TOGGLE_POLARITY_KEY}</b> next click positive / negative ·
<b>{ACCEPT_KEY}</b> accept the object ·
<b>{CLEAR_KEY}</b> clear prompts and prediction ·
<b>{PROPAGATE_KEY}</b> segment the current (or last accepted) object through all slices ·
<b>{UNDO_KEY}</b> / <b>{REDO_KEY}</b> undo / redo accept, propagation and painting in the
labels layer.<br>
Cyan diamonds: where a positive click would help most; magenta: a negative one. The
labels layer's <i>features</i> (layer properties) hold area, predicted IoU, mean
uncertainty, clicks and slice range of every object.<br>
<b>Segment all</b> finds every object of the slice or stack without clicks where the
labels are empty (one undo step); red rings mark the objects to review first.
<b>COCO JSON</b> / <b>Objects CSV</b> export the labels with their features."""


def _compact(combo: QComboBox) -> None:
    """Long entries (registry titles, paths) must not widen the dock."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(12)


class PathLabel(QLabel):
    """A word-wrapped label whose space-free runs (paths) are elided in the middle to fit
    its width; the full text is the tooltip. It never asks for more width than a few
    characters, so a long path cannot widen the dock or be cut off."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._full = ""
        self.set_full_text(text)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = text
        self.setToolTip(text)
        self._elide()

    def _elide(self) -> None:
        width = max(self.contentsRect().width(), 40)
        metrics = QFontMetrics(self.font())
        lines = []
        for line in self._full.split("\n"):
            words = [
                w
                if metrics.horizontalAdvance(w) <= width
                else metrics.elidedText(w, Qt.TextElideMode.ElideMiddle, width)
                for w in line.split(" ")
            ]
            lines.append(" ".join(words))
        shown = "\n".join(lines)
        if shown != self.text():
            self.setText(shown)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._elide()

    def minimumSizeHint(self):  # noqa: N802 - Qt API
        hint = super().minimumSizeHint()
        hint.setWidth(min(hint.width(), 60))
        return hint


class PanelScrollArea(QScrollArea):
    """Scrolls its panels vertically only, and asks for their minimum width plus the
    vertical scrollbar's, so that no panel is cut at the right edge behind the scrollbar."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)

    def _width(self) -> int:
        bar = self.verticalScrollBar().sizeHint().width()
        return self.widget().minimumSizeHint().width() + bar + 2 * self.frameWidth()

    def minimumSizeHint(self):  # noqa: N802 - Qt API
        hint = super().minimumSizeHint()
        hint.setWidth(max(hint.width(), self._width()))
        return hint

    def sizeHint(self):  # noqa: N802 - Qt API
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self._width()))
        return hint


class Collapsible(QWidget):
    """A toggle button that shows or hides ``body``."""

    def __init__(self, title: str, body: QWidget, *, expanded: bool = False) -> None:
        super().__init__()
        self.toggle = QToolButton(text=title, checkable=True, checked=expanded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        self.body = body
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(body)
        self.toggle.toggled.connect(self._apply)
        self._apply(expanded)

    def _apply(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


class ModelPanel(QGroupBox):
    """Model source, options, Load, and what is loaded."""

    def __init__(self) -> None:
        super().__init__("Model")
        form = QFormLayout(self)
        self.source_combo = QComboBox()
        _compact(self.source_combo)
        form.addRow("Source", self.source_combo)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText(".safetensors / sam_vit_*.pth / sam_pa_*.pth")
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("Choose a checkpoint file")
        form.addRow("File", _row(self.checkpoint_edit, self.browse_button))

        more = QWidget()
        more_form = QFormLayout(more)
        more_form.setContentsMargins(0, 0, 0, 0)
        self.sam_checkpoint_edit = QLineEdit()
        self.sam_checkpoint_edit.setPlaceholderText("only for official PA-SAM epoch_N.pth")
        self.browse_sam_button = QPushButton("…")
        more_form.addRow("Base SAM", _row(self.sam_checkpoint_edit, self.browse_sam_button))
        self.guide_combo = QComboBox()
        self.guide_combo.addItem("as saved in the checkpoint", None)
        self.guide_combo.addItem("reference (official PA-SAM weights)", "reference")
        self.guide_combo.addItem("image (adapters trained with guide mode image)", "image")
        _compact(self.guide_combo)
        more_form.addRow("Guide mode", self.guide_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"])  # the rest once torch is loaded (worker)
        more_form.addRow("Device", self.device_combo)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["auto", "float32", "bf16"])
        self.precision_combo.setToolTip(
            "Image encoder number format: auto uses bf16 where this CPU (AMX/AVX512-BF16) or "
            "GPU computes it fast, float32 elsewhere"
        )
        more_form.addRow("Precision", self.precision_combo)
        self.disk_cache_check = QCheckBox("keep embeddings on disk")
        self.disk_cache_check.setToolTip(
            "Store image embeddings in $PASAM_CACHE_DIR/embeddings (default "
            "~/.cache/pasam/embeddings) so reopening an image or stack skips the encoder"
        )
        more_form.addRow(self.disk_cache_check)
        self.more = Collapsible("More options", more)
        form.addRow(self.more)

        self.load_button = QPushButton("Load model")
        form.addRow(self.load_button)
        self.model_label = PathLabel("No model loaded")
        form.addRow(self.model_label)

    def set_devices(self, devices: list[str]) -> None:
        current = self.device_combo.currentText()
        self.device_combo.clear()
        self.device_combo.addItems(devices)
        self.device_combo.setCurrentIndex(max(self.device_combo.findText(current), 0))

    def set_busy(self, busy: bool) -> None:
        self.load_button.setEnabled(not busy)


class ImagePanel(QGroupBox):
    """Which image layer, its axes and channel, and "Annotate this image"."""

    def __init__(self) -> None:
        super().__init__("Image")
        form = QFormLayout(self)
        self.image_combo = QComboBox()
        _compact(self.image_combo)
        form.addRow("Layer", self.image_combo)
        self.axes_label = PathLabel("")
        form.addRow("Axes", self.axes_label)
        self.channel_axis_combo = QComboBox()
        form.addRow("Channel axis", self.channel_axis_combo)
        self.channel_spin = QSpinBox()
        self.channel_spin.setRange(0, 0)
        self.channel_spin.setToolTip("Follows napari's slider for the channel axis (both ways)")
        form.addRow("Channel", self.channel_spin)
        self.start_button = QPushButton("Annotate this image")
        form.addRow(self.start_button)

    def set_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)


class ObjectPanel(QGroupBox):
    """Prompt polarity, accept / clear / undo, the overlap rule and the current object."""

    def __init__(self) -> None:
        super().__init__("Object")
        form = QFormLayout(self)
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        form.addRow(
            f"Next click ({TOGGLE_POLARITY_KEY})", _row(self.positive_radio, self.negative_radio)
        )
        self.accept_button = QPushButton(f"Accept ({ACCEPT_KEY})")
        self.clear_button = QPushButton(f"Clear ({CLEAR_KEY})")
        self.undo_button = QPushButton(f"Undo ({UNDO_KEY})")
        self.undo_button.setToolTip("Undo the last accept, propagation or paint stroke")
        form.addRow(_row(self.accept_button, self.clear_button, self.undo_button))
        self.overlap_combo = QComboBox()
        for key, text in OVERLAP_RULES.items():
            self.overlap_combo.addItem(text, key)
        self.overlap_combo.setCurrentIndex(self.overlap_combo.findData(OVERLAP_KEEP))
        _compact(self.overlap_combo)
        form.addRow("Overlaps", self.overlap_combo)
        self.object_label = QLabel("")
        self.object_label.setWordWrap(True)
        form.addRow(self.object_label)

    def overlap_rule(self) -> str:
        return str(self.overlap_combo.currentData())

    def set_busy(self, busy: bool) -> None:
        for b in (self.accept_button, self.undo_button):
            b.setEnabled(not busy)


class OverlayPanel(QGroupBox):
    """Uncertainty map and suggested clicks: shown or not, opacity."""

    def __init__(self) -> None:
        super().__init__("Uncertainty overlay")
        form = QFormLayout(self)
        self.show_uncertainty_check = QCheckBox("uncertainty map")
        self.show_uncertainty_check.setChecked(True)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        form.addRow(self.show_uncertainty_check, self.opacity_slider)
        self.show_suggestions_check = QCheckBox("suggested clicks (mined points)")
        self.show_suggestions_check.setChecked(True)
        form.addRow(self.show_suggestions_check)

    def set_busy(self, busy: bool) -> None:
        pass


class PropagationPanel(QGroupBox):
    """Stop rule and "Propagate"."""

    def __init__(self) -> None:
        super().__init__("3D propagation")
        form = QFormLayout(self)
        self.min_iou_spin = QDoubleSpinBox()
        self.min_iou_spin.setRange(-1.0, 1.0)
        self.min_iou_spin.setSingleStep(0.05)
        self.min_iou_spin.setDecimals(3)
        self.min_iou_spin.setSpecialValueText("off")
        self.min_iou_spin.setValue(0.6)
        form.addRow("Stop if IoU <", self.min_iou_spin)
        self.max_uncertainty_spin = QDoubleSpinBox()
        self.max_uncertainty_spin.setRange(0.0, 1.0)
        self.max_uncertainty_spin.setSingleStep(0.05)
        self.max_uncertainty_spin.setDecimals(3)
        self.max_uncertainty_spin.setValue(0.5)
        form.addRow("Stop if uncertainty >", self.max_uncertainty_spin)
        self.max_slices_spin = QSpinBox()
        self.max_slices_spin.setRange(0, 1_000_000)
        self.max_slices_spin.setSpecialValueText("whole stack")
        form.addRow("Slices each way", self.max_slices_spin)
        self.propagate_button = QPushButton(f"Propagate object ({PROPAGATE_KEY})")
        self.propagate_button.setToolTip(
            "Segment the current object (accepting it first) or the last accepted one "
            "through the neighbouring slices until the stop rule triggers"
        )
        form.addRow(self.propagate_button)

    def set_busy(self, busy: bool) -> None:
        self.propagate_button.setEnabled(not busy)


class FinetunePanel(QGroupBox):
    """What to adapt, steps and "Fine-tune"."""

    def __init__(self) -> None:
        super().__init__("Fine-tune")
        form = QFormLayout(self)
        self.adapt_combo = QComboBox()
        self.adapt_combo.setToolTip(
            "What to adapt on the frozen model: PA-SAM's adapter, a prompt learning module "
            "(PLM, arXiv 2403.09199; with the point matching loss PMM in training), both, or "
            "HQ-SAM's output token. The choices follow the loaded model."
        )
        _compact(self.adapt_combo)
        self.set_adapt_choices(None)
        form.addRow("Adapt", self.adapt_combo)
        self.finetune_steps_spin = QSpinBox()
        self.finetune_steps_spin.setRange(1, 100_000)
        self.finetune_steps_spin.setValue(100)
        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.setToolTip(
            "Train what 'Adapt' names on the objects accepted into the labels layer "
            "(every plane holding an object); the result replaces the model and is saved to "
            "$PASAM_MODEL_DIR (default $PASAM_CACHE_DIR/models, ~/.cache/pasam/models)"
        )
        form.addRow("Steps", _row(self.finetune_steps_spin, self.finetune_button))

    def set_adapt_choices(self, model) -> None:
        """The 'Adapt' choices for ``model`` (all of them before a model is loaded); keeps
        the current choice when it still fits."""
        from ._finetune import ADAPT_CHOICES, adapt_choices  # no torch at import

        current = self.adapt_combo.currentData()
        choices = ADAPT_CHOICES if model is None else adapt_choices(model)
        self.adapt_combo.clear()
        for value, label in choices:
            self.adapt_combo.addItem(label, value)
        values = [v for v, _ in choices]
        if current in values:
            self.adapt_combo.setCurrentIndex(values.index(current))

    def set_busy(self, busy: bool) -> None:
        self.finetune_button.setEnabled(not busy)


class SavePanel(QGroupBox):
    """Save the labels with their features, and the exports (COCO JSON as the core writes
    it, one CSV row per object and plane); more export actions can be added."""

    def __init__(self) -> None:
        super().__init__("Save and export")
        self.layout_ = QVBoxLayout(self)
        self.save_button = QPushButton("Save labels (TIFF + CSV)…")
        self.save_button.setToolTip(
            "Write the labels layer as a label TIFF and its features (area, predicted IoU, "
            "mean uncertainty, clicks, slice range) as CSV next to it"
        )
        self.layout_.addWidget(self.save_button)
        self.coco_button = QPushButton("COCO JSON…")
        self.coco_button.setToolTip(
            "Export the labels with their features as COCO instance segmentation (one COCO "
            "image per slice), as pasam segment-all and pasam convert write it"
        )
        self.coco_mode_combo = QComboBox()
        self.coco_mode_combo.addItem("RLE masks", "rle")
        self.coco_mode_combo.addItem("polygons", "polygon")
        self.csv_button = QPushButton("Objects CSV…")
        self.csv_button.setToolTip(
            "One row per object and slice: box, area, centroid and the features"
        )
        self.layout_.addLayout(_row(self.coco_button, self.coco_mode_combo))
        self.layout_.addWidget(self.csv_button)

    def add_action(self, button: QPushButton) -> None:
        self.layout_.addWidget(button)

    def set_busy(self, busy: bool) -> None:
        for b in (self.save_button, self.coco_button, self.csv_button):
            b.setEnabled(not busy)


class TaskPanel(QWidget):
    """Always visible under the panels: status text, progress bar and Cancel."""

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        self.status_label = PathLabel("")
        layout.addWidget(self.status_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop what runs: propagation after the current slice, fine-tuning after the "
            "current step (keeping what it trained), a model load or embedding at once "
            "(its result is dropped)"
        )
        layout.addLayout(_row(self.progress_bar, self.cancel_button))
        self.show_task(None)

    def show_task(self, task) -> None:
        """Show ``task`` (a :class:`~napari_pasam._workers.Task`) or nothing."""
        running = task is not None and task.long
        self.progress_bar.setVisible(running)
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running and not task.cancelled)
        if not running:
            return
        if task.total:
            self.progress_bar.setRange(0, task.total)
            self.progress_bar.setValue(min(task.done, task.total))
            self.progress_bar.setFormat(f"%v / %m · {task.title}")
        else:
            self.progress_bar.setRange(0, 0)  # busy indicator
            self.progress_bar.setFormat(task.title)
        self.status_label.set_full_text(task.title + "…")
