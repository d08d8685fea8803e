"""Segmenting objects from pixel-space prompts: the one place where the rules live.

Every front end (``pasam predict``, ``pasam eval``, the Label Studio backend, the napari
plugin, 3D propagation) segments an object through :class:`Segmenter`; the rules are here
and nowhere else:

- **multimask:** a single positive click without box or mask is ambiguous, so the model
  predicts 3 masks and the one with the highest predicted IoU is kept (SAM's rule; with
  the adapter the decoder picks among masks 1..3 itself). Any other prompt gives one mask.
- **positive click:** point prompts need at least one positive point, or a box.
- **prompt mapping:** prompts are image pixels ``(x, y)``; they are mapped to the model's
  input frame here (whole image resized, or a zoomed window, see below).
- **zoom:** models trained zoomed in (``model.metadata["zoom"]``, this project's small
  models) see a square window around the object, resized to their input
  (:mod:`pasam_plugins.zoom`): a box gets the window ``box_context`` x its size; clicks
  alone are first segmented in windows of a few sizes around them (the prediction with the
  highest predicted IoU whose mask stays inside its window wins), then in the window around
  that mask; a next click on the same object reuses the object's window and feeds the
  previous low-res logits back as mask prompt. Official models see the whole image.
- **summary:** predicted IoU, mean uncertainty inside the mask and over its boundary band;
  an empty mask has no uncertainty summary (``None``).
- **suggestions:** the 8 mined points are ranked by how strongly they were mined
  (``mined_scores``: ``U x (sigmoid(R) - sigmoid(Mc))`` at the point for the 4 positive ones,
  its negative for the 4 negative ones); :meth:`ObjectMask.suggestions` lists them best
  first: the "next click" a user who follows the overlay takes.
- **task score:** :func:`task_score_of` (an image's objects -> one score,
  :func:`pasam_plugins.metrics.task_score`), the Label Studio backend's queue order.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import (
    UNCERTAINTY_BAND_RATIO,
    erosion_iterations,
    mask_box,
    task_score,
    uncertainty_band,
)
from .modeling import DecoderOutput
from .predictor import BatchPrediction, PASamPredictor
from .tiling import ImageSource, TileGrid
from .zoom import (
    BOX_CONTEXT,
    MIN_WINDOW,
    Window,
    paste_part,
    window_around_box,
    window_around_point,
)

#: window sides (image pixels) tried for clicks without a box on zoomed models
POINT_WINDOWS: tuple[float, ...] = (48.0, 96.0, 192.0, 384.0)
#: low-res logit for "certainly background" outside a zoomed object's window
OUTSIDE_LOGIT = -20.0


class PromptError(ValueError):
    """Prompts that cannot segment an object; the message says why."""


@dataclass(frozen=True)
class ZoomSettings:
    """How a zoomed model sees an object (stored as ``metadata["zoom"]`` with the model)."""

    box_context: float = BOX_CONTEXT
    point_windows: tuple[float, ...] = POINT_WINDOWS
    min_window: float = MIN_WINDOW

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> "ZoomSettings | None":
        if not meta or not isinstance(meta.get("zoom"), dict):
            return None
        z = meta["zoom"]
        return cls(
            box_context=float(z.get("box_context", BOX_CONTEXT)),
            point_windows=tuple(float(v) for v in z.get("point_windows", POINT_WINDOWS)),
            min_window=float(z.get("min_window", MIN_WINDOW)),
        )

    def to_metadata(self) -> dict[str, Any]:
        return {
            "box_context": self.box_context,
            "point_windows": list(self.point_windows),
            "min_window": self.min_window,
        }


@dataclass
class ObjectMask:
    """One segmented object in the image frame.

    Attributes:
      mask: HxW bool.
      score: predicted IoU of the mask.
      low_res_logits: the model's low-res logits (4G x 4G) in the frame they were predicted
        in (the whole image, or ``window``): pass the result as ``previous`` to refine.
      window: the zoomed window (None for whole-image models).
      uncertainty: HxW float32 in [0, 1] (None without adapter).
      mined_points: 8x2 (x, y) image pixels, 4 positive then 4 negative; mined_labels: 8.
      mined_scores: 8 mining strengths (higher: mined more strongly; see the module doc).
      mean_uncertainty / boundary_uncertainty: mean of the uncertainty map inside the mask /
        over its boundary band (None without adapter or for an empty mask).
      band_uncertainty_sum / band_pixels: the boundary band's sum and size (0 without).
    """

    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray
    window: Window | None = None
    uncertainty: np.ndarray | None = None
    mined_points: np.ndarray | None = None
    mined_labels: np.ndarray | None = None
    mined_scores: np.ndarray | None = None
    mean_uncertainty: float | None = None
    boundary_uncertainty: float | None = None
    band_uncertainty_sum: float = 0.0
    band_pixels: int = 0
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def empty(self) -> bool:
        return not self.mask.any()

    def suggestions(self) -> list[tuple[float, float, int]]:
        """The mined points as suggested next clicks, strongest first: ``(x, y, label)``
        with label 1 (the model suggests adding) or 0 (removing). Empty without adapter."""
        if self.mined_points is None or self.mined_labels is None:
            return []
        n = len(self.mined_points)
        scores = self.mined_scores if self.mined_scores is not None else np.zeros(n)
        order = sorted(range(n), key=lambda i: -float(scores[i]))  # stable: ties keep order
        return [
            (
                float(self.mined_points[i][0]),
                float(self.mined_points[i][1]),
                int(self.mined_labels[i]),
            )
            for i in order
        ]


def mining_scores(decoder: DecoderOutput, i: int) -> np.ndarray | None:
    """How strongly each mined point of prompt set ``i`` was mined: the mining map
    ``phi = U x (sigmoid(R) - sigmoid(Mc))`` at the point for the positive ones (top-k of
    phi) and ``-phi`` for the negative ones (top-k of -phi). None without mined points."""
    if decoder.mined_indices is None or decoder.uncertainty is None:
        return None
    u = decoder.uncertainty[i].float().flatten()
    r = decoder.refined_mask[i].float().flatten()  # type: ignore[union-attr]
    c = decoder.coarse_mask[i].float().flatten()  # type: ignore[union-attr]
    idx = decoder.mined_indices[i]
    phi = (u[idx] * (torch.sigmoid(r[idx]) - torch.sigmoid(c[idx]))).cpu().numpy()
    k = len(phi) // 2
    return np.concatenate([phi[:k], -phi[k:]]).astype(np.float32)


def task_score_of(objects: "list[ObjectMask]") -> float:
    """The task score of one image from its segmented objects
    (:func:`pasam_plugins.metrics.task_score`; without uncertainty: mean predicted IoU)."""
    has_u = any(o.uncertainty is not None for o in objects)
    return task_score(
        [o.score for o in objects],
        [o.band_uncertainty_sum for o in objects] if has_u else None,
        [o.band_pixels for o in objects],
        [o.area for o in objects],
    )


def use_multimask(
    points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None, has_mask: bool
) -> bool:
    """The multimask rule: one positive click and nothing else is ambiguous."""
    return (
        box is None
        and not has_mask
        and points is not None
        and len(points) == 1
        and labels is not None
        and int(labels[0]) == 1
    )


@dataclass(frozen=True)
class UncertaintySummary:
    """An object's uncertainty: mean inside the mask, mean over its boundary band (the
    inside mean when the band is empty; both None for an empty mask or without a map), and
    the band's sum and pixel count (what task scores add up over objects)."""

    mean: float | None = None
    boundary: float | None = None
    band_sum: float = 0.0
    band_pixels: int = 0


def summarize_uncertainty(
    mask: np.ndarray,
    uncertainty: np.ndarray | None,
    *,
    bounds: tuple[int, int, int, int] | None = None,
    iterations: int | None = None,
) -> UncertaintySummary:
    """The :class:`UncertaintySummary` of an object. The band
    (:func:`pasam_plugins.metrics.uncertainty_band`, whose width follows the whole frame)
    is computed on the mask's bounding box, or on ``bounds`` ``(r0, r1, c0, c1)`` when the
    mask is known to lie inside them (a windowed prediction), plus a margin wider than the
    band: the same pixels as on the whole frame (the band never reaches the margin's edge,
    and where the box meets the image border that border is the same), so a small object on
    a large image costs little. ``iterations``: the band width when the arrays are a part
    of a larger frame (the band follows the whole frame's size; default: these arrays')."""
    if uncertainty is None:
        return UncertaintySummary()
    h, w = mask.shape
    if bounds is None:
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return UncertaintySummary()
        cols = np.flatnonzero(mask.any(axis=0))
        bounds = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    if iterations is None:
        iterations = erosion_iterations(h, w, UNCERTAINTY_BAND_RATIO)
    m = 2 * iterations + 1  # the band of a mask inside bounds lies within bounds + m
    r0, r1, c0, c1 = bounds
    part = (slice(max(0, r0 - m), min(h, r1 + m)), slice(max(0, c0 - m), min(w, c1 + m)))
    mask, uncertainty = mask[part], uncertainty[part]
    count = int(np.count_nonzero(mask))
    if count == 0:
        return UncertaintySummary()
    values = np.ascontiguousarray(uncertainty, dtype=np.float32).ravel()
    inside = _masked_sum(values, mask) / count
    band = uncertainty_band(mask, iterations)
    n = int(np.count_nonzero(band))
    if n == 0:
        return UncertaintySummary(inside, inside)
    band_sum = _masked_sum(values, band)
    return UncertaintySummary(inside, band_sum / n, band_sum, n)


def _masked_sum(values: np.ndarray, mask: np.ndarray) -> float:
    """Sum of the flat float32 ``values`` where ``mask`` is set: a dot product with the mask
    (10x faster than gathering the values first, as a ragged mask of random weights on a
    1024x1024 image makes every summary do; float32 accumulation, ~1e-7 relative)."""
    return float(np.dot(values, np.ascontiguousarray(mask).ravel().astype(np.float32)))


def summarize(
    mask: np.ndarray,
    uncertainty: np.ndarray | None,
    *,
    bounds: tuple[int, int, int, int] | None = None,
) -> tuple[float | None, float | None]:
    """(mean uncertainty inside the mask, mean over its boundary band) of
    :func:`summarize_uncertainty`."""
    s = summarize_uncertainty(mask, uncertainty, bounds=bounds)
    return s.mean, s.boundary


def check_prompts(
    points: Any, labels: Any, box: Any, size: tuple[int, int] | None = None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate and convert prompts: Nx2 float points with N labels in {0, 1}, a 4-number
    box with x0 <= x1 and y0 <= y1; at least one positive point or a box."""
    pts = lab = bx = None
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if labels is None:
            raise PromptError("point labels are missing (1 = positive, 0 = negative)")
        lab = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(lab) != len(pts):
            raise PromptError(f"{len(pts)} points but {len(lab)} labels")
        if not np.isin(lab, (0, 1)).all():
            raise PromptError("point labels must be 1 (positive) or 0 (negative)")
        if not np.isfinite(pts).all():
            raise PromptError("point coordinates must be finite numbers")
    if box is not None:
        bx = np.asarray(box, dtype=np.float64).reshape(-1)
        if bx.size != 4 or not np.isfinite(bx).all():
            raise PromptError("a box is 4 finite numbers x0, y0, x1, y1")
        if bx[2] < bx[0] or bx[3] < bx[1]:
            raise PromptError(f"box {bx.tolist()}: x1 must be >= x0 and y1 >= y0")
    if bx is None and (lab is None or not (lab == 1).any()):
        raise PromptError("give a box or at least one positive point")
    return pts, lab, bx


class Segmenter:
    """Segments objects of one image at a time with a :class:`PASamPredictor`.

    Arguments:
      predictor: the model (and its embedding cache).
      zoom: how a zoomed model sees objects; default from the model's metadata (None: the
        whole image, as SAM).
      view: how images are seen. ``auto`` (default): zoomed when the model is zoomed (or
        ``zoom`` is given), else tiled for large images and whole for the others.
        ``zoom``: a window per object (``zoom``, the model's settings, or the defaults).
        ``tiled``: never zoomed; images with a side above ``tile_above`` are tiled, the
        others whole (runs a zoomed model as a whole-image model on native tiles).
        ``whole``: never zoomed nor tiled; every image is resized to the input (SAM's way).
      tile, halo, tile_above: the tiling (:mod:`pasam_plugins.tiling`); defaults from the
        model input ``n``: halo ``n / 8``, tile ``n - 2 halo``, tiled above ``2 n`` px.
    """

    #: the values of ``view``
    VIEWS = ("auto", "zoom", "tiled", "whole")

    def __init__(
        self,
        predictor: PASamPredictor,
        *,
        zoom: ZoomSettings | None = None,
        view: str = "auto",
        tile: int | None = None,
        halo: int | None = None,
        tile_above: int | None = None,
    ) -> None:
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {', '.join(self.VIEWS)}; got {view!r}")
        self.predictor = predictor
        model = predictor.model
        self.view = view
        if view in ("tiled", "whole"):
            self.zoom = None
        elif zoom is not None:
            self.zoom = zoom
        else:
            self.zoom = ZoomSettings.from_metadata(model.origin.metadata)
            if self.zoom is None and view == "zoom":
                self.zoom = ZoomSettings()
        n = model.img_size
        #: tiling of whole-image models (:mod:`pasam_plugins.tiling`): images with a side
        #: above ``tile_above`` px are embedded as tiles of ``tile`` px plus ``halo`` on each
        #: side (the model input, at native resolution) instead of being shrunk
        self.halo = int(halo if halo is not None else n // 8)
        self.tile = int(tile if tile is not None else n - 2 * self.halo)
        self.tile_above = int(tile_above if tile_above is not None else 2 * n)
        if self.tile < 1 or self.halo < 0 or self.tile + 2 * self.halo > n:
            raise ValueError(
                f"tile {self.tile} + 2 x halo {self.halo} must be positive and fit the "
                f"{n}-px model input"
            )
        self.source: ImageSource | None = None
        self.bgr = False
        self.grid: TileGrid | None = None
        self.size: tuple[int, int] | None = None

    @property
    def model(self):
        return self.predictor.model

    @property
    def has_adapter(self) -> bool:
        return self.predictor.model.has_adapter

    @property
    def mode(self) -> str:
        """How the current image is seen: ``zoom`` (a window per object), ``tiled`` (native
        tiles of a large image) or ``whole`` (the image resized to the input, as SAM)."""
        if self.zoom is not None:
            return "zoom"
        return "tiled" if self.grid is not None else "whole"

    # ------------------------------------------------------------------ image
    def grid_for(self, shape: tuple[int, ...]) -> TileGrid | None:
        """The tiles an image of ``shape`` (H, W, ...) is embedded as; None when it is not
        tiled (zoomed models, ``view="whole"``, and images with no side above
        ``tile_above``): the one tiling rule."""
        if (
            self.zoom is not None
            or self.view == "whole"
            or len(shape) < 2
            or max(shape[:2]) <= self.tile_above
        ):
            return None
        return TileGrid(int(shape[0]), int(shape[1]), tile=self.tile, halo=self.halo)

    def set_image(
        self,
        image: Any,
        *,
        channel: int | None = None,
        image_format: str = "RGB",
        sample: Any = None,
    ) -> None:
        """Use this image: any dtype and channels (see :func:`normalize_image`); an
        array-like (memmap, zarr, dask, :func:`pasam_plugins.tiling.open_image`) is read
        lazily. Whole-image models embed it now (or take it from the cache); zoomed models
        and large images embed windows where prompts arrive, with contrast levels from
        ``sample`` when given (see :class:`~pasam_plugins.tiling.ImageSource`)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        shape = tuple(getattr(image, "shape", np.shape(image)))
        self.grid = None
        if not self.tiles(shape) and self.zoom is None:
            self.predictor.set_image(np.asarray(image), image_format, channel=channel)
            self.source = None
            self.size = self.predictor.original_size
            return
        self.source = ImageSource(
            image, channel=channel, percentiles=self.predictor.percentiles, sample=sample
        )
        self.bgr = image_format == "BGR"
        self.size = self.source.shape
        self.grid = self.grid_for(self.source.shape)

    def tiles(self, shape: tuple[int, ...]) -> bool:
        """Whether an image of this shape (HxW...) is embedded as tiles (:meth:`grid_for`).
        (Without tiles a whole-image model embeds the image in :meth:`set_image`; a zoomed
        model a window per prompt.)"""
        return self.grid_for(shape) is not None

    def windows(self) -> list[Window]:
        """The windows ``embed_all`` embeds: every tile of a tiled image, none otherwise
        (zoomed models embed a window around each prompt; whole images at set_image)."""
        if self.grid is None:
            return []
        return [self.grid.window(i, j) for i, j in self.grid]

    def embed_window(self, window: Window) -> bool:
        """Embed one window of the current image into the cache; True when the encoder ran
        (False: it was cached already)."""
        assert self.source is not None
        runs = self.predictor.encoder_runs
        image = self.source.crop(window, self.model.img_size)
        self.predictor.set_image(np.ascontiguousarray(image[..., ::-1]) if self.bgr else image)
        return self.predictor.encoder_runs > runs

    def _require_image(self) -> tuple[int, int]:
        if self.size is None:
            raise RuntimeError("set an image with .set_image(...) first")
        return self.size

    # ------------------------------------------------------------------ one object
    def segment(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        *,
        previous: ObjectMask | None = None,
        use_adapter: bool = True,
    ) -> ObjectMask:
        """Segment one object from prompts in image pixels.

        Arguments:
          points: Nx2 (x, y); labels: N (1 positive, 0 negative). box: x0, y0, x1, y1.
          previous: this object's last result: its low-res logits are fed back as mask
            prompt (a refinement click), in its window for zoomed models.
          use_adapter: False runs plain SAM with the same weights.
        """
        size = self._require_image()
        pts, lab, bx = check_prompts(points, labels, box, size)
        if self.mode == "whole":
            mask_in = None if previous is None else previous.low_res_logits
            return self._predict_whole([(pts, lab, bx, mask_in)], use_adapter)[0]
        return self._segment_windowed(pts, lab, bx, previous, use_adapter)

    # ------------------------------------------------------------------ many objects
    def segment_many(
        self,
        boxes: Any = None,
        points: Any = None,
        labels: Any = None,
        *,
        previous: "list[ObjectMask | None] | None" = None,
        use_adapter: bool = True,
        chunk: int = 16,
    ) -> list[ObjectMask]:
        """Segment B objects, each from its own prompts: ``boxes`` Bx4 and/or ``points``
        BxNx2 with ``labels`` BxN (the same N for all); ``previous``: B earlier results
        (or None) to refine, as in :meth:`segment`. Whole-image models run the prompt sets
        batched; zoomed models one window each. The results equal B :meth:`segment` calls."""
        self._require_image()
        n = len(boxes) if boxes is not None else (len(points) if points is not None else 0)
        if previous is not None and len(previous) != n:
            raise ValueError(f"{n} prompt sets but {len(previous)} previous results")
        prev = list(previous) if previous is not None else [None] * n
        prompts = []
        for i in range(n):
            p = None if points is None else points[i]
            lab = None if labels is None else labels[i]
            b = None if boxes is None else boxes[i]
            mask_in = None if prev[i] is None else prev[i].low_res_logits  # type: ignore[union-attr]
            prompts.append((*check_prompts(p, lab, b), mask_in))
        if self.mode == "whole":
            out: list[ObjectMask] = []
            for start in range(0, n, chunk):
                out += self._predict_whole(prompts[start : start + chunk], use_adapter)
            return out
        return [
            self._segment_windowed(p, lab, b, prev[i], use_adapter)
            for i, (p, lab, b, _) in enumerate(prompts)
        ]

    # ------------------------------------------------------------------ whole image
    def _predict_whole(self, prompts: list, use_adapter: bool) -> list[ObjectMask]:
        """Prompt sets with the same structure -> batched; otherwise one call each."""
        pred = self.predictor
        kinds = {
            (p is None, None if p is None else len(p), b is None, m is None)
            for p, _, b, m in prompts
        }
        if len(kinds) > 1:
            return [r for one in prompts for r in self._predict_whole([one], use_adapter)]
        size = pred.original_size
        dev = pred.device
        p0, l0, b0, m0 = prompts[0]
        multimask = use_multimask(p0, l0, b0, m0 is not None)
        coords = lab_t = boxes = masks = None
        if p0 is not None:
            coords = torch.as_tensor(
                np.stack([pred.transform.apply_coords(p, size) for p, _, _, _ in prompts]),
                dtype=torch.float,
                device=dev,
            )
            lab_t = torch.as_tensor(np.stack([lab for _, lab, _, _ in prompts]), device=dev).int()
        if b0 is not None:
            boxes = torch.as_tensor(
                np.stack([pred.transform.apply_boxes(b[None], size)[0] for _, _, b, _ in prompts]),
                dtype=torch.float,
                device=dev,
            )
        if m0 is not None:
            masks = torch.as_tensor(
                np.stack(
                    [np.asarray(m, np.float32).reshape(1, *m.shape[-2:]) for *_, m in prompts]
                ),
                device=dev,
            )
        out = pred.predict_torch(
            coords, lab_t, boxes, masks, multimask_output=multimask, use_adapter=use_adapter
        )
        results = []
        for i, (p, lab, b, _) in enumerate(prompts):
            best = int(torch.argmax(out.scores[i])) if out.scores.shape[1] > 1 else 0
            results.append(self._result(out, i, best, p, lab, b, None))
        return results

    def _result(
        self,
        out: BatchPrediction,
        i: int,
        best: int,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        window: Window | None,
    ) -> ObjectMask:
        mask = out.masks[i, best].cpu().numpy().astype(bool)
        unc = None if out.uncertainty is None else out.uncertainty[i].cpu().numpy()
        s = summarize_uncertainty(mask, unc)
        return ObjectMask(
            mask=mask,
            score=float(out.scores[i, best]),
            low_res_logits=out.low_res_logits[i, best : best + 1].cpu().numpy(),
            window=window,
            uncertainty=unc,
            mined_points=None if out.mined_points is None else out.mined_points[i].cpu().numpy(),
            mined_labels=None if out.mined_labels is None else out.mined_labels[i].cpu().numpy(),
            mined_scores=mining_scores(out.decoder, i),
            mean_uncertainty=s.mean,
            boundary_uncertainty=s.boundary,
            band_uncertainty_sum=s.band_sum,
            band_pixels=s.band_pixels,
            points=points,
            point_labels=labels,
            box=box,
        )

    # ------------------------------------------------------------------ zoomed
    def _window_prediction(
        self,
        window: Window,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        use_adapter: bool,
        multimask: bool,
    ) -> tuple[BatchPrediction, int]:
        """Predict in one window: crop, embed (cached), decode. Returns the prediction (in
        the crop's frame) and the index of the chosen mask."""
        pred = self.predictor
        n = pred.model.img_size
        assert self.source is not None
        image = self.source.crop(window, n)
        pred.set_image(np.ascontiguousarray(image[..., ::-1]) if self.bgr else image)
        dev = pred.device
        coords = lab_t = box_t = mask_t = None
        if points is not None:
            coords = torch.as_tensor(
                window.to_input(points, n)[None], dtype=torch.float, device=dev
            )
            lab_t = torch.as_tensor(labels[None], device=dev).int()
        if box is not None:
            box_t = torch.as_tensor(
                window.box_to_input(box, n)[None], dtype=torch.float, device=dev
            )
        if mask_input is not None:
            mask_t = torch.as_tensor(
                np.asarray(mask_input, np.float32).reshape(1, 1, *mask_input.shape[-2:]), device=dev
            )
        out = pred.predict_torch(
            coords, lab_t, box_t, mask_t, multimask_output=multimask, use_adapter=use_adapter
        )
        best = int(torch.argmax(out.scores[0])) if out.scores.shape[1] > 1 else 0
        return out, best

    def _window_result(
        self,
        out: BatchPrediction,
        best: int,
        window: Window,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
    ) -> ObjectMask:
        h, w = self.size  # type: ignore[misc]
        low = out.low_res_logits[0, best].cpu().numpy()
        # full-frame results, written only inside the window (zeroed frames: on a large
        # image only the window's memory pages become resident)
        logits, bounds = paste_part(low, window, h, w)
        r0, r1, c0, c1 = bounds
        mask = np.zeros((h, w), bool)
        mask[r0:r1, c0:c1] = logits > self.predictor.model.mask_threshold
        unc = mined = mined_l = None
        if out.decoder.uncertainty is not None:
            part, _ = paste_part(out.decoder.uncertainty[0, 0].float().cpu().numpy(), window, h, w)
            unc = np.zeros((h, w), np.float32)
            unc[r0:r1, c0:c1] = np.clip(part, 0, 1)
        if out.mined_points is not None:
            n = self.predictor.model.img_size
            mined = window.from_input(out.mined_points[0].cpu().numpy(), n).astype(np.float32)
            mined[:, 0] = np.clip(mined[:, 0], 0, w - 1)
            mined[:, 1] = np.clip(mined[:, 1], 0, h - 1)
            mined_l = out.mined_labels[0].cpu().numpy()
        s = summarize_uncertainty(mask, unc, bounds=bounds)
        return ObjectMask(
            mask=mask,
            score=float(out.scores[0, best]),
            low_res_logits=low[None],
            window=window,
            uncertainty=unc,
            mined_points=mined,
            mined_labels=mined_l,
            mined_scores=mining_scores(out.decoder, 0),
            mean_uncertainty=s.mean,
            boundary_uncertainty=s.boundary,
            band_uncertainty_sum=s.band_sum,
            band_pixels=s.band_pixels,
            points=points,
            point_labels=labels,
            box=box,
        )

    def _segment_windowed(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        previous: ObjectMask | None,
        use_adapter: bool,
    ) -> ObjectMask:
        """Tiled and zoomed modes: a refinement whose prompts lie inside the previous
        result's window is answered there, with the previous low-res logits as mask prompt
        (single mask); otherwise the mode picks a window."""
        if (
            previous is not None
            and previous.window is not None
            and self._inside(previous.window, points, box)
        ):
            window = previous.window
            out, best = self._window_prediction(
                window, points, labels, box, previous.low_res_logits, use_adapter, False
            )
            return self._window_result(out, best, window, points, labels, box)
        if self.mode == "tiled":
            return self._segment_tiled(points, labels, box, use_adapter)
        return self._segment_zoomed(points, labels, box, use_adapter)

    def _segment_tiled(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        use_adapter: bool,
    ) -> ObjectMask:
        """A large image: the prompt is answered on the tile window that holds it with the
        most margin (native resolution); clicks whose mask reaches the window's edge are
        answered again on the window that holds that mask best."""
        assert self.grid is not None
        multimask = use_multimask(points, labels, box, False)
        lo, hi = _prompt_extent(points, labels, box)
        window = self._tile_window(lo, hi)
        out, best = self._window_prediction(
            window, points, labels, box, None, use_adapter, multimask
        )
        result = self._window_result(out, best, window, points, labels, box)
        if box is None and not result.empty:
            mbox = mask_box(result.mask)
            assert mbox is not None
            better = self._tile_window(mbox[:2], mbox[2:])
            if better != window and _touches_inner_edge(result.mask, window, self.size):
                out, best = self._window_prediction(
                    better, points, labels, None, None, use_adapter, multimask
                )
                result = self._window_result(out, best, better, points, labels, None)
        return result

    def _tile_window(self, lo: np.ndarray, hi: np.ndarray) -> Window:
        """The grid tile holding the pixel box lo..hi best; a box no tile holds whole gets a
        window of its own (native resolution when it fits the input, else zoomed out)."""
        assert self.grid is not None
        window, margin = self.grid.best_window(lo, hi)
        if margin >= 0:
            return window
        n = float(self.model.img_size)
        side = max(n, 1.25 * float(max(hi - lo)) + 2)
        c = (lo + hi + 1) / 2.0
        return Window(float(np.floor(c[0] - side / 2)), float(np.floor(c[1] - side / 2)), side)

    @staticmethod
    def _inside(window: Window, points: np.ndarray | None, box: np.ndarray | None) -> bool:
        return (points is None or window.contains(points)) and (
            box is None or window.contains(np.reshape(box, (2, 2)))
        )

    def _fit_window(self, window: Window, points: np.ndarray | None) -> Window:
        """``window`` grown (about its centre's box) until it holds every point."""
        if points is None or window.contains(points):
            return window
        lo = np.minimum(points.min(0), [window.x0, window.y0])
        hi = np.maximum(points.max(0) + 1, [window.x0 + window.size, window.y0 + window.size])
        size = float(max(hi - lo)) + 2.0
        c = (lo + hi) / 2.0
        return Window(float(c[0]) - size / 2, float(c[1]) - size / 2, size)

    def _segment_zoomed(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        use_adapter: bool,
    ) -> ObjectMask:
        z = self.zoom
        assert z is not None
        multimask = use_multimask(points, labels, box, False)
        if box is not None:
            window = self._fit_window(
                window_around_box(box, context=z.box_context, min_size=z.min_window), points
            )
            out, best = self._window_prediction(
                window, points, labels, box, None, use_adapter, multimask
            )
            return self._window_result(out, best, window, points, labels, box)
        # clicks only: find the object's scale, then zoom in on it
        assert points is not None and labels is not None
        pos = points[labels == 1]
        center = pos.mean(0)
        h, w = self.size  # type: ignore[misc]
        sides = [s for s in z.point_windows if s <= 2 * max(h, w)] or [min(z.point_windows)]
        candidates = []
        for side in sides:
            win = self._fit_window(window_around_point(center, side), points)
            out, best = self._window_prediction(
                win, points, labels, None, None, use_adapter, multimask
            )
            low = out.low_res_logits[0, best]
            inside = low > self.predictor.model.mask_threshold
            touches = bool(
                inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
            )
            score = float(out.scores[0, best])
            candidates.append((not inside.any(), touches, -score, len(candidates), win, out, best))
        candidates.sort(key=lambda c: c[:4])
        _, _, _, _, win, out, best = candidates[0]
        first = self._window_result(out, best, win, points, labels, None)
        if first.empty:
            return first
        mbox = mask_box(first.mask)
        assert mbox is not None
        window = self._fit_window(
            window_around_box(mbox, context=z.box_context, min_size=z.min_window), points
        )
        out, best = self._window_prediction(
            window, points, labels, None, None, use_adapter, multimask
        )
        result = self._window_result(out, best, window, points, labels, None)
        result.extra["scale_window"] = win.size
        return result


def _prompt_extent(
    points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) corners of the pixels a prompt names: its box, or its positive points."""
    corners = []
    if box is not None:
        corners.append(np.reshape(box, (2, 2)))
    if points is not None and labels is not None and (labels == 1).any():
        corners.append(points[labels == 1])
    pts = np.concatenate(corners)
    return pts.min(0), pts.max(0)


def _touches_inner_edge(mask: np.ndarray, window: Window, size: tuple[int, int] | None) -> bool:
    """Whether a mask reaches an edge of its window that is not the image's edge (the object
    may go on beyond the window)."""
    assert size is not None
    h, w = size
    r0, r1, c0, c1 = window.pixel_bounds(h, w)
    sub = mask[r0:r1, c0:c1]
    if not sub.any():
        return False
    return bool(
        (r0 > 0 and sub[0].any())
        or (r1 < h and sub[-1].any())
        or (c0 > 0 and sub[:, 0].any())
        or (c1 < w and sub[:, -1].any())
    )
