"""The PA-SAM annotator dock widget: panels in a scroll area, a task bar under them, and the
wiring between napari's layers, the session state and the workers.

Workflow: load a model (a shipped model, a checkpoint file, a registry entry or random
weights) -> pick an image layer and press "Annotate this image" -> click positive/negative
points (``N`` toggles) or draw a box -> the current object, the adapter's uncertainty map and
its mined points appear -> ``K`` / "Accept" writes the object into the labels layer (under
the overlap rule shown in the panel; ``Ctrl+Z`` undoes) -> in a stack, ``Shift+S`` /
"Propagate" segments it through the neighbouring slices -> "Segment all" finds every
object of the slice or stack without clicks (review-first ring layer) -> "Fine-tune" trains
the model's adapter on the accepted objects -> "Save labels" writes a label TIFF and the
features CSV, "COCO JSON" / "Objects CSV" export them as the core's exports do.

Where things are: Qt-free state in :mod:`napari_pasam.session`, work off the UI thread in
:mod:`napari_pasam.jobs` (every prediction through the core's ``Segmenter``), worker
plumbing in :mod:`napari_pasam._workers`, layers in :mod:`napari_pasam._layers` (one repaint
per click: :mod:`napari_pasam._canvas`), panels in :mod:`napari_pasam._panels`; the model
panel's logic, the image panel's logic (axes, slice and channel position),
accept/undo/save, propagation/fine-tuning, and "Segment all" with the exports in the
mixins :mod:`napari_pasam._model`, :mod:`napari_pasam._image`,
:mod:`napari_pasam._editing`, :mod:`napari_pasam._longtasks` and
:mod:`napari_pasam._automatic`. Every failure is a napari notification; nothing raises into
the event loop.
"""

import importlib
import os
import threading

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from . import _layers as lay
from ._automatic import AutomaticMixin, SegmentAllPanel
from ._canvas import PaintHold
from ._editing import EditingMixin
from ._image import AUTO, ImageMixin
from ._longtasks import LongTasksMixin
from ._model import ModelMixin
from ._panels import (
    HELP_TEXT,
    Collapsible,
    FinetunePanel,
    ImagePanel,
    ModelPanel,
    ObjectPanel,
    OverlayPanel,
    PanelScrollArea,
    PropagationPanel,
    SavePanel,
    TaskPanel,
)
from ._prefetch import PrefetchMixin
from ._workers import TaskRunner
from .jobs import (
    Failure,
    Prediction,
    message_of,
    predict_job,
    run_safely,
)
from .planes import PlaneGeometry, box_on_slice, points_on_slice
from .session import SESSION_LOG_ENV, CurrentObject, Prompts, SessionEvent, clock, log_listener

__all__ = ["AUTO", "AnnotatorWidget"]

#: modules "Annotate this image" needs that napari has not imported yet when the dock opens
#: (pandas for layer features, scikit-image's colour module for a labels layer's colours):
#: imported in a background thread when the dock opens, not on the UI thread later
WARM_IMPORTS = ("pandas", "skimage.color")


def _detach(runner: TaskRunner, hooks: list) -> None:
    runner.close()
    for emitter, callback in hooks:
        emitter.disconnect(callback)


def _warm_imports() -> None:
    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - imported again (and reported) where needed
            pass


class AnnotatorWidget(
    ModelMixin, ImageMixin, EditingMixin, LongTasksMixin, AutomaticMixin, PrefetchMixin, QWidget
):
    """PA-SAM annotation dock widget (see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = TaskRunner()
        self.slot = None
        self.image_layer: Image | None = None
        self.geometry: PlaneGeometry | None = None
        self.axes = None
        self.layers: lay.AnnotationLayers | None = None
        self.objects = None
        self._tables: dict = {}
        self.current: CurrentObject | None = None
        self.last_prediction: Prediction | None = None
        self.session_listeners: list = []
        self._clicks = 0
        self._pending_predict = False
        self._after_predict: list = []
        self._shown_plane: tuple | None = None
        self._suspend = False
        self._t0 = clock()
        # layer-list thumbnails of the per-click layers: once the clicks pause, not per click
        self._thumbnails = QTimer(self)
        self._thumbnails.setSingleShot(True)
        self._thumbnails.setInterval(300)
        self._thumbnails.timeout.connect(lambda: lay.refresh_thumbnails(self.layers))
        self._paint_hold = PaintHold(self)  # a click's point is drawn with its prediction
        self._init_editing()
        self._init_longtasks()
        self._init_automatic()
        self._build_ui()
        self.runner.listeners.append(self._on_task_change)
        self.runner.idle_callbacks.append(self._on_idle)
        self._init_prefetch()
        self._refresh_image_choices()
        hooks = [
            (self.viewer.layers.events.inserted, self._refresh_image_choices),
            (self.viewer.layers.events.removed, self._refresh_image_choices),
            (self.viewer.dims.events.current_step, self._on_dims_change),
        ]
        for emitter, callback in hooks:
            emitter.connect(callback)
        # when the dock is deleted (viewer closed), workers still running and the viewer's
        # events must not reach its deleted widgets
        self.destroyed.connect(lambda *_, r=self.runner, h=hooks: _detach(r, h))
        for key, fn in (
            ("k", self._accept_key),
            ("n", self._toggle_key),
            ("Shift-C", lambda viewer=None: self.clear_prompts()),
            ("Shift-S", lambda viewer=None: self.propagate()),
            ("Control-Z", lambda viewer=None: self.undo()),
            ("Control-Shift-Z", lambda viewer=None: self.redo()),
        ):
            self.viewer.bind_key(key, fn, overwrite=True)
        self._open_session_log()
        threading.Thread(target=_warm_imports, name="pasam-imports", daemon=True).start()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.model_panel = ModelPanel()
        self.image_panel = ImagePanel()
        self.object_panel = ObjectPanel()
        self.overlay_panel = OverlayPanel()
        self.propagation_panel = PropagationPanel()
        self.finetune_panel = FinetunePanel()
        self.segment_all_panel = SegmentAllPanel()
        self.save_panel = SavePanel()
        self.task_panel = TaskPanel()
        self.help_label = QLabel(HELP_TEXT)
        self.help_label.setWordWrap(True)
        self.help = Collapsible("Help and shortcuts", self.help_label)
        self.panels = [
            self.model_panel,
            self.image_panel,
            self.object_panel,
            self.overlay_panel,
            self.propagation_panel,
            self.segment_all_panel,
            self.finetune_panel,
            self.save_panel,
        ]
        content = QWidget()
        self._panel_layout = QVBoxLayout(content)
        self._panel_layout.setContentsMargins(2, 2, 2, 2)
        for panel in self.panels:
            self._panel_layout.addWidget(panel)
        self._panel_layout.addWidget(self.help)
        self._panel_layout.addStretch(1)
        self.scroll = PanelScrollArea(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.task_panel)
        self.setMinimumWidth(260)

        m = self.model_panel
        self._fill_sources()
        m.browse_button.clicked.connect(self._browse)
        m.browse_sam_button.clicked.connect(self._browse_sam)
        m.disk_cache_check.toggled.connect(self._on_disk_cache_toggled)
        m.load_button.clicked.connect(lambda: self.load_model())
        i = self.image_panel
        i.image_combo.currentIndexChanged.connect(self._on_image_choice)
        i.channel_axis_combo.currentIndexChanged.connect(self._on_axis_choice)
        i.channel_spin.valueChanged.connect(self._on_channel_spin)
        i.start_button.clicked.connect(lambda: self.start())
        o = self.object_panel
        o.positive_radio.toggled.connect(lambda on: self.set_point_polarity(on))
        o.accept_button.clicked.connect(lambda: self.accept())
        o.clear_button.clicked.connect(lambda: self.clear_prompts())
        o.undo_button.clicked.connect(lambda: self.undo())
        v = self.overlay_panel
        v.show_uncertainty_check.toggled.connect(self._apply_overlay_settings)
        v.show_suggestions_check.toggled.connect(self._apply_overlay_settings)
        v.opacity_slider.valueChanged.connect(self._apply_overlay_settings)
        self.propagation_panel.propagate_button.clicked.connect(lambda: self.propagate())
        self.finetune_panel.finetune_button.clicked.connect(lambda: self.finetune())
        self.segment_all_panel.run_button.clicked.connect(lambda: self.segment_all())
        self.save_panel.save_button.clicked.connect(self._save_dialog)
        self.save_panel.coco_button.clicked.connect(lambda: self.export_labels("coco"))
        self.save_panel.csv_button.clicked.connect(lambda: self.export_labels("csv"))
        self.task_panel.cancel_button.clicked.connect(lambda: self.cancel())
        self.set_status("Load a model, then pick an image and press 'Annotate this image'")

    def add_panel(self, panel: QWidget) -> None:
        """Add a panel (e.g. "Segment all", exports) under the others; it is disabled while
        a long task runs if it has ``set_busy(bool)``."""
        self.panels.append(panel)
        self._panel_layout.insertWidget(self._panel_layout.count() - 2, panel)

    def set_status(self, text: str) -> None:
        self.task_panel.status_label.set_full_text(text)

    def _on_task_change(self, task) -> None:
        long = self.runner.long_running
        for panel in self.panels:
            if hasattr(panel, "set_busy"):
                panel.set_busy(long)
        self.task_panel.show_task(task)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while any task runs (a click's prediction included) or one is queued."""
        return self.runner.busy or self._pending_predict

    @property
    def predictor(self):
        return None if self.slot is None else self.slot.predictor

    @property
    def model_info(self):
        return None if self.slot is None else self.slot.info

    def _on_idle(self) -> None:
        """The model is free: run the queued prediction, then what waited for it (an
        accept or propagation asked for right after a click)."""
        if self._pending_predict:
            self._pending_predict = False
            self.request_prediction()
            if self.runner.busy:
                return
        actions, self._after_predict = self._after_predict, []
        for fn in actions:
            fn()

    def emit(self, kind: str, leading=None, **fields) -> None:
        """Send a :class:`SessionEvent` to the session listeners (session logs); ``leading``:
        the plane (default: the current one)."""
        if not self.session_listeners or self.image_layer is None:
            return
        event = SessionEvent(kind, self.image_label(leading), t=clock() - self._t0, **fields)
        for fn in list(self.session_listeners):
            try:
                fn(event)
            except Exception as exc:  # noqa: BLE001 - a broken log must not stop annotating
                self.session_listeners.remove(fn)
                show_warning(f"PA-SAM: session log stopped: {message_of(exc)}")

    def image_label(self, leading=None) -> str:
        """The image (and plane) as session logs and the COCO export name it: ``cells``,
        ``cells[z=3]`` in a stack, ``cells[1,3]`` with more leading axes."""
        from ._export import plane_name

        name = self.image_layer.name if self.image_layer is not None else ""
        leading = self.current_leading() if leading is None else leading
        return plane_name(name, tuple(int(i) for i in leading))

    def _open_session_log(self) -> None:
        path = os.environ.get(SESSION_LOG_ENV)
        if not path:
            return
        try:
            from pasam_plugins.session import SessionLog  # the core's writer (issue 13)

            self.session_listeners.append(log_listener(SessionLog(path, tool="napari")))
        except Exception as exc:  # noqa: BLE001 - annotating works without a log
            show_warning(f"PA-SAM: no session log ({SESSION_LOG_ENV}={path}): {message_of(exc)}")

    # ------------------------------------------------------------------ prompts
    def set_point_polarity(self, positive: bool) -> None:
        """Whether the next clicked point is positive (foreground) or negative."""
        o = self.object_panel
        positive = bool(positive)
        if o.positive_radio.isChecked() != positive:
            o.positive_radio.blockSignals(True)
            o.positive_radio.setChecked(positive)
            o.negative_radio.setChecked(not positive)
            o.positive_radio.blockSignals(False)
        if self.layers is not None:
            self.layers.points.feature_defaults = {"positive": positive}

    def _toggle_key(self, viewer=None) -> None:
        self.set_point_polarity(not self.object_panel.positive_radio.isChecked())

    def _accept_key(self, viewer=None) -> None:
        self.accept()

    def _on_prompt_event(self, event) -> None:
        if self._suspend:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # 'adding', 'changing', 'removing': wait for the final event
            return
        if action.endswith("added"):
            self._clicks += 1
        self.request_prediction()

    def prompts(self, leading: tuple[int, ...] | None = None) -> Prompts:
        """The prompts on a slice (default: the current one)."""
        leading = self.current_leading() if leading is None else leading
        ls = self.layers
        xy, lab = points_on_slice(
            ls.points.data, ls.points.features["positive"].to_numpy(), leading
        )
        box = box_on_slice(ls.boxes.data, ls.boxes.shape_type, leading)
        return Prompts(xy, lab, box)

    def plane_key(self, leading, channel) -> tuple:
        data = lay.level0(self.image_layer)
        return (lay.image_id(self.image_layer), id(data), tuple(leading), channel)

    def request_prediction(self) -> None:
        """Predict the current object from the prompts on the current plane, in a worker
        (which embeds the plane first when the model does not hold it)."""
        if self.geometry is None or self.layers is None or self.slot is None:
            return
        if self.runner.busy:
            self._pending_predict = True
            return
        leading, channel = self._plane_position()
        prompts = self.prompts(leading)
        if prompts.empty:
            self.clear_current()
            return
        plane = self.plane_ref(leading, channel)
        key = plane.key
        cur = self.current
        previous = None
        if cur is not None and cur.plane_key == (id(self.slot), key):
            if prompts.extends(cur.prompts):
                previous = cur.result
        embed = self.slot.image_key != key
        worker = create_worker(
            run_safely,
            predict_job,
            self.slot,
            plane,
            prompts,
            previous,
            _progress={"desc": "PA-SAM: embedding"} if embed else False,
        )
        where = f" {leading}" if leading else ""
        if not embed:  # a short job: the click's repaint waits for its prediction
            self._paint_hold.hold()
        self.runner.start(
            worker,
            kind="embed" if embed else "predict",
            title=f"Embedding {self.image_layer.name}{where}" if embed else "Predicting",
            on_return=lambda r, slot=self.slot: self._on_predicted(r, slot),
            on_finish=self._paint_hold.release,
        )

    def _on_predicted(self, result, slot) -> None:
        if isinstance(result, Failure):
            self._after_predict.clear()
            if "positive point" in result.message:
                self.clear_current(keep_clicks=True)
                show_warning(f"PA-SAM: {result.message}")
            else:
                show_error(f"PA-SAM: prediction failed: {result.message}")
            return
        plane = result.plane
        if (
            self._pending_predict  # newer prompts are waiting: show their prediction instead
            or slot is not self.slot
            or self.image_layer is None
            or plane.key != self.plane_key(*self._plane_position())
        ):
            return
        cur = self.current
        same = cur is not None and cur.plane_key == (id(slot), plane.key)
        object_id = cur.object_id if same else self.objects.next_id(self.layers.labels.data)
        self.current = CurrentObject(
            object_id=object_id,
            leading=plane.leading,
            channel=plane.channel,
            plane_key=(id(slot), plane.key),
            prompts=result.prompts,
            result=result.result,
            clicks=max(self._clicks, result.prompts.count),
        )
        self.last_prediction = result
        self._show(result)
        self.object_panel.object_label.setText(self.current.describe())
        self._log_prompt(cur.prompts if same else None, result)

    def _show(self, result: Prediction) -> None:
        ls = self.layers
        lay.add_missing(self.viewer, ls)
        lay.set_array(ls.current, result.current)
        if result.uncertainty is not None:
            lay.set_array(ls.uncertainty, result.uncertainty)
        else:
            lay.clear_array(ls.uncertainty)
        lay.set_points(ls.suggestions, result.suggestions, result.suggestions_positive)
        self._thumbnails.start()

    def _log_prompt(self, before: Prompts | None, result: Prediction) -> None:
        p = result.prompts
        iou = float(result.result.score)
        oid = self.current.object_id
        if p.box is not None and (before is None or before.box is None):
            self.emit(
                "prompt", object_id=oid, box=tuple(float(v) for v in p.box), predicted_iou=iou
            )
        n = 0 if before is None else len(before.points)
        for (x, y), label in zip(p.points[n:], p.labels[n:], strict=True):
            self.emit(
                "prompt", object_id=oid, point=(float(x), float(y), int(label)), predicted_iou=iou
            )

    def suggestions(self) -> tuple[np.ndarray, np.ndarray]:
        """The suggested next clicks on display: Nx2 (y, x) and N bool (positive)."""
        layer = None if self.layers is None else self.layers.suggestions
        if layer is None or len(layer.data) == 0:
            return np.zeros((0, 2)), np.zeros(0, bool)
        return np.asarray(layer.data), layer.features["positive"].to_numpy(bool)

    def clear_current(self, *, keep_clicks: bool = False) -> None:
        """Forget the current (unaccepted) prediction and blank its overlays: the current
        object, the uncertainty map and the suggested clicks."""
        if self.current is not None and not keep_clicks:
            self.emit("discard", object_id=self.current.object_id)
        self.current = None
        if not keep_clicks:
            self._clicks = 0
        self.object_panel.object_label.setText("")
        if self.layers is None:
            return
        lay.clear_array(self.layers.current)
        lay.clear_array(self.layers.uncertainty)
        lay.set_points(self.layers.suggestions, np.zeros((0, 2)), np.zeros(0, bool))
        self._thumbnails.start()

    def clear_prompts(self) -> None:
        """Remove the prompt points and boxes and the current prediction (Shift+C)."""
        if self.layers is None:
            return
        self._suspend = True
        try:
            points, boxes = self.layers.points, self.layers.boxes
            if len(points.data):
                points.data = np.zeros((0, points.ndim))
            if len(boxes.data):
                boxes.selected_data = set(range(len(boxes.data)))
                boxes.remove_selected()
        finally:
            self._suspend = False
        self._pending_predict = False
        self.clear_current()
