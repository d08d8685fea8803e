"""The "Segment all" panel of the annotator: every object of the current slice or of the
whole stack without a click, into the annotator's labels layer, the most uncertain objects
marked for review first; and the exports (COCO JSON, label TIFF, CSV).

The rules are the core's (:class:`pasam_plugins.automatic.AutomaticSegmenter`, the same as
``pasam segment-all`` and the Label Studio backend). Segmentation runs in a napari thread
worker with a progress bar (one step per embedding and decoder batch) and can be cancelled
between steps. Objects are written where the labels layer is still empty (accepted objects
are kept), with new ids and ``features`` rows: predicted IoU, mean and boundary
uncertainty, stability, review rank and ``needs_review``. The objects to review first get a
red ring in a "review first" points layer (with their id as text) and are listed in the
status line.
"""

from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
)

#: extra columns of the labels layer's features written by "Segment all"
AUTO_COLUMNS = ("boundary_uncertainty", "stability_score", "review_rank", "needs_review")
REVIEW_COLOR = "red"


def _segment_job(predictor, data, geometry, planes, channel, settings):
    """Generator for a thread worker: yields (done, total) per step, returns
    ``{leading: AutomaticResult}``."""
    from pasam_plugins.automatic import AutomaticSegmenter

    seg = AutomaticSegmenter(predictor, settings)
    results = {}
    for leading in planes:
        plane = geometry.plane(data, leading, channel)
        results[leading] = yield from seg.steps(plane)
    return results


class SegmentAllPanel(QGroupBox):
    """Controls of automatic segmentation and export, docked in the annotator."""

    def __init__(self, annotator) -> None:
        super().__init__("Segment all (no clicks) and export")
        self.annotator = annotator
        self.review_layer: Points | None = None
        self.last_results: dict[tuple[int, ...], Any] = {}
        self.last_ids: list[int] = []
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
        self.uncertainty_spin = QDoubleSpinBox()
        self.uncertainty_spin.setRange(0.0, 1.0)
        self.uncertainty_spin.setSingleStep(0.05)
        self.uncertainty_spin.setDecimals(3)
        self.uncertainty_spin.setSpecialValueText("off")
        self.uncertainty_spin.setValue(0.0)
        self.uncertainty_spin.setToolTip(
            "Drop objects whose boundary uncertainty is above this (PA-SAM adapter only)"
        )
        form.addRow("Max boundary uncertainty", self.uncertainty_spin)
        self.scope_combo = QComboBox()
        self.scope_combo.addItem("current slice", "slice")
        self.scope_combo.addItem("whole stack", "stack")
        form.addRow("Segment", self.scope_combo)
        row = QHBoxLayout()
        self.run_button = QPushButton("Segment all")
        self.run_button.clicked.connect(lambda: self.segment_all())
        row.addWidget(self.run_button)
        form.addRow(row)
        self.coco_mode_combo = QComboBox()
        self.coco_mode_combo.addItem("RLE", "rle")
        self.coco_mode_combo.addItem("polygons", "polygon")
        form.addRow("COCO masks", self.coco_mode_combo)
        row = QHBoxLayout()
        for text, kind in (("COCO…", "coco"), ("Label TIFF…", "tiff"), ("CSV…", "csv")):
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, k=kind: self.export(k))
            row.addWidget(button)
        form.addRow("Export labels", row)

    # ------------------------------------------------------------------ segment
    def settings(self):
        from pasam_plugins.automatic import AutomaticSettings

        u = self.uncertainty_spin.value()
        info = self.annotator.model_info
        adapter = bool(info and info.has_adapter)
        return AutomaticSettings(
            points_per_side=self.points_spin.value(),
            pred_iou_thresh=self.iou_spin.value(),
            stability_score_thresh=self.stability_spin.value(),
            max_boundary_uncertainty=u
            if (u > self.uncertainty_spin.minimum() and adapter)
            else None,
        )

    def segment_all(self, scope: str | None = None) -> None:
        """Segment every object of the current slice (``scope="slice"``) or of every slice
        (``"stack"``) in a worker; objects go into the labels layer."""
        a = self.annotator
        if a.busy:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        if a.predictor is None:
            show_error("PA-SAM: load a model first, then segment all objects")
            return
        if a.geometry is None or a.labels_layer is None:
            a.start()
            if a.geometry is None:
                return
        scope = scope or self.scope_combo.currentData()
        g = a.geometry
        if scope == "stack" and g.leading_ndim:
            planes = list(np.ndindex(*g.spatial_shape[: g.leading_ndim]))
        else:
            planes = [a.current_leading()]
        try:
            settings = self.settings()
        except ValueError as exc:
            show_error(f"PA-SAM: {exc}")
            return
        from pasam_plugins.automatic import AutomaticSegmenter

        per_plane = AutomaticSegmenter(a.predictor, settings).plan(*g.plane_shape)
        channel = a.channel_spin.value() if g.channel_axis is not None else None
        from ._jobs import _guarded

        worker = create_worker(
            _guarded,
            _segment_job,
            a.predictor,
            a._level0(a.image_layer),
            g,
            [tuple(int(i) for i in p) for p in planes],
            channel,
            settings,
            _progress={"total": per_plane * len(planes), "desc": "PA-SAM: segmenting all"},
        )
        worker.returned.connect(self._on_done)
        a._predictor_key = None  # the worker moves the predictor between windows
        a._start_worker(worker, f"Segmenting all objects on {len(planes)} plane(s)")

    def _on_done(self, results: Any) -> None:
        from pasam_plugins.automatic import instance_attributes

        from ._jobs import _Failure

        a = self.annotator
        if isinstance(results, _Failure):
            a._set_status("Segment all failed")
            show_error(f"PA-SAM: segmentation failed: {results.message}")
            return
        a._ensure_layer(a.labels_layer)
        data = a.labels_layer.data
        next_id = a._next_label_id()
        rows, review_pts, review_ids, ids = [], [], [], []
        for leading, result in results.items():
            plane = data[leading] if leading else data
            labels = result.label_image()
            attrs = instance_attributes(result)
            for i, inst in enumerate(result.instances):
                m = (labels == i + 1) & (plane == 0)  # accepted objects are kept
                if not m.any():
                    continue
                plane[m] = next_id
                at = attrs[i]
                z = leading[-1] if leading else 0
                rows.append(
                    {
                        "index": next_id,
                        "predicted_iou": inst.predicted_iou,
                        "mean_uncertainty": np.nan
                        if inst.mean_uncertainty is None
                        else inst.mean_uncertainty,
                        "slice_start": z,
                        "slice_stop": z,
                        "boundary_uncertainty": np.nan
                        if inst.boundary_uncertainty is None
                        else inst.boundary_uncertainty,
                        "stability_score": inst.stability_score,
                        "review_rank": at["review_rank"],
                        "needs_review": at["needs_review"],
                    }
                )
                if at["needs_review"]:
                    ys, xs = np.nonzero(m)
                    review_pts.append([*leading, float(ys.mean()), float(xs.mean())])
                    review_ids.append(next_id)
                ids.append(next_id)
                next_id += 1
        a.labels_layer.refresh()
        self._add_features(rows)
        self._show_review(review_pts, review_ids)
        self.last_results = results
        self.last_ids = ids
        msg = f"{len(ids)} objects found"
        if review_ids:
            msg += f"; review first: {', '.join(map(str, review_ids[:10]))}"
            msg += "…" if len(review_ids) > 10 else ""
        a._set_status(msg)
        if ids:
            show_info(f"PA-SAM: {msg}")
        else:
            show_warning("PA-SAM: no object passed the filters; lower the thresholds")

    def _add_features(self, rows: list[dict]) -> None:
        layer = self.annotator.labels_layer
        if not rows:
            return
        new = pd.DataFrame(rows)
        feats = layer.features
        table = new if len(feats) == 0 else pd.concat([feats, new], ignore_index=True)
        table = table.astype({"index": int, "slice_start": int, "slice_stop": int})
        layer.features = table.sort_values("index").reset_index(drop=True)

    def _show_review(self, points: list, ids: list[int]) -> None:
        a = self.annotator
        nd = len(a.geometry.spatial_shape)
        coords = np.asarray(points, float).reshape(-1, nd)
        if self.review_layer is not None and self.review_layer in a.viewer.layers:
            a.viewer.layers.remove(self.review_layer)  # a fresh layer: new points and texts
        scale, translate = a._spatial_transform()
        h, w = a.geometry.plane_shape
        self.review_layer = Points(
            coords,
            ndim=nd,
            name=f"{a.image_layer.name} PA-SAM review first",
            features=pd.DataFrame({"label": pd.Series(ids, dtype=int)}),
            text={"string": "{label}", "color": REVIEW_COLOR, "anchor": "upper_left"},
            face_color="transparent",
            border_color=REVIEW_COLOR,
            border_width=0.15,
            size=max(12.0, round(max(h, w) / 30)),
            scale=scale,
            translate=translate,
            metadata={"pasam_role": "review"},
        )
        a.viewer.add_layer(self.review_layer)
        if a.points_layer is not None and a.points_layer in a.viewer.layers:
            a.viewer.layers.selection.active = a.points_layer

    # ------------------------------------------------------------------ export
    def export(self, kind: str, path: str | None = None) -> str | None:
        """Export the labels layer: ``kind`` ``coco``, ``tiff`` or ``csv``; asks for a file
        name when ``path`` is None. Returns the path written (None when cancelled/failed)."""
        from ._export import export_coco, export_csv, export_label_tiff

        a = self.annotator
        if a.labels_layer is None or a.geometry is None:
            show_error("PA-SAM: nothing to export: annotate an image first")
            return None
        name = a.image_layer.name if a.image_layer is not None else "image"
        if path is None:
            filters = {"coco": "COCO JSON (*.json)", "tiff": "TIFF (*.tif)", "csv": "CSV (*.csv)"}
            suffix = {"coco": "_coco.json", "tiff": "_labels.tif", "csv": "_objects.csv"}[kind]
            path, _ = QFileDialog.getSaveFileName(
                self, "Export labels", name + suffix, filters[kind]
            )
            if not path:
                return None
        nd = a.geometry.leading_ndim
        try:
            if kind == "coco":
                coco = export_coco(
                    a.labels_layer,
                    path,
                    leading_ndim=nd,
                    image_name=name,
                    mode=self.coco_mode_combo.currentData(),
                )
                what = f"{len(coco['annotations'])} objects"
            elif kind == "tiff":
                export_label_tiff(a.labels_layer, path)
                what = "label image"
            elif kind == "csv":
                export_csv(a.labels_layer, path, leading_ndim=nd, image_name=name)
                what = "object table"
            else:
                raise ValueError(f"unknown export format {kind!r}")
        except (ValueError, OSError) as exc:
            show_error(f"PA-SAM: export failed: {exc}")
            return None
        show_info(f"PA-SAM: exported {what} to {path}")
        return str(path)
