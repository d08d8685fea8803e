"""The "Segment all" panel and its logic: every object of the current slice or of the whole
stack without a click, into the annotator's labels layer, the most uncertain objects marked
for review first; and the exports (COCO JSON, per-object CSV, label TIFF) of the labels.

The rules are the core's (:class:`pasam_plugins.automatic.AutomaticSegmenter`, the same as
``pasam segment-all`` and the Label Studio backend), run by
:func:`napari_pasam.jobs.segment_all_job` in a worker: progress in the dock, Cancel stops
after the step in progress and keeps the objects found so far. Objects are written where
the labels layer is still empty (accepted objects are kept, whatever the overlap rule for
clicked objects says), with new ids, as one undo step (``Ctrl+Z``). The features table gains
stability, boundary uncertainty, review rank and ``needs_review`` for them. The objects to
review first get a red ring in a "review first" points layer (with their id as text) and
are listed in the status line.
"""

from dataclasses import replace
from typing import Any

import numpy as np
from napari.layers import Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
)

from . import _layers as lay
from .jobs import Failure, guarded, message_of, segment_all_job, segment_all_steps
from .session import OVERLAP_KEEP

REVIEW_COLOR = "red"
#: export formats of :meth:`AutomaticMixin.export_labels`
EXPORT_KINDS = ("coco", "csv", "tiff")


class SegmentAllPanel(QGroupBox):
    """Settings of automatic segmentation, scope and "Segment all"."""

    def __init__(self) -> None:
        super().__init__("Segment all (no clicks)")
        form = QFormLayout(self)
        self.points_spin = QSpinBox()
        self.points_spin.setRange(1, 128)
        self.points_spin.setValue(32)
        form.addRow("Points per side", self.points_spin)
        self.iou_spin = QDoubleSpinBox()
        self.iou_spin.setRange(0.0, 1.0)
        self.iou_spin.setSingleStep(0.02)
        self.iou_spin.setValue(0.88)
        form.addRow("Min predicted IoU", self.iou_spin)
        self.stability_spin = QDoubleSpinBox()
        self.stability_spin.setRange(0.0, 1.0)
        self.stability_spin.setSingleStep(0.01)
        self.stability_spin.setValue(0.95)
        form.addRow("Min stability", self.stability_spin)
        self.agreement_spin = QDoubleSpinBox()
        self.agreement_spin.setRange(0.0, 1.0)
        self.agreement_spin.setSingleStep(0.05)
        self.agreement_spin.setValue(0.0)
        self.agreement_spin.setToolTip(
            "Zoomed models (box proposals): keep masks whose bounding box overlaps the "
            "proposal box by at least this IoU"
        )
        form.addRow("Min box agreement", self.agreement_spin)
        self.uncertainty_spin = QDoubleSpinBox()
        self.uncertainty_spin.setRange(0.0, 1.0)
        self.uncertainty_spin.setSingleStep(0.05)
        self.uncertainty_spin.setDecimals(3)
        self.uncertainty_spin.setSpecialValueText("off")
        self.uncertainty_spin.setValue(0.0)
        self.uncertainty_spin.setToolTip(
            "Drop objects whose boundary uncertainty is above this (PA-SAM adapter only)"
        )
        form.addRow("Max boundary uncert.", self.uncertainty_spin)
        self.scope_combo = QComboBox()
        self.scope_combo.addItem("current slice", "slice")
        self.scope_combo.addItem("whole stack", "stack")
        form.addRow("Segment", self.scope_combo)
        self.run_button = QPushButton("Segment all")
        self.run_button.setToolTip(
            "Find every object without clicks (the rules of pasam segment-all) and write them "
            "where the labels layer is empty; the most uncertain ones are ringed for review"
        )
        form.addRow(self.run_button)

    def use_defaults(self, settings) -> None:
        """Show a model's default thresholds (:func:`pasam_plugins.automatic.
        default_settings`: zoomed models have their own) in the spin boxes."""
        self.points_spin.setValue(settings.points_per_side)
        self.iou_spin.setValue(settings.pred_iou_thresh)
        self.stability_spin.setValue(settings.stability_score_thresh)
        self.agreement_spin.setValue(settings.min_box_agreement)

    def settings(self, has_adapter: bool) -> dict:
        """Keyword arguments of :func:`pasam_plugins.automatic.default_settings` (the
        model's defaults with these values)."""
        u = self.uncertainty_spin.value()
        return {
            "points_per_side": self.points_spin.value(),
            "pred_iou_thresh": self.iou_spin.value(),
            "stability_score_thresh": self.stability_spin.value(),
            "min_box_agreement": self.agreement_spin.value(),
            "max_boundary_uncertainty": u
            if (u > self.uncertainty_spin.minimum() and has_adapter)
            else None,
        }

    def set_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)


class AutomaticMixin:
    """The "Segment all" and export logic of :class:`AnnotatorWidget`."""

    def _init_automatic(self) -> None:
        self.review_layer: Points | None = None
        self._review_all: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 2)), np.zeros(0, int))
        self.last_segment_all: dict[tuple[int, ...], Any] = {}
        self.last_segment_all_ids: list[int] = []
        self._segment_all_stop = None

    # ------------------------------------------------------------------ segment
    def segment_all(self, scope: str | None = None) -> None:
        """Segment every object of the current slice (``scope="slice"``) or of every slice
        (``"stack"``; default: the panel's choice) in a worker; objects go into the labels
        layer where it is empty."""
        import threading

        if self.runner.busy or self._pending_predict:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if self.slot is None:
            show_error("PA-SAM: load a model first, then segment all objects")
            return
        if self.geometry is None or self.layers is None:
            self.start()
            if self.geometry is None:
                return
        scope = scope or self.segment_all_panel.scope_combo.currentData()
        g = self.geometry
        if scope == "stack" and g.leading_ndim:
            shape = g.spatial_shape[: g.leading_ndim]
            planes = [tuple(int(i) for i in p) for p in np.ndindex(*shape)]
        else:
            planes = [self.current_leading()]
        settings = self.segment_all_panel.settings(bool(self.model_info.has_adapter))
        try:
            per_plane = segment_all_steps(self.slot, settings, g.plane_shape)
        except ValueError as exc:
            show_error(f"PA-SAM: {message_of(exc)}")
            return
        self.clear_prompts()  # the current object belonged to the clicks
        total = max(per_plane * len(planes), 1)
        self._segment_all_stop = threading.Event()
        worker = create_worker(
            guarded,
            segment_all_job,
            self.slot,
            lay.level0(self.image_layer),
            g,
            planes,
            self.current_channel(),
            settings,
            self._segment_all_stop,
            _progress={"total": total, "desc": "PA-SAM: segmenting all"},
        )
        layers = self.layers
        self.runner.start(
            worker,
            kind="segment_all",
            title=f"Segmenting all objects on {len(planes)} plane(s)",
            total=total,
            stop=self._segment_all_stop.set,
            on_return=lambda r, ls=layers: self._on_segment_all_done(r, ls),
        )

    def _on_segment_all_done(self, results: Any, layers) -> None:
        from pasam_plugins.automatic import instance_attributes

        cancelled = self._segment_all_stop is not None and self._segment_all_stop.is_set()
        self._segment_all_stop = None
        if isinstance(results, Failure):
            self.set_status("Segment all failed")
            show_error(f"PA-SAM: segmentation failed: {results.message}")
            return
        if layers is not self.layers:  # another image is annotated now
            return
        data = self.layers.labels.data
        self.objects.invalidate()  # pixels painted meanwhile count for the next ids
        next_id = self.objects.next_id(data)
        atoms, review_pts, review_ids, ids = [], [], [], []
        for leading, result in results.items():
            labels = result.label_image()
            kept = []  # (instance, atom, painted pixels, object id) of the objects painted
            for i, inst in enumerate(result.instances):
                atom, painted = self.paint_plane(
                    leading, labels == i + 1, next_id, rule=OVERLAP_KEEP
                )
                if atom is None:  # the plane holds it already (e.g. painted by hand)
                    continue
                kept.append((inst, atom, painted, next_id))
                next_id += 1
            # review ranks and flags among the objects painted: one left out must not take
            # its plane's review flag
            attrs = instance_attributes(replace(result, instances=[k[0] for k in kept]))
            for (inst, atom, painted, object_id), attr in zip(kept, attrs, strict=True):
                atoms.append(atom)
                self.emit(
                    "accept",
                    leading,
                    object_id=object_id,
                    predicted_iou=float(inst.predicted_iou),
                    area=int(np.count_nonzero(painted)),
                    source="segment all",
                )
                self.objects.record_found(
                    object_id, leading, inst.predicted_iou, inst.mean_uncertainty, attr
                )
                if attr["needs_review"]:
                    ys, xs = np.nonzero(painted)
                    review_pts.append([*leading, float(ys.mean()), float(xs.mean())])
                    review_ids.append(object_id)
                ids.append(object_id)
        if atoms:
            self.write_labels(atoms)  # one undo step for the whole run
        self.layers.labels.refresh()
        self.objects.invalidate(list(results))
        self.refresh_features()
        self._show_review(review_pts, review_ids)
        self.last_segment_all = results
        self.last_segment_all_ids = ids
        msg = f"{len(ids)} objects found" + (" (cancelled)" if cancelled else "")
        if review_ids:
            msg += f"; review first: {', '.join(map(str, review_ids[:10]))}"
            msg += "…" if len(review_ids) > 10 else ""
        self.set_status(msg)
        if ids or cancelled:
            show_info(f"PA-SAM: {msg}")
        else:
            show_warning("PA-SAM: no object passed the filters; lower the thresholds")

    def sync_review(self) -> None:
        """Ring only the objects that are still in the labels layer: an undone "Segment all"
        (or an object painted over) takes its ring with it, a redo brings it back."""
        layer = self.review_layer
        if layer is None or self.layers is None or layer not in self.viewer.layers:
            return
        coords, ids = self._review_all
        present = set(self.layers.labels.features["index"].astype(int))
        keep = np.fromiter((i in present for i in ids), bool, len(ids))
        if len(layer.data) == int(keep.sum()) and np.array_equal(
            layer.features["label"].to_numpy(int), ids[keep]
        ):
            return
        layer.data = coords[keep]
        layer.features = {"label": ids[keep]}

    def _show_review(self, points: list, ids: list[int]) -> None:
        import pandas as pd

        nd = len(self.geometry.spatial_shape)
        coords = np.asarray(points, float).reshape(-1, nd)
        image = self.image_layer
        for layer in list(self.viewer.layers):  # a fresh layer: new points and texts
            meta = layer.metadata
            if meta.get(lay.ROLE) == "review" and meta.get(lay.IMAGE) == lay.image_id(image):
                self.viewer.layers.remove(layer)
        labels = self.layers.labels
        h, w = self.geometry.plane_shape
        self.review_layer = Points(
            coords,
            ndim=nd,
            name=f"{image.name} PA-SAM review first",
            features=pd.DataFrame({"label": pd.Series(ids, dtype=int)}),
            text={"string": "{label}", "color": REVIEW_COLOR, "anchor": "upper_left"},
            face_color="transparent",
            border_color=REVIEW_COLOR,
            border_width=0.15,
            size=max(12.0, round(max(h, w) / 30)),
            scale=list(labels.scale),
            translate=list(labels.translate),
            metadata={lay.ROLE: "review", lay.IMAGE: lay.image_id(image)},
        )
        self.viewer.add_layer(self.review_layer)
        self._review_all = (coords, np.asarray(ids, int))
        if self.layers.points in self.viewer.layers:
            self.viewer.layers.selection.active = self.layers.points

    # ------------------------------------------------------------------ export
    def _export_dialog(self, kind: str) -> None:
        self.export_labels(kind)

    def export_labels(self, kind: str, path: str | None = None) -> str | None:
        """Export the labels layer with its features: ``kind`` ``coco`` (COCO JSON, RLE or
        polygons as chosen in the Save panel; one COCO image per slice), ``csv`` (one row
        per object and plane: geometry plus features) or ``tiff`` (label TIFF); asks for a
        file name when ``path`` is None. Returns the path written (None when cancelled or
        failed)."""
        from ._export import export_coco, export_csv, export_label_tiff

        if self.layers is None or self.geometry is None:
            show_error("PA-SAM: nothing to export: annotate an image first")
            return None
        if kind not in EXPORT_KINDS:
            show_error(f"PA-SAM: unknown export format {kind!r}; known: {EXPORT_KINDS}")
            return None
        name = self.image_layer.name
        if path is None:
            filters = {"coco": "COCO JSON (*.json)", "tiff": "TIFF (*.tif)", "csv": "CSV (*.csv)"}
            suffix = {"coco": "_coco.json", "tiff": "_labels.tif", "csv": "_objects.csv"}[kind]
            path, _ = QFileDialog.getSaveFileName(
                self, "Export labels", name + suffix, filters[kind]
            )
            if not path:
                return None
        self.refresh_features()
        labels = self.layers.labels
        nd = self.geometry.leading_ndim
        try:
            if kind == "coco":
                mode = self.save_panel.coco_mode_combo.currentData()
                coco = export_coco(labels, path, leading_ndim=nd, image_name=name, mode=mode)
                what = f"{len(coco['annotations'])} objects"
            elif kind == "tiff":
                export_label_tiff(labels, path)
                what = "label image"
            else:
                export_csv(labels, path, leading_ndim=nd, image_name=name)
                what = "object table"
        except (ValueError, OSError) as exc:
            show_error(f"PA-SAM: export failed: {message_of(exc)}")
            return None
        self.set_status(f"Exported {what} to {path}")
        show_info(f"PA-SAM: exported {what} to {path}")
        return str(path)
