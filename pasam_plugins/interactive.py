"""Simulated annotators: how many clicks an object takes, and whether PA-SAM's suggested
next clicks help.

The protocol is RITM's (Sofiiuk et al. 2022, ``isegm/inference/clicker.py`` and
``evaluation.py``), also used by SimpleClick, SAM and micro-sam evaluations:

- **oracle click** (:func:`error_click`): the false-negative region ``gt & ~pred`` and the
  false-positive region ``pred & ~gt`` are each zero-padded by one pixel (so the image border
  counts as a boundary) and distance-transformed (exact Euclidean); pixels already clicked
  get distance 0. The click goes to the error pixel farthest from its region's boundary:
  positive when the largest false-negative distance is larger than the largest
  false-positive one, negative otherwise (ties: negative); the first such pixel in row-major
  order. The first click (empty prediction) is therefore the object's interior point
  farthest from its boundary.
- each click is added to the object's earlier clicks and the previous low-res logits are fed
  back as mask prompt (:meth:`pasam_plugins.segment.Segmenter.segment` with ``previous``);
  the first click alone is a single positive click (multimask rule).
- the IoU after each of ``N`` clicks is recorded (RITM's ``--iou-analysis`` mode: no stop at
  a target IoU), so NoC@85, NoC@90 (clicks until the IoU first reaches 85 / 90 %, N when it
  never does), NoF@90 (objects that never reach 90 %) and mIoU after k clicks all come from
  the same runs. RITM's own NoF column counts ``NoC == N`` (also objects reaching the target
  exactly at click N); here NoF counts only objects that never reach it.

Two more annotators click differently from the second click on (the first click is the
oracle's, shared):

- **suggested** (:func:`suggested_click`): the strongest mined point of the current
  prediction that was not clicked yet (:meth:`pasam_plugins.segment.ObjectMask.suggestions`),
  labelled with the ground truth at that pixel: a user who follows the overlay.
- **band** (:func:`band_click`): a uniformly random, not yet clicked pixel of the current
  mask's uncertainty band (:func:`pasam_plugins.metrics.uncertainty_band`, both sides of the
  contour), labelled with the ground truth: the baseline "click somewhere near the contour".

When a strategy has no candidate (no mined point left unclicked, an empty band) the oracle
clicks instead and the track counts a fallback. When the prediction equals the ground truth
no click is needed and the object keeps its IoU for the remaining clicks.

Objects are independent: each round segments all unfinished objects (and strategies) of an
image in one :meth:`~pasam_plugins.segment.Segmenter.segment_many` call, batched on
whole-image models.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .metrics import mask_iou, uncertainty_band
from .segment import ObjectMask, Segmenter

#: the annotators :func:`simulate_clicks` knows
STRATEGIES: tuple[str, ...] = ("oracle", "suggested", "band")
#: strategies that need PA-SAM's adapter (mined points)
ADAPTER_STRATEGIES: tuple[str, ...] = ("suggested",)


@dataclass(frozen=True)
class Click:
    """One click in image pixels; ``positive`` adds, negative removes. ``source`` is the
    annotator that placed it (``oracle``, ``suggested``, ``band``; a fallback is
    ``oracle``)."""

    x: int
    y: int
    positive: bool
    source: str = "oracle"


def _clicked_array(clicked: Sequence[Click] | None) -> tuple[np.ndarray, np.ndarray]:
    if not clicked:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.fromiter((c.y for c in clicked), np.int64, len(clicked)),
        np.fromiter((c.x for c in clicked), np.int64, len(clicked)),
    )


def _distance_in_errors(errors: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    """Max distance (to the region's boundary, image border included) over the error pixels
    not yet clicked and its first pixel in row-major order: ``(dist, y, x)``; ``(0, -1, -1)``
    when there is none. Computed in the errors' bounding box plus one pixel, which gives the
    distances of the whole padded image exactly (every pixel outside it is not an error)."""
    rows = np.flatnonzero(errors.any(axis=1))
    if rows.size == 0:
        return 0.0, -1, -1
    cols = np.flatnonzero(errors.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
    sub[1:-1, 1:-1] = errors[y0:y1, x0:x1]
    dist = cv2.distanceTransform(sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    dist[ys[inside] - y0, xs[inside] - x0] = 0.0
    flat = int(np.argmax(dist))  # first maximum in row-major order
    best = float(dist.flat[flat])
    if best <= 0.0:
        return 0.0, -1, -1
    r, c = divmod(flat, dist.shape[1])
    return best, int(r + y0), int(c + x0)


def error_click(
    pred: np.ndarray, gt: np.ndarray, clicked: Sequence[Click] | None = None
) -> Click | None:
    """RITM's next click for a prediction (see the module doc); None when no error pixel is
    left to click (a perfect prediction)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    ys, xs = _clicked_array(clicked)
    fn_d, fn_y, fn_x = _distance_in_errors(gt & ~pred, ys, xs)
    fp_d, fp_y, fp_x = _distance_in_errors(pred & ~gt, ys, xs)
    if fn_d == 0.0 and fp_d == 0.0:
        return None
    if fn_d > fp_d:
        return Click(fn_x, fn_y, True)
    return Click(fp_x, fp_y, False)


def first_click(gt: np.ndarray) -> Click:
    """The first click: the object's interior point farthest from its boundary."""
    click = error_click(np.zeros_like(gt, dtype=bool), gt)
    if click is None:
        raise ValueError("cannot click on an empty object")
    return click


def _label(gt: np.ndarray, x: int, y: int) -> bool:
    return bool(gt[y, x])


def suggested_click(
    obj: ObjectMask, gt: np.ndarray, clicked: Sequence[Click] | None = None
) -> Click | None:
    """The strongest mined point of ``obj`` not clicked yet (pixel: rounded, inside the
    image), labelled with the ground truth there; None when there is none."""
    h, w = gt.shape
    done = {(c.x, c.y) for c in clicked or ()}
    for x, y, _ in obj.suggestions():
        px = int(np.clip(round(x), 0, w - 1))
        py = int(np.clip(round(y), 0, h - 1))
        if (px, py) not in done:
            return Click(px, py, _label(gt, px, py), "suggested")
    return None


def band_click(
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    clicked: Sequence[Click] | None = None,
) -> Click | None:
    """A uniformly random pixel of the prediction's uncertainty band (both sides of its
    contour) not clicked yet, labelled with the ground truth; None when there is none."""
    band = uncertainty_band(np.asarray(pred, dtype=bool))
    ys, xs = _clicked_array(clicked)
    band[ys, xs] = False
    cy, cx = np.nonzero(band)
    if cy.size == 0:
        return None
    i = int(rng.integers(cy.size))
    return Click(int(cx[i]), int(cy[i]), _label(gt, int(cx[i]), int(cy[i])), "band")


@dataclass
class ClickTrack:
    """One object under one annotator: the clicks placed, the IoU with the ground truth and
    the predicted IoU after each of the ``N`` clicks (an object finished early keeps its
    last values), and how often the oracle had to stand in."""

    strategy: str
    clicks: list[Click] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    fallbacks: int = 0
    last: ObjectMask | None = field(default=None, repr=False)
    finished: bool = False

    def record(self, result: ObjectMask, gt: np.ndarray) -> None:
        # keep what the next click needs (mask, logits, window, mined points), not the
        # full-size uncertainty map of every object and annotator
        self.last = replace(result, uncertainty=None)
        self.ious.append(mask_iou(result.mask, gt))
        self.scores.append(float(result.score))

    def pad(self, n: int) -> None:
        """Repeat the last values up to ``n`` clicks (a finished object needs none)."""
        while len(self.ious) < n:
            self.ious.append(self.ious[-1])
            self.scores.append(self.scores[-1])


def next_click(track: ClickTrack, gt: np.ndarray, rng: np.random.Generator) -> Click | None:
    """The next click of ``track``'s annotator after its last prediction (oracle fallback
    counted); None when the object needs no more clicks."""
    assert track.last is not None
    pred = track.last.mask
    if np.array_equal(pred, gt):
        return None
    click = None
    if track.strategy == "suggested":
        click = suggested_click(track.last, gt, track.clicks)
    elif track.strategy == "band":
        click = band_click(pred, gt, rng, track.clicks)
    elif track.strategy != "oracle":
        raise ValueError(f"unknown strategy {track.strategy!r}; use one of {STRATEGIES}")
    if click is None:
        click = error_click(pred, gt, track.clicks)
        if click is not None and track.strategy != "oracle":
            track.fallbacks += 1
    return click


def simulate_clicks(
    segmenter: Segmenter,
    gts: Sequence[np.ndarray],
    *,
    clicks: int = 20,
    strategies: Sequence[str] = ("oracle",),
    use_adapter: bool = True,
    rng: np.random.Generator | None = None,
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, ClickTrack]]:
    """Simulate annotators on the objects ``gts`` (bool HxW masks) of the segmenter's
    current image (``segmenter.set_image`` first).

    Arguments:
      clicks: clicks per object (N).
      strategies: annotators among :data:`STRATEGIES`; ``suggested`` needs the adapter.
      rng: random generator of the ``band`` annotator (default: seeded 0).
      progress: ``callback(click, clicks)`` after each round.

    Returns:
      per object, ``{strategy: ClickTrack}`` with N IoUs each.
    """
    if clicks < 1:
        raise ValueError("clicks must be >= 1")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategies {unknown}; use some of {STRATEGIES}")
    needs = [s for s in strategies if s in ADAPTER_STRATEGIES]
    if needs and not (use_adapter and segmenter.has_adapter):
        raise ValueError(f"strategy {needs[0]!r} needs PA-SAM's adapter (mined points)")
    rng = rng if rng is not None else np.random.default_rng(0)
    gts = [np.asarray(g, dtype=bool) for g in gts]
    tracks = [{s: ClickTrack(s) for s in strategies} for _ in gts]
    if not gts:
        return tracks
    # click 1: the oracle's first click, one prediction shared by all annotators
    firsts = [first_click(g) for g in gts]
    pts = np.array([[[c.x, c.y]] for c in firsts], dtype=np.float64)
    labs = np.ones((len(gts), 1), np.int64)
    results = segmenter.segment_many(None, pts, labs, use_adapter=use_adapter, chunk=chunk)
    for obj, (click, res) in enumerate(zip(firsts, results, strict=True)):
        for t in tracks[obj].values():
            t.clicks.append(click)
            t.record(res, gts[obj])
    if progress is not None:
        progress(1, clicks)
    for k in range(2, clicks + 1):
        active: list[tuple[int, ClickTrack]] = []
        for obj, per in enumerate(tracks):
            for t in per.values():
                if t.finished:
                    continue
                click = next_click(t, gts[obj], rng)
                if click is None:
                    t.finished = True
                    continue
                t.clicks.append(click)
                active.append((obj, t))
        if active:
            pts = np.array([[[c.x, c.y] for c in t.clicks] for _, t in active], dtype=np.float64)
            labs = np.array([[int(c.positive) for c in t.clicks] for _, t in active], np.int64)
            prev: list[ObjectMask | None] = [t.last for _, t in active]
            results = segmenter.segment_many(
                None, pts, labs, previous=prev, use_adapter=use_adapter, chunk=chunk
            )
            for (obj, t), res in zip(active, results, strict=True):
                t.record(res, gts[obj])
        for per in tracks:
            for t in per.values():
                t.pad(k)
        if progress is not None:
            progress(k, clicks)
    for per in tracks:
        for t in per.values():
            t.last = None  # full-size maps: do not keep them
    return tracks
