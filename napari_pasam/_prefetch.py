"""Prefetch in the dock: when the model is free after a plane of the annotated image was
embedded (and after a slice change or, for a tiled image, a pan or zoom), a background
worker embeds the current plane, its neighbouring slices or the tiles in view (see
:mod:`napari_pasam.prefetch`). It is no task of the dock's task runner, so clicks are never
queued behind it: every task the runner starts (a click's prediction first of all) stops
it, and so do the panel's checkbox, "Cancel" and closing the viewer. The image panel shows
its progress."""

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QLabel

from . import _layers as lay
from .jobs import message_of
from .prefetch import (
    PREFETCH_DEPTH,
    PREFETCH_TILES,
    PrefetchItem,
    PrefetchRun,
    neighbour_slices,
    prefetch_job,
    tiles_around,
)

#: a slice change or camera move waits this long (ms) before prefetching around it
PREFETCH_DELAY_MS = 300


class _State:
    """What outlives the dock: the running prefetch, so that closing the viewer stops it."""

    def __init__(self) -> None:
        self.run: PrefetchRun | None = None
        self.closed = False

    def cancel(self) -> None:
        if self.run is not None:
            self.run.stop.set()

    def close(self, hooks=()) -> None:
        self.closed = True
        self.cancel()
        for emitter, callback in hooks:
            emitter.disconnect(callback)


class PrefetchMixin:
    """Background prefetch for :class:`AnnotatorWidget` (call ``_init_prefetch`` once the
    panels and the task runner exist)."""

    def _init_prefetch(self) -> None:
        self.prefetch_depth = PREFETCH_DEPTH
        self.prefetch_tiles = PREFETCH_TILES
        self._prefetch = _State()
        self._prefetched: set = set()
        self.prefetch_check = QCheckBox("Prefetch neighbouring slices / tiles")
        self.prefetch_check.setToolTip(
            "While you work, embed the slices next to the current one (or, in a large "
            "tiled image, the tiles in view) in the background, so the next click does not "
            "wait for the encoder"
        )
        self.prefetch_check.setChecked(True)
        self.prefetch_label = QLabel("")
        self.prefetch_label.setWordWrap(True)
        form = self.image_panel.layout()
        form.addRow(self.prefetch_check)
        form.addRow(self.prefetch_label)
        self.prefetch_check.toggled.connect(self._on_prefetch_toggled)
        self.runner.listeners.append(self._prefetch_on_task)
        self.runner.idle_callbacks.append(self.schedule_prefetch)
        self._prefetch_timer = QTimer(self)
        self._prefetch_timer.setSingleShot(True)
        self._prefetch_timer.setInterval(PREFETCH_DELAY_MS)
        self._prefetch_timer.timeout.connect(self.schedule_prefetch)
        camera = self.viewer.camera.events
        hooks = [
            (self.viewer.dims.events.current_step, self._prefetch_on_dims),
            (camera.center, self._prefetch_soon),
            (camera.zoom, self._prefetch_soon),
        ]
        for emitter, callback in hooks:
            emitter.connect(callback)
        self.destroyed.connect(lambda *_, s=self._prefetch, h=hooks: s.close(h))

    @property
    def prefetch_run(self) -> PrefetchRun | None:
        """The latest prefetch (running or finished), or None."""
        return self._prefetch.run

    @property
    def prefetching(self) -> bool:
        run = self._prefetch.run
        return run is not None and not run.finished

    def cancel_prefetch(self) -> None:
        """Stop the prefetch after the item in progress."""
        if self.prefetching:
            self._prefetch.cancel()
            self._prefetch_status("Prefetch stopped")

    def _prefetch_status(self, text: str) -> None:
        if self._prefetch.closed:
            return
        try:
            self.prefetch_label.setText(text)
        except RuntimeError:  # the dock's widgets are deleted (the viewer was closed)
            self._prefetch.close()

    def _on_prefetch_toggled(self, on: bool) -> None:
        if on:
            self.schedule_prefetch()
        else:
            self._prefetch_timer.stop()
            self.cancel_prefetch()
            self._prefetch_status("")

    def _prefetch_on_task(self, task) -> None:
        if task is not None:  # the model is needed now: the prefetch gives way
            self._prefetch_timer.stop()
            self._prefetch.cancel()

    def _prefetch_on_dims(self, event=None) -> None:
        self._prefetch.cancel()  # it works around the slice that was left
        self._prefetch_soon()

    def _prefetch_soon(self, event=None) -> None:
        if self.prefetch_check.isChecked() and self.geometry is not None:
            self._prefetch_timer.start()

    def prefetch_items(self) -> list[PrefetchItem]:
        """What to embed now: the current plane, then its neighbouring slices, or for an
        image the model tiles, the tiles in view (nothing for zoomed models)."""
        seg = self.slot.segmenter
        if seg.zoom is not None:
            return []
        leading, channel = self._plane_position()
        plane = self.plane_ref(leading, channel)
        grid = seg.grid_for(self.geometry.plane_shape)
        if grid is not None:
            windows = tiles_around(grid, self._view_rect(), self.prefetch_tiles)
            return [PrefetchItem(plane, w) for w in windows]
        near = neighbour_slices(leading, self.geometry.num_slices, self.prefetch_depth)
        return [PrefetchItem(self.plane_ref(s, channel)) for s in (leading, *near)]

    def _view_rect(self) -> tuple[float, float, float, float]:
        """Rows and columns of the annotated image that napari shows (level-0 pixels, as of
        the canvas's last draw)."""
        layer = self.image_layer
        corners = np.asarray(layer.corner_pixels, float)
        if layer.multiscale:
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level])
        (r0, c0), (r1, c1) = corners[0, -2:], corners[1, -2:]
        return float(r0), float(r1) + 1, float(c0), float(c1) + 1

    def schedule_prefetch(self) -> None:
        """Start prefetching around the current plane when it helps: prefetch on, the model
        free and a plane of the annotated image embedded already."""
        s = self._prefetch
        if (
            s.closed
            or not self.prefetch_check.isChecked()
            or self.slot is None
            or self.image_layer is None
            or self.geometry is None
            or self.busy
        ):
            return
        held = self.slot.image_key
        if held is None or held[0] != lay.image_id(self.image_layer):
            return  # nothing of this image was embedded yet: wait for the first click
        if self.prefetching:  # a stopped run still finishes its item: plan after it
            self._prefetch_timer.start()
            return
        slot = self.slot
        try:
            planned = self.prefetch_items()
        except Exception as exc:  # noqa: BLE001 - prefetching is optional: say so, go on
            self._prefetch_status(f"Prefetch failed: {message_of(exc)}")
            return
        items = [it for it in planned if (id(slot), it.key) not in self._prefetched]
        if not items:
            return
        s.cancel()
        run = PrefetchRun(items)
        s.run = run
        worker = create_worker(prefetch_job, slot, run, _start_thread=False)
        worker.yielded.connect(lambda item, r=run, k=id(slot): self._on_prefetched(r, k, item))
        # a worker napari quits (the viewer closing) leaves the generator unfinished
        worker.finished.connect(lambda r=run: setattr(r, "finished", True))
        worker.finished.connect(lambda r=run: self._on_prefetch_done(r))
        self._prefetch_status(f"Prefetching 0/{run.total}")
        worker.start()

    def _on_prefetched(self, run: PrefetchRun, slot_id: int, item: PrefetchItem) -> None:
        if self._prefetch.closed:
            return
        self._prefetched.add((slot_id, item.key))
        if run is self._prefetch.run and not run.stop.is_set():
            self._prefetch_status(f"Prefetching {run.done}/{run.total}: {item.describe()}")

    def _on_prefetch_done(self, run: PrefetchRun) -> None:
        if self._prefetch.closed or run is not self._prefetch.run:
            return
        if run.error:
            self._prefetch_status(f"Prefetch failed: {run.error}")
        elif run.done == run.total:
            self._prefetch_status(f"Prefetched {run.total} ({run.encoded} encoded)")
        else:
            self._prefetch_status(f"Prefetch stopped after {run.done}/{run.total}")
