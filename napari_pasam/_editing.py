"""Accepting objects into the labels layer, undo/redo, the features table, saving.

Writes go through the labels layer's own edit history (``Labels.data_setitem`` in one
``block_history`` group per accept or propagation), so ``Ctrl+Z`` undoes an accept, a
propagation and a brush stroke alike, in the order they happened; the features table is
recomputed from the labels after every change (:class:`~napari_pasam.session.ObjectTable`).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from .jobs import message_of
from .session import ObjectTable, paint_mask


@dataclass
class AcceptedObject:
    """The last accepted object (what "Propagate" starts from)."""

    label_id: int
    leading: tuple[int, ...]
    mask: np.ndarray
    iou: float
    uncertainty: float | None


def _history_planes(item, leading_ndim: int) -> list[tuple[int, ...]] | None:
    """Planes touched by a labels history item (a list of atoms), None when unknown."""
    if leading_ndim == 0:
        return [()]
    planes: set[tuple[int, ...]] = set()
    for atom in item or []:
        if isinstance(atom, tuple) and len(atom) == 3:  # (indices, old values, new values)
            idx = atom[0]
            lead = np.stack([np.asarray(i) for i in idx[:leading_ndim]], axis=1)
            planes.update(tuple(int(v) for v in row) for row in np.unique(lead, axis=0))
            continue
        key = getattr(atom, "slice_key", None)  # napari's masked paint atom: slices
        if key is None:
            return None
        ranges = []
        for sl in key[:leading_ndim]:
            if isinstance(sl, slice) and sl.start is not None and sl.stop is not None:
                ranges.append(range(sl.start, sl.stop))
            elif isinstance(sl, int | np.integer):
                ranges.append(range(int(sl), int(sl) + 1))
            else:
                return None
        planes.update(_product(ranges))
    return sorted(planes)


def _product(ranges: list[range]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for r in ranges:
        out = [(*p, v) for p in out for v in r]
    return out


class EditingMixin:
    """Accept, undo/redo, features and saving for :class:`AnnotatorWidget`."""

    def _init_editing(self) -> None:
        self.last_accepted: AcceptedObject | None = None
        self._writing = False
        self._due_planes: set | None = set()  # painted planes whose counts are due

    # ------------------------------------------------------------------ labels layer
    def connect_labels(self, labels) -> None:
        key = str(labels.unique_id)
        table = self._tables.get(key)
        if table is None or table.leading_ndim != self.geometry.leading_ndim:
            table = self._tables[key] = ObjectTable(self.geometry.leading_ndim)
        self.objects = table
        labels.events.paint.connect(self._on_labels_painted)
        labels.events.data.connect(self._on_labels_replaced)
        # the labels layer's own Ctrl+Z goes through the annotator (features follow)
        labels.bind_key("Control-Z", lambda layer=None: self.undo(), overwrite=True)
        labels.bind_key("Control-Shift-Z", lambda layer=None: self.redo(), overwrite=True)
        self.objects.invalidate()
        self.refresh_features()

    def disconnect_labels(self, labels) -> None:
        labels.events.paint.disconnect(self._on_labels_painted)
        labels.events.data.disconnect(self._on_labels_replaced)

    def _on_labels_painted(self, event) -> None:
        """A brush stroke, fill or ``data_setitem`` by someone else: features follow. napari
        announces an edit before it writes the pixels, so the table is recomputed on the
        next pass of the event loop (once for any number of edits)."""
        if self._writing or self.objects is None:
            return
        planes = _history_planes(getattr(event, "value", None), self.objects.leading_ndim)
        first = self._due_planes == set()
        if planes is None or self._due_planes is None:
            self._due_planes = None  # all planes
        else:
            self._due_planes.update(planes)
        if first:
            QTimer.singleShot(0, self._refresh_features_due)

    def _refresh_features_due(self) -> None:
        planes, self._due_planes = self._due_planes, set()
        if self.objects is not None:
            self.objects.invalidate(planes)
            self.refresh_features()

    def _on_labels_replaced(self, event=None) -> None:
        if self.objects is not None and not self._writing:
            self.objects.invalidate()
            self.refresh_features()

    def refresh_features(self) -> None:
        """Recompute the labels layer's features table from its data."""
        if self.layers is None or self.objects is None:
            return
        labels = self.layers.labels
        labels.features = self.objects.features(np.asarray(labels.data))
        self.sync_review()  # the "review first" rings follow the objects

    def write_labels(self, atoms: list) -> None:
        """Record ``atoms`` (already written ``(indices, old, new)``) as one undo step."""
        labels = self.layers.labels
        self._writing = True
        try:
            with labels.block_history():
                for atom in atoms:
                    labels._save_history(atom)
        finally:
            self._writing = False

    def paint_plane(
        self, leading: tuple[int, ...], mask: np.ndarray, label_id: int, rule: str | None = None
    ):
        """Paint ``label_id`` on plane ``leading`` where the overlap rule (default: the
        panel's) allows; returns the history atom (None when nothing could be painted) and
        the painted mask."""
        data = self.layers.labels.data
        plane = data[leading] if leading else data
        paint = paint_mask(plane, mask, rule or self.object_panel.overlap_rule())
        ys, xs = np.nonzero(paint)
        if len(ys) == 0:
            return None, paint
        index = (*(np.full(len(ys), v, np.intp) for v in leading), ys, xs)
        old = np.array(plane[ys, xs], copy=True)
        plane[ys, xs] = label_id
        return (index, old, data.dtype.type(label_id)), paint

    # ------------------------------------------------------------------ accept
    def accept(self) -> int | None:
        """Write the current object into the labels layer with a new id (only over
        background unless the overlap rule says replace); returns the id. Right after a
        click, it waits for that click's prediction."""
        if self.runner.task is not None and self.runner.task.kind in ("predict", "embed"):
            self._after_predict.append(self.accept)
            self.set_status("Accepting once the prediction in progress is done…")
            return None
        if self._pending_predict:
            self._after_predict.append(self.accept)
            return None
        if self.runner.long_running:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return None
        cur = self.current
        if cur is None or not cur.mask.any():
            show_warning("PA-SAM: nothing to accept; click a point or draw a box first")
            return None
        data = self.layers.labels.data
        # the id shown since the object's first click, unless it was taken meanwhile
        label_id = max(cur.object_id, self.objects.next_id(data))
        atom, painted = self.paint_plane(cur.leading, cur.mask, label_id)
        if atom is None:
            show_warning(
                "PA-SAM: the object lies entirely on accepted objects; to paint over them "
                "choose 'replaces' under Overlaps"
            )
            return None
        self.write_labels([atom])
        self.layers.labels.refresh()
        self.objects.record(
            label_id, cur.leading, cur.mask, cur.iou, cur.result.uncertainty, clicks=cur.clicks
        )
        self.objects.invalidate([cur.leading])
        self.refresh_features()
        area = int(painted.sum())
        self.last_accepted = AcceptedObject(
            label_id, cur.leading, painted, cur.iou, cur.uncertainty
        )
        self.emit("accept", object_id=label_id, predicted_iou=cur.iou, area=area)
        self.current = None  # accepted, not discarded
        self.clear_prompts()
        kept = "" if area == int(cur.mask.sum()) else f" ({area} of {int(cur.mask.sum())} px: "
        kept += "the rest lies on accepted objects)" if kept else ""
        self.set_status(f"Accepted object {label_id}{kept}")
        return label_id

    # ------------------------------------------------------------------ undo
    def _history(self, redo: bool) -> None:
        if self.layers is None:
            return
        if self.runner.long_running:
            show_info("PA-SAM: busy, try again when the current task has finished")
            return
        labels = self.layers.labels
        if not (labels._redo_history if redo else labels._undo_history):
            self.set_status(f"Nothing to {'redo' if redo else 'undo'}")
            return
        self._writing = True
        try:
            labels.redo() if redo else labels.undo()
        finally:
            self._writing = False
        self.objects.invalidate()
        self.refresh_features()
        self.set_status("Redone" if redo else "Undone: the labels and features are as before")

    def undo(self) -> None:
        """Undo the last accept, propagation or paint stroke in the labels layer (Ctrl+Z)."""
        self._history(False)

    def redo(self) -> None:
        """Redo what :meth:`undo` undid (Ctrl+Shift+Z)."""
        self._history(True)

    # ------------------------------------------------------------------ save
    def _save_dialog(self) -> None:
        if self.layers is None:
            show_error("PA-SAM: nothing to save yet: annotate an image first")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save the labels (TIFF) and their features (CSV)",
            f"{self.image_layer.name}_labels.tif",
            "Label TIFF (*.tif *.tiff)",
        )
        if path:
            self.save_labels(path)

    def save_labels(self, path) -> tuple[Path, Path] | None:
        """Write the labels layer as a label TIFF at ``path`` and its features (one row per
        object: area, predicted IoU, mean uncertainty, clicks, slice range) as CSV next to
        it (same name, ``.csv``). Returns both paths (None after an error message)."""
        if self.layers is None:
            show_error("PA-SAM: nothing to save yet: annotate an image first")
            return None
        import tifffile

        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff"):
            path = path.with_suffix(".tif")
        csv_path = path.with_suffix(".csv")
        labels = np.asarray(self.layers.labels.data)
        self.refresh_features()
        table = self.layers.labels.features.copy()
        table.insert(0, "image", self.image_layer.name)
        top = int(labels.max()) if labels.size else 0
        dtype = np.uint16 if top < 2**16 else np.uint32
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, labels.astype(dtype, copy=False), compression="zlib")
            table.to_csv(csv_path, index=False)
        except OSError as exc:
            show_error(f"PA-SAM: could not save the labels: {message_of(exc)}")
            return None
        self.set_status(f"Saved {len(table)} objects to {path} and {csv_path.name}")
        show_info(f"PA-SAM: saved {len(table)} objects to {path} (+ {csv_path.name})")
        return path, csv_path
