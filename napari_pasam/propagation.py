"""Slice-to-slice propagation of an accepted object through a stack (no Qt, no torch).

From an object on slice ``z``, segment ``z+1, z+2, ...`` (then ``z-1, z-2, ...``), each time
prompting with the previous slice's mask: its bounding box and a few points well inside it.
A direction stops at the first slice whose prediction fails the :class:`PropagationRule`
(predicted IoU below ``min_iou``, mean uncertainty above ``max_uncertainty``, empty mask),
at the end of the stack, or after ``max_slices`` slices. The failing slice is not kept.

The model call is injected (``segment``), so the rule is testable with any function; the
napari annotator runs the same generator in a thread worker (one yield per slice: progress and
cancellation) with :meth:`pasam_plugins.segment.Segmenter.segment` as the model call
(:func:`napari_pasam.jobs.propagation_job`), so every slice is segmented by the same rules as
a click.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

#: why a direction ended
STOP_EDGE = "end of stack"
STOP_IOU = "predicted IoU below threshold"
STOP_UNCERTAINTY = "mean uncertainty above threshold"
STOP_EMPTY = "empty mask"
STOP_LIMIT = "slice limit reached"


@dataclass(frozen=True)
class PropagationRule:
    """When to stop propagating.

    Attributes:
      min_iou (float or None): stop when the predicted IoU is below this (None: never).
      max_uncertainty (float or None): stop when the object's mean uncertainty is above this
        (None: never; ignored for models without adapter).
      max_slices (int or None): at most this many slices in each direction (None: whole stack).
    """

    min_iou: float | None = 0.5
    max_uncertainty: float | None = 0.5
    max_slices: int | None = None

    def check(self, result: "SliceResult") -> str | None:
        """The reason to stop at ``result``, or None to keep it and go on."""
        if not result.mask.any():
            return STOP_EMPTY
        if self.min_iou is not None and not result.iou >= self.min_iou:
            return STOP_IOU
        if (
            self.max_uncertainty is not None
            and result.uncertainty is not None
            and not result.uncertainty <= self.max_uncertainty
        ):
            return STOP_UNCERTAINTY
        return None


@dataclass(frozen=True)
class SlicePrompt:
    """A prompt in slice pixels: ``box`` (x0, y0, x1, y1), ``points`` Nx2 (x, y), ``labels`` N."""

    box: np.ndarray
    points: np.ndarray
    labels: np.ndarray


@dataclass
class SliceResult:
    """One slice's prediction: ``mask`` HxW bool, predicted ``iou``, mean ``uncertainty``
    inside the mask (None without adapter or for an empty mask), and the core's
    :class:`~pasam_plugins.segment.ObjectMask` it came from (``result``, optional)."""

    mask: np.ndarray
    iou: float
    uncertainty: float | None
    result: Any = None


@dataclass
class PropagationStep:
    """One visited slice. ``stop`` is None when the slice was kept, else the reason the
    direction ended there (the slice is then not kept)."""

    slice_index: int
    direction: int
    result: SliceResult
    stop: str | None = None

    @property
    def kept(self) -> bool:
        return self.stop is None


@dataclass
class PropagationSummary:
    """Kept slices and why each direction ended (``{+1: reason, -1: reason}``)."""

    kept: list[int] = field(default_factory=list)
    stops: dict[int, str] = field(default_factory=dict)
    cancelled: bool = False


def prompt_from_mask(mask: np.ndarray, *, num_points: int = 3) -> SlicePrompt:
    """The prompt a neighbouring slice gets from ``mask`` (HxW bool): its bounding box and up
    to ``num_points`` positive points well inside it (the deepest pixel of the distance
    transform, then farthest-point picks among pixels at least half as deep).

    Raises ``ValueError`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("cannot build a prompt from an empty mask")
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    padded = np.pad(mask, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    deep = dist >= 0.5 * dist.max()
    cy, cx = np.nonzero(deep)
    cand = np.column_stack([cx, cy]).astype(np.float32)
    first = int(np.argmax(dist[cy, cx]))
    chosen = [first]
    d = np.linalg.norm(cand - cand[first], axis=1)
    while len(chosen) < min(num_points, len(cand)):
        nxt = int(np.argmax(d))
        if d[nxt] <= 0:
            break
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(cand - cand[nxt], axis=1))
    points = cand[chosen]
    return SlicePrompt(box=box, points=points, labels=np.ones(len(points), dtype=np.int64))


def propagate(
    segment: Callable[[int, SlicePrompt], SliceResult],
    *,
    start_slice: int,
    start_mask: np.ndarray,
    num_slices: int,
    rule: PropagationRule,
    directions: tuple[int, ...] = (1, -1),
    num_points: int = 3,
    summary: PropagationSummary | None = None,
) -> Iterator[PropagationStep]:
    """Yield one :class:`PropagationStep` per visited slice (see the module docstring).

    Arguments:
      segment: ``segment(slice_index, prompt) -> SliceResult`` (the model call).
      start_slice (int): index of the accepted object's slice.
      start_mask (np.ndarray): HxW bool mask of the accepted object.
      num_slices (int): number of slices in the stack.
      rule (PropagationRule): stop thresholds.
      directions (tuple): +1 (increasing index) and/or -1.
      summary (PropagationSummary): filled in as the generator runs (kept slices, stop reasons).
    """
    if not 0 <= start_slice < num_slices:
        raise ValueError(f"start slice {start_slice} is outside the stack (0..{num_slices - 1})")
    if not np.asarray(start_mask).any():
        raise ValueError("the object to propagate has an empty mask")
    summary = summary if summary is not None else PropagationSummary()
    for direction in directions:
        prev = np.asarray(start_mask, dtype=bool)
        z = start_slice
        count = 0
        while True:
            z += direction
            if not 0 <= z < num_slices:
                summary.stops[direction] = STOP_EDGE
                break
            if rule.max_slices is not None and count >= rule.max_slices:
                summary.stops[direction] = STOP_LIMIT
                break
            result = segment(z, prompt_from_mask(prev, num_points=num_points))
            stop = rule.check(result)
            step = PropagationStep(slice_index=z, direction=direction, result=result, stop=stop)
            if stop is None:
                summary.kept.append(z)
            else:
                summary.stops[direction] = stop
            yield step
            if stop is not None:
                break
            prev = result.mask
            count += 1
