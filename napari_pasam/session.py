"""The annotator's state apart from any widget (no Qt, no torch): what the model panel shows,
the prompts and prediction of the object being annotated, the accepted objects and the
features table that always matches the labels, the overlap rule, and the hook for session
logs. Testable without a viewer (``tests/test_napari_session.py``).

Accepted objects live in a labels array (0 background, every other value one object). For
each object the session keeps what the labels cannot hold (:class:`ObjectRecord`): its
predicted IoU per plane, the clicks it took and the uncertainty map over its box at the time
it was accepted, so that area, slice range, predicted IoU and mean uncertainty can be
recomputed whenever the labels change (a later object painted over it, an undo, a brush
stroke). :meth:`ObjectTable.features` is that table.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: columns of the labels layer's ``features`` table (one row per object in the labels)
FEATURE_COLUMNS = (
    "index",
    "area",
    "predicted_iou",
    "mean_uncertainty",
    "clicks",
    "slice_start",
    "slice_stop",
)

#: extra columns of objects found by "Segment all" (after :data:`FEATURE_COLUMNS`, once the
#: labels hold such an object; NaN / False for the others)
AUTOMATIC_COLUMNS = ("stability_score", "boundary_uncertainty", "review_rank", "needs_review")

#: overlap rules: a new object paints only background pixels, or replaces what it covers
OVERLAP_KEEP = "keep"
OVERLAP_REPLACE = "replace"
OVERLAP_RULES = {
    OVERLAP_KEEP: "new object paints only background (accepted objects stay)",
    OVERLAP_REPLACE: "new object replaces the pixels it covers",
}


@dataclass
class ModelInfo:
    """What the model panel shows about the loaded model."""

    source: str
    variant: str
    has_adapter: bool
    guide_mode: str
    device: str
    untrained: bool
    zoomed: bool = False
    finetuned: str | None = None
    path: str | None = None
    #: the network in words (:meth:`pasam_plugins.origin.ModelOrigin.architecture`: says
    #: when there is no uncertainty map or mined points)
    architecture: str | None = None

    def summary(self) -> str:
        kind = self.architecture or (
            "SAM + PA-SAM adapter" if self.has_adapter else "SAM only (no adapter)"
        )
        text = f"{kind} · {self.variant} · guide mode: {self.guide_mode} · {self.device}"
        if self.zoomed:
            text += " · zoomed in on each object"
        return text

    def describe(self) -> str:
        """All lines: summary, untrained warning, fine-tuning, where the weights are."""
        lines = [self.summary()]
        if self.untrained:
            lines.append("untrained (random weights): masks are arbitrary")
        if self.finetuned:
            lines.append(self.finetuned)
            lines.append(f"saved to {self.path or self.source}")
        else:
            lines.append(self.source)
        return "\n".join(lines)


# ---------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompts:
    """Prompts on one plane in image pixels: ``points`` Nx2 (x, y), ``labels`` N (1/0),
    ``box`` (x0, y0, x1, y1) or None."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    @property
    def count(self) -> int:
        """Prompts given: points plus the box."""
        return len(self.points) + (self.box is not None)

    def extends(self, older: "Prompts") -> bool:
        """This prompt set is ``older`` plus more clicks (same box, same earlier points): a
        refinement, for which the object's last prediction is fed back to the model."""
        if older.empty or (older.box is None) != (self.box is None):
            return False
        if older.box is not None and not np.allclose(older.box, self.box):
            return False
        n = len(older.points)
        if len(self.points) <= n:
            return False
        return bool(
            np.allclose(self.points[:n], older.points)
            and np.array_equal(self.labels[:n], older.labels)
        )


@dataclass
class CurrentObject:
    """The object being annotated (not yet accepted).

    ``result`` is the core's :class:`~pasam_plugins.segment.ObjectMask` of the last
    prediction; ``plane_key`` says which plane (image, slice, channel) and model it belongs
    to, so that suggestions and refinements are never carried to another plane or model.
    """

    object_id: int
    leading: tuple[int, ...]
    channel: int | None
    plane_key: tuple
    prompts: Prompts
    result: Any
    clicks: int

    @property
    def mask(self) -> np.ndarray:
        return self.result.mask

    @property
    def iou(self) -> float:
        return float(self.result.score)

    @property
    def uncertainty(self) -> float | None:
        return self.result.mean_uncertainty

    def describe(self) -> str:
        """The panel's line: object id, clicks so far, predicted IoU, uncertainty, size."""
        clicks = f"{self.clicks} click" + ("s" if self.clicks != 1 else "")
        text = f"object {self.object_id} · {clicks} · predicted IoU {self.iou:.3f}"
        if self.uncertainty is not None:
            text += f" · mean uncertainty {self.uncertainty:.3f}"
        return text + f" · {int(np.count_nonzero(self.mask))} px"


# ---------------------------------------------------------------------------- session log
@dataclass(frozen=True)
class SessionEvent:
    """One thing the user did, for session logs (see :data:`SessionListener`).

    ``kind``: ``"prompt"`` (``point`` = (x, y, label) or ``box`` = (x0, y0, x1, y1)),
    ``"accept"`` (``area``) or ``"discard"``; ``predicted_iou`` after the prompt / of the
    accepted object; ``source``: ``"segment all"`` for an object found without prompts."""

    kind: str
    image: str
    object_id: int
    t: float
    point: tuple[float, float, int] | None = None
    box: tuple[float, float, float, float] | None = None
    predicted_iou: float | None = None
    area: int | None = None
    source: str | None = None


#: the hook for session logs: every listener gets every :class:`SessionEvent`
SessionListener = Callable[[SessionEvent], None]

#: environment variable naming a JSONL session log the annotator appends to (written by
#: ``pasam_plugins.session.SessionLog`` where that module exists)
SESSION_LOG_ENV = "PASAM_SESSION_LOG"


def log_listener(log: Any) -> SessionListener:
    """A listener writing events to a session log: ``pasam_plugins.session.SessionLog`` or
    anything with its ``point``, ``box``, ``accept`` and ``discard`` methods."""

    def listen(ev: SessionEvent) -> None:
        if ev.kind == "prompt" and ev.point is not None:
            x, y, label = ev.point
            log.point(ev.image, ev.object_id, x, y, label, predicted_iou=ev.predicted_iou)
        elif ev.kind == "prompt" and ev.box is not None:
            log.box(ev.image, ev.object_id, ev.box, predicted_iou=ev.predicted_iou)
        elif ev.kind == "accept":
            extra = {} if ev.source is None else {"source": ev.source}
            log.accept(
                ev.image, ev.object_id, predicted_iou=ev.predicted_iou, area=ev.area, **extra
            )
        elif ev.kind == "discard":
            log.discard(ev.image, ev.object_id)

    return listen


# ---------------------------------------------------------------------------- objects
@dataclass
class PlaneRecord:
    """An object on one plane as accepted: predicted IoU, and the uncertainty map over its
    bounding box (rows from ``y0``, columns from ``x0``; None without adapter)."""

    iou: float
    y0: int = 0
    x0: int = 0
    uncertainty: np.ndarray | None = None
    #: the mean uncertainty when no map is kept (objects found by "Segment all")
    mean_uncertainty: float | None = None


@dataclass
class ObjectRecord:
    """What the session knows about an accepted object beyond its pixels."""

    label_id: int
    clicks: int = 0
    planes: dict[tuple[int, ...], PlaneRecord] = field(default_factory=dict)
    #: values of :data:`AUTOMATIC_COLUMNS` for objects found by "Segment all"
    attributes: dict[str, Any] = field(default_factory=dict)


def paint_mask(plane: np.ndarray, mask: np.ndarray, rule: str) -> np.ndarray:
    """The pixels of ``mask`` a new object may paint on ``plane`` (a labels plane) under the
    overlap ``rule``: all of them (replace) or only background (keep)."""
    mask = np.asarray(mask, bool)
    if rule == OVERLAP_REPLACE:
        return mask
    if rule != OVERLAP_KEEP:
        raise ValueError(f"unknown overlap rule {rule!r}; known: {sorted(OVERLAP_RULES)}")
    return mask & (np.asarray(plane) == 0)


def _planes(labels: np.ndarray, leading_ndim: int) -> Iterable[tuple[int, ...]]:
    return [()] if leading_ndim == 0 else np.ndindex(*labels.shape[:leading_ndim])


class ObjectTable:
    """Accepted objects' records and the features table computed from a labels array.

    Pixel counts are cached per plane (a ``bincount`` of the plane); :meth:`invalidate`
    the planes a change touched (None: all), then :meth:`features` recomputes.
    """

    def __init__(self, leading_ndim: int) -> None:
        self.leading_ndim = leading_ndim
        self.records: dict[int, ObjectRecord] = {}
        self._counts: dict[tuple[int, ...], np.ndarray] = {}
        self._uncertainty: dict[int, tuple[float, int]] = {}

    # -- ids
    def next_id(self, labels: np.ndarray) -> int:
        """A label id no object has or had (undone objects keep their ids). Uses the cached
        per-plane counts, so it does not scan a whole stack on every new object."""
        top = max(self.records, default=0)
        counts = self._plane_counts(labels)
        in_labels = max((len(c) - 1 for c in counts.values()), default=0)
        return int(max(top, in_labels)) + 1

    # -- records
    def record(
        self,
        label_id: int,
        leading: tuple[int, ...],
        mask: np.ndarray,
        iou: float,
        uncertainty: np.ndarray | None,
        *,
        clicks: int | None = None,
    ) -> ObjectRecord:
        """Remember object ``label_id`` on plane ``leading`` (its predicted mask, IoU and the
        uncertainty map of the prediction)."""
        rec = self.records.setdefault(label_id, ObjectRecord(label_id))
        if clicks is not None:
            rec.clicks = int(clicks)
        crop = None
        y0 = x0 = 0
        ys, xs = np.nonzero(mask)
        if uncertainty is not None and len(ys):
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = np.asarray(uncertainty[y0:y1, x0:x1], np.float32).copy()
        rec.planes[tuple(leading)] = PlaneRecord(float(iou), y0, x0, crop)
        return rec

    def record_found(
        self,
        label_id: int,
        leading: tuple[int, ...],
        iou: float,
        mean_uncertainty: float | None,
        attributes: dict[str, Any],
    ) -> ObjectRecord:
        """Remember object ``label_id`` found by "Segment all" on plane ``leading``: its
        predicted IoU, mean uncertainty and :data:`AUTOMATIC_COLUMNS` values."""
        rec = self.records.setdefault(label_id, ObjectRecord(label_id))
        rec.planes[tuple(leading)] = PlaneRecord(float(iou), mean_uncertainty=mean_uncertainty)
        rec.attributes.update({k: attributes[k] for k in AUTOMATIC_COLUMNS if k in attributes})
        return rec

    # -- counts
    def invalidate(self, planes: Iterable[tuple[int, ...]] | None = None) -> None:
        """Forget cached pixel counts of ``planes`` (None: every plane) and the uncertainty
        sums of every object (they are recomputed from the records)."""
        if planes is None:
            self._counts.clear()
        else:
            for p in planes:
                self._counts.pop(tuple(p), None)
        self._uncertainty.clear()

    def _plane_counts(self, labels: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        for p in _planes(labels, self.leading_ndim):
            p = tuple(int(i) for i in p)
            if p not in self._counts:
                plane = np.asarray(labels[p] if p else labels)
                self._counts[p] = np.bincount(plane.ravel().astype(np.int64, copy=False))
        return self._counts

    def _mean_uncertainty(self, labels: np.ndarray, label_id: int) -> float:
        if label_id not in self._uncertainty:
            total, n = 0.0, 0
            rec = self.records.get(label_id)
            for leading, pr in rec.planes.items() if rec else []:
                if pr.uncertainty is None:
                    counts = self._counts.get(leading)
                    if pr.mean_uncertainty is not None and counts is not None:
                        inside = int(counts[label_id]) if label_id < len(counts) else 0
                        total += float(pr.mean_uncertainty) * inside
                        n += inside
                    continue
                h, w = pr.uncertainty.shape
                plane = labels[leading] if leading else labels
                inside = np.asarray(plane[pr.y0 : pr.y0 + h, pr.x0 : pr.x0 + w]) == label_id
                total += float(pr.uncertainty[inside].sum())
                n += int(inside.sum())
            self._uncertainty[label_id] = (total, n)
        total, n = self._uncertainty[label_id]
        return total / n if n else float("nan")

    def features(self, labels: np.ndarray) -> "pd.DataFrame":
        """One row per object present in ``labels`` (see :data:`FEATURE_COLUMNS`): area and
        slice range from the labels; predicted IoU (mean over the planes it was accepted or
        propagated on that still hold it) and mean uncertainty (over the pixels it still
        has) from its record; NaN and 0 clicks for objects painted by hand."""
        counts = self._plane_counts(labels)
        area: dict[int, int] = {}
        slices: dict[int, list[int]] = {}
        present: dict[int, set[tuple[int, ...]]] = {}
        for p, c in counts.items():
            ids = np.nonzero(c)[0]
            for i in ids[ids > 0]:
                i = int(i)
                area[i] = area.get(i, 0) + int(c[i])
                slices.setdefault(i, []).append(p[-1] if p else 0)
                present.setdefault(i, set()).add(p)
        rows = []
        found = False
        for i in sorted(area):
            rec = self.records.get(i)
            ious = [pr.iou for lp, pr in rec.planes.items() if lp in present[i]] if rec else []
            row = {
                "index": i,
                "area": area[i],
                "predicted_iou": float(np.mean(ious)) if ious else float("nan"),
                "mean_uncertainty": self._mean_uncertainty(labels, i),
                "clicks": rec.clicks if rec else 0,
                "slice_start": min(slices[i]),
                "slice_stop": max(slices[i]),
            }
            attrs = rec.attributes if rec else {}
            found = found or bool(attrs)
            for k in AUTOMATIC_COLUMNS:
                v = attrs.get(k)
                row[k] = bool(v) if k == "needs_review" else (float("nan") if v is None else v)
            rows.append(row)
        import pandas as pd  # not at import: the dock opens without it

        columns = list(FEATURE_COLUMNS) + (list(AUTOMATIC_COLUMNS) if found else [])
        table = pd.DataFrame(rows, columns=columns)
        types = {"index": int, "area": int, "clicks": int, "slice_start": int, "slice_stop": int}
        if found:
            types.update(
                {"stability_score": float, "boundary_uncertainty": float, "review_rank": float}
            )
            types["needs_review"] = bool
        return table.astype(types)


def empty_features() -> "pd.DataFrame":
    """The features table of a labels layer without objects."""
    return ObjectTable(0).features(np.zeros((1, 1), np.uint32))


def clock() -> float:
    """Seconds for session events (monotonic)."""
    return time.monotonic()
