"""Prefetch while the user works (no Qt): after a plane is embedded, the annotator encodes
what the user is likely to click next in a background worker, so that the encoder does not
run at the click: the neighbouring slices of a stack (z-1, z+1, z-2, ... up to a depth),
and for an image the core tiles, the tiles in view nearest its centre (bounded).

The embeddings go to the shared embedding cache (as a click's would), so a later click,
slice change or propagation finds them there. The job embeds with the slot's background
segmenter (:meth:`~napari_pasam.jobs.ModelSlot.background`: the same model and cache, its
own state), never with the slot's lock, so a click's prediction does not wait for it; any
task of the dock sets its stop event, checked before each item. Zoomed models are not
prefetched: they embed a window around each prompt, which cannot be known before.
"""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .jobs import ModelSlot, PlaneRef, message_of

#: slices on each side of the current one that are prefetched
PREFETCH_DEPTH = 2
#: tiles in view (of a tiled image) that are prefetched
PREFETCH_TILES = 6


@dataclass(frozen=True)
class PrefetchItem:
    """One plane to embed, or one tile window of a plane the core tiles."""

    plane: PlaneRef
    window: Any = None

    @property
    def key(self) -> tuple:
        w = self.window
        return (self.plane.key, None if w is None else (w.x0, w.y0, w.size))

    def describe(self) -> str:
        where = f"slice {self.plane.leading}" if self.plane.leading else "image"
        if self.window is not None:
            w = self.window
            return f"{where}, tile at x={int(w.x0)} y={int(w.y0)}"
        return where


@dataclass
class PrefetchRun:
    """One prefetch worker's items and progress (written by the worker thread)."""

    items: list[PrefetchItem]
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    encoded: int = 0
    finished: bool = False
    error: str | None = None

    @property
    def total(self) -> int:
        return len(self.items)


def neighbour_slices(leading: tuple[int, ...], num_slices: int, depth: int) -> list[tuple]:
    """The slices next to ``leading`` along the last slice axis, nearest first: z-1, z+1,
    z-2, z+2, ... up to ``depth`` on each side, inside ``0..num_slices-1``."""
    if not leading:
        return []
    z, out = int(leading[-1]), []
    for d in range(1, depth + 1):
        for s in (z - d, z + d):
            if 0 <= s < num_slices:
                out.append((*leading[:-1], s))
    return out


def tiles_around(grid, view: tuple[float, float, float, float], limit: int) -> list:
    """Tile windows of ``grid`` that overlap ``view`` (rows r0..r1, columns c0..c1 of the
    image, as napari shows them), nearest the view's centre first, at most ``limit``."""
    r0, r1, c0, c1 = view
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    found = []
    for i, j in grid:
        w = grid.window(i, j)
        if w.y0 < r1 and w.y0 + w.size > r0 and w.x0 < c1 and w.x0 + w.size > c0:
            centre = (w.y0 + w.size / 2 - cy, w.x0 + w.size / 2 - cx)
            found.append((float(np.hypot(*centre)), w))
    found.sort(key=lambda t: t[0])
    return [w for _, w in found[:limit]]


def prefetch_job(slot: ModelSlot, run: PrefetchRun) -> Iterator[PrefetchItem]:
    """Generator for a thread worker: embed ``run.items`` into the cache with the slot's
    background segmenter, stopping before the next item once ``run.stop`` is set. Yields
    each item done."""
    try:
        for item in run.items:
            if run.stop.is_set():
                return
            with slot.background_lock:
                seg = slot.background()  # made once, under the lock of its users
                runs = seg.predictor.encoder_runs
                if slot.background_key != item.plane.key:
                    slot.background_key = None
                    image, sample = item.plane.for_segmenter(seg)
                    seg.set_image(image, sample=sample)
                    slot.background_key = item.plane.key
                if item.window is not None:
                    seg.embed_window(item.window)
                encoded = seg.predictor.encoder_runs > runs
            run.done += 1
            run.encoded += int(encoded)
            yield item
    except Exception as exc:  # noqa: BLE001 - a prefetch failure only shows in the panel
        run.error = message_of(exc)
    finally:
        run.finished = True
