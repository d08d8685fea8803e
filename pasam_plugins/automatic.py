"""Automatic instance segmentation: every object of an image without a click.

A grid of single positive point prompts is run through the decoder in batches, in one or
more windows of the image; every mask is filtered by predicted IoU, stability and (with
the PA-SAM adapter) boundary uncertainty, de-duplicated by NMS, optionally cleaned of small
holes and islands, and returned with its scores. The rules follow ``segment_anything``'s
``SamAutomaticMaskGenerator`` (``automatic_mask_generator.py``, ``utils/amg.py``) step by
step, so that with the adapter off, the uncertainty filter off, box NMS and the same
settings the masks are the same (``tests/test_automatic.py``). What differs is the work:

- masks are thresholded and scored at full resolution only after the predicted-IoU filter
  (SAM upsamples all 3 masks of every point first), and they are kept cropped to their
  bounding box (no full-image RLE per mask, no deep copies between batches);
- with the adapter, a point gives one mask (the decoder picks among its 3 itself) through
  the adapter's faster decoder path, and its uncertainty map gives each object a boundary
  uncertainty (:func:`pasam_plugins.segment.summarize`'s definition);
- the image embedding of every window comes from the predictor's cache (bounded LRU, and
  the disk store when there is one), so a second run (other thresholds, another front end)
  does not re-run the encoder while the embeddings are held.

Windows: whole-image models (SAM's 1024-px input) see the whole image plus, with
``crop_n_layers``, SAM's crop layers. Zoomed models (``model.origin.zoom``, this
project's 256-px models, trained on one object at a time around a BOX) get **box
proposals** (``prompts="boxes"``, the default for them): for each object size ``s`` of
``box_scales`` (capped by the image) box centres lie on a lattice of spacing
``box_stride`` x ``s`` over the image; ``boxes_per_window`` x ``boxes_per_window``
neighbouring boxes of side ``s`` share one zoomed window of side ``box_context`` x ``s``
(plus the lattice span), i.e. the geometry the model was trained on (an object of about
``s`` fills about half the window). One encoder run per window (cached), one decoder call
per window with all its boxes. A mask is kept when its predicted IoU, stability and the
agreement (IoU) of its bounding box with the prompt box pass the thresholds (an object of
about this size is really there) and it does not reach an inner window edge; mask NMS
then runs across windows and scales. Their tuned thresholds are
:meth:`AutomaticSettings.for_zoom` (:func:`default_settings` picks them for a zoomed
model). ``prompts="points"`` runs a zoomed model the older way: a point grid in square
native-resolution tiles of its input size overlapping by ``tile_overlap`` (its IoU head
predicts 0.4-0.6 for such clicks and the masks are poor: AP50 about 0.01).

The network is used through tensors only (``PASam.decode``); this module owns the rules.
"""

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cv2
import numpy as np
import torch
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
)
from torchvision.ops.boxes import batched_nms

from .imageio import normalize_image
from .metrics import UNCERTAINTY_BAND_RATIO, erosion_iterations
from .predictor import PASamPredictor
from .segment import ZoomSettings, summarize_uncertainty
from .zoom import BOX_CONTEXT, MIN_WINDOW, Window, paste_part, window_around_box
from .zoom import crop as zoom_crop

NmsMode = Literal["box", "mask"]
PromptMode = Literal["auto", "points", "boxes"]
BoxSource = Literal["grid", "regions"]
#: progress callback: (windows/batches done, total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AutomaticSettings:
    """How :class:`AutomaticSegmenter` finds objects (SAM's names and defaults where SAM has
    the setting).

    Attributes:
      points_per_side: grid points per side of each window (points_per_side**2 prompts).
      points_per_batch: prompts per decoder call.
      pred_iou_thresh: keep masks whose predicted IoU is above this (0: off).
      stability_score_thresh: keep masks whose stability score (IoU of the mask thresholded
        at +-``stability_score_offset`` around the logit threshold) is at least this (0: off).
      stability_score_offset: see above.
      max_boundary_uncertainty: keep masks whose mean uncertainty over their boundary band is
        at most this (None: off; needs the adapter). New in PA-SAM.
      nms: ``"mask"`` (duplicates = masks overlapping by IoU above the threshold) or
        ``"box"`` (SAM's: bounding boxes overlapping).
      box_nms_thresh: NMS threshold inside one window.
      crop_n_layers / crop_nms_thresh / crop_overlap_ratio / crop_n_points_downscale_factor:
        SAM's crop layers (whole-image models): layer i cuts the image into 2**i x 2**i
        overlapping crops, each segmented at the model's input size; NMS between windows
        uses ``crop_nms_thresh`` and prefers masks from smaller windows.
      min_mask_region_area: fill holes and remove islands smaller than this (pixels), then
        run NMS again (SAM's ``postprocess_small_regions``); 0: off.
      use_adapter: run the PA-SAM adapter (False: plain SAM with the same weights).
      tile_size: window side in image pixels for tiled segmentation; None: the model input
        size for zoomed models, no tiles (whole image + crop layers) otherwise.
      tile_overlap: overlap of neighbouring tiles as a fraction of the tile side.
      edge_tolerance: pixels; masks whose box comes this close to a window edge that is not
        an image edge are dropped in that window (SAM's ``is_box_near_crop_edge``).
      prompts: ``"points"`` (SAM's point grid), ``"boxes"`` (box proposals in zoomed
        windows, see the module docstring) or ``"auto"`` (boxes for zoomed models, points
        for whole-image models).
      box_source: where the proposal boxes come from: ``"grid"`` (a lattice of boxes per
        scale, see the module docstring) or ``"regions"`` (the bounding boxes of the
        image's maximally stable extremal regions, OpenCV's MSER on the grey image and its
        inverse: blob-like regions of any size; each box gets its own window of side
        ``box_context`` x its longer side, the geometry of a prompted box).
      region_delta / region_min_area / region_max_fraction / region_nms: MSER's
        ``delta``, its smallest region (pixels), its largest (fraction of the image), and
        the box IoU above which near-duplicate region boxes are merged.
      box_scales: box sides (image pixels) proposed by the grid; scales above the image's
        longer side are capped to it.
      box_stride: spacing of the box centres as a fraction of the box side.
      boxes_per_window: k: k x k neighbouring boxes share one window (one encoder run).
      box_context: window side / box side; None: the model's ``zoom.box_context``.
      min_box_agreement: keep masks whose bounding box has at least this IoU with the
        prompt box (0: off). Box proposals only.
      box_edge_tolerance: pixels; box proposals: masks this close to a window edge that is
        not an image edge are dropped (the object goes on beyond the window).

    Whole-image defaults are SAM's; :meth:`for_zoom` holds the defaults for zoomed models
    (chosen on validation data) and :func:`default_settings` picks the right ones.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    max_boundary_uncertainty: float | None = None
    nms: NmsMode = "mask"
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_adapter: bool = True
    tile_size: int | None = None
    tile_overlap: float = 0.25
    edge_tolerance: float = 20.0
    prompts: PromptMode = "auto"
    box_source: BoxSource = "grid"
    region_delta: int = 5
    region_min_area: int = 30
    region_max_fraction: float = 0.25
    region_nms: float = 0.8
    box_scales: tuple[int, ...] = (16, 32, 64, 128, 256)
    box_stride: float = 0.5
    boxes_per_window: int = 2
    box_context: float | None = None
    min_box_agreement: float = 0.0
    box_edge_tolerance: float = 1.0

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be at least 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {self.points_per_batch}")
        if self.nms not in ("box", "mask"):
            raise ValueError(f"nms must be 'box' or 'mask', got {self.nms!r}")
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        u = self.max_boundary_uncertainty
        if u is not None and not 0.0 <= u <= 1.0:
            raise ValueError(f"max_boundary_uncertainty must be between 0 and 1, got {u}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.tile_size is not None and self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if self.crop_n_layers < 0 or self.min_mask_region_area < 0:
            raise ValueError("crop_n_layers and min_mask_region_area must not be negative")
        if self.prompts not in ("auto", "points", "boxes"):
            raise ValueError(f"prompts must be 'auto', 'points' or 'boxes', got {self.prompts!r}")
        object.__setattr__(self, "box_scales", tuple(int(v) for v in self.box_scales))
        if not self.box_scales or min(self.box_scales) < 4:
            raise ValueError(
                f"box_scales must be sides of at least 4 pixels, got {self.box_scales}"
            )
        if not 0.0 < self.box_stride <= 2.0:
            raise ValueError(f"box_stride must be in (0, 2], got {self.box_stride}")
        if self.box_source not in ("grid", "regions"):
            raise ValueError(f"box_source must be 'grid' or 'regions', got {self.box_source!r}")
        if self.boxes_per_window < 1:
            raise ValueError(f"boxes_per_window must be at least 1, got {self.boxes_per_window}")
        if self.box_context is not None and self.box_context < 1.0:
            raise ValueError(f"box_context must be at least 1, got {self.box_context}")
        if not 0.0 <= self.min_box_agreement <= 1.0:
            raise ValueError(
                f"min_box_agreement must be between 0 and 1, got {self.min_box_agreement}"
            )

    @classmethod
    def sam(cls, **changes: Any) -> "AutomaticSettings":
        """SamAutomaticMaskGenerator's behaviour: adapter off, no uncertainty filter, box NMS
        (plus ``changes``)."""
        base = cls(use_adapter=False, max_boundary_uncertainty=None, nms="box")
        return replace(base, **changes)

    @classmethod
    def for_zoom(cls, **changes: Any) -> "AutomaticSettings":
        """The defaults for zoomed models (this project's 256-px models): box proposals and
        thresholds chosen by AP50 on the VALIDATION parts (EM sections 16-19, nuclei files
        3 mod 5) with the shipped ``pasam_micro`` (``benchmarks/automatic_tune.py
        --boxes``; see the README's "Segment everything"), plus ``changes``."""
        return replace(cls(**ZOOM_DEFAULTS), **changes)


#: :meth:`AutomaticSettings.for_zoom`'s values, chosen by mean AP50 over the two
#: VALIDATION parts (EM sections 16-19, nuclei files 3 mod 5) with the shipped pasam_micro
#: (``benchmarks/automatic_tune.py model/weights/pasam_micro.safetensors --boxes
#: --box-source regions ...``, 2026-12-01): region (MSER) boxes, predicted IoU > 0.6,
#: stability >= 0.85, box agreement >= 0.8, mask NMS at 0.4: AP50 0.285 EM / 0.409 nuclei
#: on validation. Grid boxes were measured worse (see the README's "Segment everything").
#: The uncertainty filter stays off: on validation every threshold tried lowered AP50.
ZOOM_DEFAULTS: dict[str, Any] = dict(
    prompts="boxes",
    box_source="regions",
    pred_iou_thresh=0.6,
    stability_score_thresh=0.85,
    min_box_agreement=0.8,
    box_nms_thresh=0.4,
)


def is_zoomed(model: Any) -> bool:
    """Whether a model sees objects zoomed in (its metadata has zoom settings)."""
    origin = getattr(model, "origin", None)
    return ZoomSettings.from_metadata(getattr(origin, "metadata", None)) is not None


def default_settings(model: Any, **changes: Any) -> AutomaticSettings:
    """The automatic settings a front end uses for ``model``: :meth:`AutomaticSettings.
    for_zoom` for zoomed models, SAM's defaults otherwise, with ``changes`` (the user's
    choices; ``None`` values mean "the model's default" and are ignored). ``pasam
    segment-all``, the Label Studio backend and napari's "Segment all" all come here."""
    given = {k: v for k, v in changes.items() if v is not None}
    if is_zoomed(model):
        return AutomaticSettings.for_zoom(**given)
    return AutomaticSettings(**given)


@dataclass
class Instance:
    """One object found in the image.

    Attributes:
      crop: bool mask of the object's bounding box (``box`` rows/columns of the image).
      box: ``(x0, y0, x1, y1)`` pixel indices of the extreme mask pixels (inclusive).
      predicted_iou: the decoder's IoU prediction.
      stability_score: IoU of the mask at logit thresholds +-offset.
      point: the grid point ``(x, y)`` (image pixels) that produced the mask.
      window: the window ``(x0, y0, x1, y1)`` (exclusive end) the mask was predicted in.
      mean_uncertainty / boundary_uncertainty: the adapter's uncertainty inside the mask /
        over its boundary band (None without adapter).
      prompt_box: box proposals: the prompt box ``(x0, y0, x1, y1)`` (inclusive; ``point``
        is its centre); None for point prompts.
      box_agreement: IoU of the mask's bounding box with ``prompt_box``.
      scale: box proposals: the proposal's object size (an entry of ``box_scales``, capped).
    """

    crop: np.ndarray
    box: tuple[int, int, int, int]
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    window: tuple[int, int, int, int]
    mean_uncertainty: float | None = None
    boundary_uncertainty: float | None = None
    prompt_box: tuple[int, int, int, int] | None = None
    box_agreement: float | None = None
    scale: int | None = None

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    @property
    def bbox_xywh(self) -> list[int]:
        """COCO's ``[x, y, width, height]`` of the mask (pycocotools ``toBbox``)."""
        x0, y0, x1, y1 = self.box
        return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]

    def mask(self, height: int, width: int) -> np.ndarray:
        """The object as an HxW bool mask of the image."""
        out = np.zeros((height, width), bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = self.crop
        return out

    def slices(self) -> tuple[slice, slice]:
        x0, y0, x1, y1 = self.box
        return slice(y0, y1 + 1), slice(x0, x1 + 1)


@dataclass
class AutomaticResult:
    """All objects of one image, in NMS order (best first).

    Attributes:
      instances: the objects.
      image_size: ``(height, width)``.
      windows: the windows the image was segmented in.
      prompts: grid points decoded; masks_before_nms: masks that passed the filters.
      seconds: wall time; encoder_runs: windows whose embedding was computed (not cached).
    """

    instances: list[Instance]
    image_size: tuple[int, int]
    windows: list[tuple[int, int, int, int]] = field(default_factory=list)
    prompts: int = 0
    masks_before_nms: int = 0
    seconds: float = 0.0
    encoder_runs: int = 0
    settings: AutomaticSettings | None = None

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def masks(self) -> np.ndarray:
        """NxHxW bool, one full-image mask per object (memory: N x H x W bytes)."""
        h, w = self.image_size
        out = np.zeros((len(self.instances), h, w), bool)
        for i, inst in enumerate(self.instances):
            out[(i, *inst.slices())] = inst.crop
        return out

    def review_order(self) -> list[int]:
        """Object indices, the ones a person should look at first first: highest boundary
        uncertainty (without adapter: lowest predicted IoU) first."""

        def key(i: int) -> tuple[float, float]:
            inst = self.instances[i]
            u = inst.boundary_uncertainty
            return (-(u if u is not None else -1.0), inst.predicted_iou)

        return sorted(range(len(self.instances)), key=key)

    def label_image(self, *, min_area: int = 1, dtype: Any = np.uint32) -> np.ndarray:
        """An HxW label image: object ``i`` (in :attr:`instances` order) gets label
        ``i + 1``. Overlaps: objects are painted from the largest to the smallest, so a
        small object inside a large one stays visible (micro-sam's rule); an object left
        with fewer than ``min_area`` visible pixels is dropped (its label is unused)."""
        h, w = self.image_size
        out = np.zeros((h, w), dtype)
        order = sorted(range(len(self.instances)), key=lambda i: -self.instances[i].area)
        for i in order:
            inst = self.instances[i]
            out[inst.slices()][inst.crop] = i + 1
        if min_area > 1 and len(self.instances):
            counts = np.bincount(out.ravel(), minlength=len(self.instances) + 1)
            small = np.flatnonzero(counts[1:] < min_area) + 1
            if small.size:
                out[np.isin(out, small)] = 0
        return out


# ---------------------------------------------------------------------------- windows
def tile_boxes(
    height: int, width: int, tile: int, overlap: float
) -> list[tuple[int, int, int, int]]:
    """Square tiles ``(x0, y0, x1, y1)`` of side ``tile`` (smaller where the image is)
    covering the image, neighbours overlapping by at least ``overlap`` x ``tile``; the last
    tile of a row/column ends at the image edge."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        step = max(1, int(tile * (1.0 - overlap)))
        k = math.ceil((n - tile) / step)
        # spread the k+1 tiles evenly between 0 and n - tile
        return [round(i * (n - tile) / k) for i in range(k + 1)]

    return [
        (x0, y0, min(x0 + tile, width), min(y0 + tile, height))
        for y0 in starts(height)
        for x0 in starts(width)
    ]


def box_scales_for(height: int, width: int, scales: tuple[int, ...]) -> list[int]:
    """The box sides proposed on an image: ``scales`` capped by its longer side, sorted,
    without repeats."""
    cap = max(1, max(height, width))
    return sorted({min(int(s), cap) for s in scales})


def lattice(n: int, side: float, spacing: float) -> list[float]:
    """Box centres (continuous coordinates, pixel ``i`` covers ``[i, i + 1)``) along an
    image side of ``n`` pixels for boxes of side ``side``: evenly from ``side / 2`` to ``n -
    side / 2`` (the boxes cover the side), neighbours at most ``spacing`` apart; one centre
    ``n / 2`` when the box is not shorter than the side."""
    if n <= side:
        return [n / 2.0]
    k = max(1, math.ceil((n - side) / spacing - 1e-9))
    return [side / 2.0 + i * (n - side) / k for i in range(k + 1)]


def _runs(m: int, k: int) -> list[range]:
    """Runs of ``k`` consecutive indices of ``range(m)`` covering all of them (the last run
    ends at ``m - 1``, overlapping its neighbour when ``k`` does not divide ``m``)."""
    if m <= k:
        return [range(m)]
    starts = list(range(0, m - k + 1, k))
    if starts[-1] != m - k:
        starts.append(m - k)
    return [range(a, a + k) for a in starts]


@dataclass(frozen=True)
class BoxWindow:
    """One window of box proposals: the object size, the zoomed window and its prompt
    boxes (Bx4 ``x0, y0, x1, y1`` inclusive pixel indices, clipped to the image)."""

    scale: int
    window: Window
    boxes: np.ndarray


def box_proposals(
    height: int,
    width: int,
    scales: tuple[int, ...],
    *,
    stride: float,
    per_window: int,
    context: float,
) -> list[BoxWindow]:
    """Box proposals of an image, grouped by window (see the module docstring): for each
    scale ``s`` (capped by the image) box centres on a lattice of spacing ``stride * s``
    covering the image, ``per_window`` x ``per_window`` neighbouring boxes per window of
    side ``context * s + (per_window - 1) * stride * s`` centred on them (every box has at
    least ``(context - 1) / 2 * s`` of context on each side; the window may reach past the
    image: zero padding, as for prompted zoomed windows)."""
    out: list[BoxWindow] = []
    for s in box_scales_for(height, width, scales):
        spacing = stride * s
        xs = lattice(width, s, spacing)
        ys = lattice(height, s, spacing)
        side = context * s + (per_window - 1) * spacing
        for ry in _runs(len(ys), per_window):
            for rx in _runs(len(xs), per_window):
                cx = float(np.mean([xs[i] for i in rx]))
                cy = float(np.mean([ys[j] for j in ry]))
                boxes = []
                for j in ry:
                    for i in rx:
                        x0 = int(round(xs[i] - s / 2.0))
                        y0 = int(round(ys[j] - s / 2.0))
                        boxes.append(
                            [
                                max(0, x0),
                                max(0, y0),
                                min(width - 1, x0 + s - 1),
                                min(height - 1, y0 + s - 1),
                            ]
                        )
                window = Window(cx - side / 2.0, cy - side / 2.0, side)
                out.append(BoxWindow(int(s), window, np.array(boxes, dtype=np.int64)))
    return out


def region_boxes(
    gray: np.ndarray,
    *,
    delta: int = 5,
    min_area: int = 30,
    max_fraction: float = 0.25,
    nms_thresh: float = 0.8,
) -> np.ndarray:
    """Nx4 inclusive pixel boxes of the maximally stable extremal regions (MSER) of a grey
    uint8 image, dark-on-bright and bright-on-dark, near-duplicates (box IoU above
    ``nms_thresh``) merged, smallest boxes first kept; boxes under 4 pixels dropped."""
    boxes = []
    max_area = max(min_area + 1, int(max_fraction * gray.size))
    for img in (gray, 255 - gray):
        mser = cv2.MSER_create(delta=int(delta), min_area=int(min_area), max_area=max_area)
        _, bb = mser.detectRegions(np.ascontiguousarray(img))
        boxes += [[x, y, x + w - 1, y + h - 1] for x, y, w, h in bb if min(w, h) >= 4]
    if not boxes:
        return np.zeros((0, 4), np.int64)
    arr = np.array(boxes, np.int64)
    arr = np.unique(arr, axis=0)
    area = (arr[:, 2] - arr[:, 0] + 1) * (arr[:, 3] - arr[:, 1] + 1)
    keep = batched_nms(
        torch.as_tensor(arr, dtype=torch.float64),
        torch.as_tensor(-area, dtype=torch.float64),
        torch.zeros(len(arr)),
        nms_thresh,
    )
    return arr[keep.numpy()]


def region_proposals(boxes: np.ndarray, context: float, min_window: float) -> list[BoxWindow]:
    """One window per box (:func:`pasam_plugins.zoom.window_around_box`: the geometry a
    prompted box gets), its scale the box's longer side."""
    out = []
    for b in np.asarray(boxes, np.int64).reshape(-1, 4):
        win = window_around_box(b, context=context, min_size=min_window)
        side = int(max(b[2] - b[0], b[3] - b[1]) + 1)
        out.append(BoxWindow(side, win, b[None]))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two Nx4 arrays of inclusive pixel boxes ``(x0, y0, x1, y1)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1, 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def passes(inst: Instance, s: AutomaticSettings) -> bool:
    """Whether an object passes the thresholds of ``s`` (predicted IoU, stability, box
    agreement, boundary uncertainty)."""
    if s.pred_iou_thresh > 0.0 and not inst.predicted_iou > s.pred_iou_thresh:
        return False
    if s.stability_score_thresh > 0.0 and inst.stability_score < s.stability_score_thresh:
        return False
    if (
        s.min_box_agreement > 0.0
        and inst.box_agreement is not None
        and inst.box_agreement < s.min_box_agreement
    ):
        return False
    u = s.max_boundary_uncertainty
    return not (
        u is not None and inst.boundary_uncertainty is not None and inst.boundary_uncertainty > u
    )


def select_boxes(
    candidates: list[Instance], s: AutomaticSettings, image_size: tuple[int, int]
) -> list[Instance]:
    """Box proposals' masks -> the objects: those passing ``s``'s filters (:func:`passes`),
    mask NMS across windows and scales by predicted IoU (threshold ``box_nms_thresh``),
    then the small-region cleanup. The last steps of :meth:`AutomaticSegmenter.generate`
    for box proposals; ``benchmarks/automatic_tune.py`` reruns them on stored masks."""
    kept = [i for i in candidates if passes(i, s)]
    if kept:
        scores = np.array([i.predicted_iou for i in kept])
        nms = box_nms if s.nms == "box" else mask_nms
        kept = [kept[i] for i in nms(kept, scores, s.box_nms_thresh)]
    if s.min_mask_region_area > 0:
        kept = postprocess_small_regions(
            kept, image_size, s.min_mask_region_area, s.box_nms_thresh, s.nms
        )
    return kept


# ---------------------------------------------------------------------------- NMS
def _box_overlaps(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which of ``boxes`` (Nx4 inclusive xyxy) intersect ``box``."""
    return (
        (boxes[:, 0] <= box[2])
        & (boxes[:, 2] >= box[0])
        & (boxes[:, 1] <= box[3])
        & (boxes[:, 3] >= box[1])
    )


def crop_iou(a: Instance, b: Instance) -> float:
    """Mask IoU of two box-cropped objects (computed on the boxes' intersection only)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    area_a, area_b = a.area, b.area
    if x0 > x1 or y0 > y1:
        inter = 0
    else:
        sa = a.crop[y0 - ay0 : y1 - ay0 + 1, x0 - ax0 : x1 - ax0 + 1]
        sb = b.crop[y0 - by0 : y1 - by0 + 1, x0 - bx0 : x1 - bx0 + 1]
        inter = int(np.count_nonzero(sa & sb))
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def mask_nms(instances: list[Instance], scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS on mask IoU: indices of the kept objects, highest score first; an object
    is dropped when its mask IoU with a kept one is above ``threshold``. ``scores`` may be
    Nx2 (sorted lexicographically, first column first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(instances):
        return []
    keys = scores.reshape(len(instances), -1)
    order = np.lexsort(tuple(-keys[:, c] for c in range(keys.shape[1] - 1, -1, -1)))
    boxes = np.array([inst.box for inst in instances], dtype=np.int64).reshape(-1, 4)
    kept: list[int] = []
    for i in order:
        i = int(i)
        if kept:
            kb = boxes[kept]
            near = np.flatnonzero(_box_overlaps(boxes[i], kb))
            if any(crop_iou(instances[i], instances[kept[j]]) > threshold for j in near):
                continue
        kept.append(i)
    return kept


def box_nms(instances: list[Instance], scores: np.ndarray, threshold: float) -> list[int]:
    """SAM's NMS: torchvision's on the bounding boxes (exclusive ends as SAM passes them:
    the inclusive pixel box as floats)."""
    if not instances:
        return []
    boxes = torch.as_tensor(np.array([inst.box for inst in instances]), dtype=torch.float)
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64).reshape(len(instances), -1)[:, 0])
    keep = batched_nms(boxes, s.float(), torch.zeros(len(instances)), iou_threshold=threshold)
    return [int(i) for i in keep]


# ---------------------------------------------------------------------------- cleanup
def _remove_small(crop: np.ndarray, pads: tuple[int, int, int, int], min_area: int, mode: str):
    """SAM's ``remove_small_regions`` on a box crop. ``pads`` (top, bottom, left, right):
    1 where the crop side is not the image edge, so background outside the box is one
    region there, as in the full image. Returns (mask, changed)."""
    top, bottom, left, right = pads
    holes = mode == "holes"
    work = np.pad(crop, ((top, bottom), (left, right)), constant_values=False)
    working = (holes ^ work).astype(np.uint8)
    n, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, -1].astype(np.int64)
    if holes and (top or bottom or left or right):
        # the region touching the padding is the background around the object: never a hole
        border = np.unique(
            np.concatenate(
                [
                    regions[0] if top else [],
                    regions[-1] if bottom else [],
                    regions[:, 0] if left else [],
                    regions[:, -1] if right else [],
                ]
            ).astype(np.int64)
        )
        sizes[border[border > 0] - 1] = np.iinfo(np.int64).max
    small = [i + 1 for i, s in enumerate(sizes) if s < min_area]
    if not small:
        return crop, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n) if i not in fill]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    out = np.isin(regions, fill)
    h, w = out.shape
    return out[top : h - bottom, left : w - right], True


def _shrink_to_box(inst: Instance, crop: np.ndarray) -> Instance | None:
    """``inst`` with a new mask of its old box, re-boxed (None when it became empty)."""
    ys, xs = np.nonzero(crop)
    if ys.size == 0:
        return None
    x0, y0 = inst.box[0], inst.box[1]
    r0, r1, c0, c1 = ys.min(), ys.max(), xs.min(), xs.max()
    return replace(
        inst,
        crop=np.ascontiguousarray(crop[r0 : r1 + 1, c0 : c1 + 1]),
        box=(int(x0 + c0), int(y0 + r0), int(x0 + c1), int(y0 + r1)),
    )


def postprocess_small_regions(
    instances: list[Instance],
    image_size: tuple[int, int],
    min_area: int,
    nms_thresh: float,
    nms: NmsMode,
) -> list[Instance]:
    """Fill holes and remove islands smaller than ``min_area`` pixels, then NMS again,
    preferring masks that needed no change (SAM's ``postprocess_small_regions``)."""
    if not instances:
        return instances
    h, w = image_size
    cleaned: list[Instance] = []
    scores = []
    for inst in instances:
        x0, y0, x1, y1 = inst.box
        pads = (int(y0 > 0), int(y1 < h - 1), int(x0 > 0), int(x1 < w - 1))
        crop, changed_h = _remove_small(inst.crop, pads, min_area, "holes")
        crop, changed_i = _remove_small(crop, pads, min_area, "islands")
        new = _shrink_to_box(inst, crop) if (changed_h or changed_i) else inst
        cleaned.append(new if new is not None else replace(inst, crop=np.zeros((1, 1), bool)))
        scores.append(0.0 if (changed_h or changed_i) else 1.0)
    keep = (box_nms if nms == "box" else mask_nms)(cleaned, np.array(scores), nms_thresh)
    return [cleaned[i] for i in keep if cleaned[i].area > 0]


# ---------------------------------------------------------------------------- segmenter
class AutomaticSegmenter:
    """Segments every object of an image with a :class:`PASamPredictor` (and its cache).

    Arguments:
      predictor: the model.
      settings: see :class:`AutomaticSettings` (default: its defaults).
      zoom: how the model sees objects; default from the model's metadata. Zoomed models
        are run on native-resolution tiles of their input size.
    """

    def __init__(
        self,
        predictor: PASamPredictor,
        settings: AutomaticSettings | None = None,
        *,
        zoom: ZoomSettings | None = None,
    ) -> None:
        self.predictor = predictor
        self.settings = settings or AutomaticSettings()
        model = predictor.model
        self.zoom = zoom if zoom is not None else ZoomSettings.from_metadata(model.origin.metadata)

    @property
    def model(self):
        return self.predictor.model

    @property
    def prompt_mode(self) -> str:
        """``"boxes"`` (box proposals in zoomed windows) or ``"points"`` (a point grid):
        ``settings.prompts``, where ``"auto"`` means boxes for zoomed models."""
        p = self.settings.prompts
        if p == "auto":
            return "boxes" if self.zoom is not None else "points"
        return p

    def proposals(self, height: int, width: int, rgb: np.ndarray | None = None) -> list[BoxWindow]:
        """Box proposals: the windows and their prompt boxes (:func:`box_proposals`, or
        :func:`region_proposals` of the normalized image ``rgb`` for ``box_source=
        "regions"``; without ``rgb`` those are unknown: empty list)."""
        s = self.settings
        context = s.box_context
        if context is None:
            context = self.zoom.box_context if self.zoom is not None else BOX_CONTEXT
        if s.box_source == "regions":
            if rgb is None:
                return []
            gray = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb[..., :3], cv2.COLOR_RGB2GRAY)
            boxes = region_boxes(
                gray,
                delta=s.region_delta,
                min_area=s.region_min_area,
                max_fraction=s.region_max_fraction,
                nms_thresh=s.region_nms,
            )
            min_window = self.zoom.min_window if self.zoom is not None else MIN_WINDOW
            return region_proposals(boxes, float(context), min_window)
        return box_proposals(
            height,
            width,
            s.box_scales,
            stride=s.box_stride,
            per_window=s.boxes_per_window,
            context=float(context),
        )

    def windows(self, height: int, width: int) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """The windows ``(x0, y0, x1, y1)`` the image is segmented in and their layer (box
        proposals: the image pixels of each window, layer = index of its scale)."""
        s = self.settings
        if self.prompt_mode == "boxes":
            props = self.proposals(height, width)
            scales = sorted({p.scale for p in props})
            out = []
            for p in props:
                r0, r1, c0, c1 = p.window.pixel_bounds(height, width)
                out.append((c0, r0, c1, r1))
            return out, [scales.index(p.scale) for p in props]
        tile = s.tile_size
        if tile is None and self.zoom is not None:
            tile = self.model.img_size
        if tile is not None:
            boxes = tile_boxes(height, width, int(tile), s.tile_overlap)
            return boxes, [0] * len(boxes)
        boxes, layers = generate_crop_boxes((height, width), s.crop_n_layers, s.crop_overlap_ratio)
        return [tuple(int(v) for v in b) for b in boxes], list(layers)  # type: ignore[misc]

    def plan(self, height: int, width: int) -> int:
        """Number of progress steps (decoder batches plus one embedding per window)."""
        s = self.settings
        if self.prompt_mode == "boxes":
            if s.box_source == "regions":
                # known with the image only: an estimate (steps() yields the exact total)
                return 2 * max(1, height * width // 400)
            return 2 * len(self.proposals(height, width))  # one decoder call per window
        boxes, layers = self.windows(height, width)
        grids = self._grids(max(layers) if layers else 0)
        per = [math.ceil(len(grids[layer]) / s.points_per_batch) + 1 for layer in layers]
        return int(sum(per))

    def _grids(self, n_layers: int) -> list[np.ndarray]:
        s = self.settings
        return build_all_layer_point_grids(
            s.points_per_side, n_layers, s.crop_n_points_downscale_factor
        )

    def generate(
        self,
        image: np.ndarray,
        *,
        channel: int | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> AutomaticResult:
        """Find every object of ``image`` (any dtype/channels, see :func:`normalize_image`).

        ``progress(done, total)`` is called after each embedding and decoder batch;
        ``cancel()`` returning True stops early (returns what was found so far)."""
        steps = self.steps(image, channel=channel, cancel=cancel)
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(done, total)

    @torch.no_grad()
    def steps(
        self,
        image: np.ndarray,
        *,
        channel: int | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Generator[tuple[int, int], None, AutomaticResult]:
        """:meth:`generate` as a generator: yields ``(done, total)`` after each embedding and
        decoder batch (for thread workers with progress bars, which may stop between
        steps) and returns the :class:`AutomaticResult`."""
        t0 = time.perf_counter()
        s = self.settings
        if s.max_boundary_uncertainty is not None and not (
            s.use_adapter and self.model.has_adapter
        ):
            raise ValueError(
                "the boundary-uncertainty filter needs the PA-SAM adapter (this model has "
                "none, or use_adapter is off): set max_boundary_uncertainty to None"
            )
        rgb = normalize_image(image, channel=channel, percentiles=self.predictor.percentiles)
        if self.prompt_mode == "boxes":
            return (yield from self._box_steps(rgb, t0, cancel))
        h, w = rgb.shape[:2]
        boxes, layers = self.windows(h, w)
        grids = self._grids(max(layers) if layers else 0)
        total = self.plan(h, w)
        done = 0
        runs0 = self.predictor.encoder_runs
        found: list[Instance] = []
        prompts = 0
        before = 0  # masks that passed the filters, before NMS
        pred = self.predictor
        for box, layer in zip(boxes, layers, strict=True):
            if cancel is not None and cancel():
                break
            x0, y0, x1, y1 = box
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            pred.set_image(crop)  # the embedding cache makes a second run encoder-free
            done += 1
            yield done, total
            points = grids[layer] * np.array(crop.shape[:2])[None, ::-1]
            in_window: list[Instance] = []
            for start in range(0, len(points), s.points_per_batch):
                if cancel is not None and cancel():
                    break
                batch = points[start : start + s.points_per_batch]
                in_window += _process_batch(self, batch, crop.shape[:2], box, (h, w))
                prompts += len(batch)
                done += 1
                yield done, total
            before += len(in_window)
            if in_window:
                # duplicates inside the window (SAM: box NMS by predicted IoU)
                scores = np.array([i.predicted_iou for i in in_window])
                nms = box_nms if s.nms == "box" else mask_nms
                in_window = [in_window[i] for i in nms(in_window, scores, s.box_nms_thresh)]
            found += in_window
        if len(boxes) > 1 and found:
            # duplicates between windows: prefer masks from smaller windows (SAM), then by
            # predicted IoU
            areas = np.array(
                [(i.window[2] - i.window[0]) * (i.window[3] - i.window[1]) for i in found]
            )
            scores = np.stack([1.0 / areas, [i.predicted_iou for i in found]], axis=1)
            if s.nms == "box":
                keep = box_nms(found, scores[:, :1], s.crop_nms_thresh)
            else:
                keep = mask_nms(found, scores, s.crop_nms_thresh)
            found = [found[i] for i in keep]
        if s.min_mask_region_area > 0:
            found = postprocess_small_regions(
                found,
                (h, w),
                s.min_mask_region_area,
                max(s.box_nms_thresh, s.crop_nms_thresh),
                s.nms,
            )
        return AutomaticResult(
            instances=found,
            image_size=(h, w),
            windows=list(boxes),
            prompts=prompts,
            masks_before_nms=before,
            seconds=time.perf_counter() - t0,
            encoder_runs=self.predictor.encoder_runs - runs0,
            settings=s,
        )

    def _box_steps(
        self, rgb: np.ndarray, t0: float, cancel: Callable[[], bool] | None
    ) -> Generator[tuple[int, int], None, AutomaticResult]:
        """:meth:`steps` for box proposals: per window one embedding (cached) and one
        decoder call with all its boxes, then :func:`select_boxes`."""
        s = self.settings
        h, w = rgb.shape[:2]
        runs0 = self.predictor.encoder_runs
        found, windows, prompts = yield from self._box_masks(rgb, cancel)
        return AutomaticResult(
            instances=select_boxes(found, s, (h, w)),
            image_size=(h, w),
            windows=windows,
            prompts=prompts,
            masks_before_nms=len(found),
            seconds=time.perf_counter() - t0,
            encoder_runs=self.predictor.encoder_runs - runs0,
            settings=s,
        )

    def _box_masks(
        self, rgb: np.ndarray, cancel: Callable[[], bool] | None
    ) -> Generator[
        tuple[int, int], None, tuple[list[Instance], list[tuple[int, int, int, int]], int]
    ]:
        h, w = rgb.shape[:2]
        props = self.proposals(h, w, rgb)
        total = 2 * len(props)
        done = 0
        n = self.model.img_size
        found: list[Instance] = []
        windows: list[tuple[int, int, int, int]] = []
        prompts = 0
        for prop in props:
            if cancel is not None and cancel():
                break
            self.predictor.set_image(zoom_crop(rgb, prop.window, n))  # cached embeddings
            done += 1
            yield done, total
            found += _process_boxes(self, prop, (h, w))
            r0, r1, c0, c1 = prop.window.pixel_bounds(h, w)
            windows.append((c0, r0, c1, r1))
            prompts += len(prop.boxes)
            done += 1
            yield done, total
        return found, windows, prompts

    @torch.no_grad()
    def box_candidates(
        self, image: np.ndarray, *, channel: int | None = None
    ) -> tuple[list[Instance], tuple[int, int]]:
        """Box proposals without NMS: every mask that passed the settings' filters in its
        window, and the image size. With the thresholds at 0, :func:`select_boxes` then
        gives the result of any thresholds from these masks (threshold sweeps)."""
        rgb = normalize_image(image, channel=channel, percentiles=self.predictor.percentiles)
        gen = self._box_masks(rgb, None)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value[0], (int(rgb.shape[0]), int(rgb.shape[1]))


def _process_boxes(
    seg: AutomaticSegmenter, prop: BoxWindow, orig_size: tuple[int, int]
) -> list[Instance]:
    """One decoder call for the boxes of one zoomed window (its embedding set); masks in
    the image frame (low-res logits pasted bilinearly onto the window's image pixels); the
    filters of :func:`passes` and the inner-edge rule; box crops."""
    s = seg.settings
    pred = seg.predictor
    model = pred.model
    dev = pred.device
    n = model.img_size
    win = prop.window
    h0, w0 = orig_size
    inp = np.stack([win.box_to_input(b, n) for b in prop.boxes])
    inp = pred.transform.apply_boxes(inp, (n, n))  # the identity for n-px windows
    use_adapter = bool(s.use_adapter and model.has_adapter)
    with pred._autocast():
        out = model.decode(
            pred.features,
            guide=pred.guide,
            boxes=torch.as_tensor(inp, dtype=torch.float, device=dev),
            multimask_output=False,
            use_adapter=use_adapter,
        )
    iou = out.iou_predictions.float()[:, 0].cpu()
    idx = _iou_survivors(iou, s.pred_iou_thresh)
    if idx.numel() == 0:
        return []
    low = out.masks.float()[idx.to(out.masks.device), 0].cpu().numpy()
    part, (r0, r1, c0, c1) = paste_part(low, win, h0, w0)
    if part.shape[-1] == 0 or part.shape[-2] == 0:
        return []
    masks, mboxes, stability, ok = _mask_filters(  # boxes in the window part's frame
        torch.from_numpy(part),
        model.mask_threshold,
        s,
        [c0, r0, c1, r1],
        (h0, w0),
        s.box_edge_tolerance,
    )
    sel = torch.nonzero(ok).flatten().numpy()
    if sel.size == 0:
        return []
    off = np.array([c0, r0, c0, r0])
    mboxes_np = mboxes.numpy().astype(np.int64) + off
    prompt = prop.boxes[idx.numpy()]
    agree = box_iou(mboxes_np, prompt)
    unc_part = None
    if out.uncertainty is not None:
        unc_low = out.uncertainty.float()[idx.to(out.uncertainty.device), 0].cpu().numpy()
        unc_part = np.clip(paste_part(unc_low, win, h0, w0)[0], 0.0, 1.0)
    masks_np = masks.numpy()
    d = erosion_iterations(h0, w0, UNCERTAINTY_BAND_RATIO)
    window = (c0, r0, c1, r1)
    result: list[Instance] = []
    for k in sel:
        if s.min_box_agreement > 0.0 and agree[k] < s.min_box_agreement:
            continue
        bx0, by0, bx1, by1 = (int(v) for v in mboxes_np[k] - off)
        kept, mean_u, band_u = _kept_uncertainty(
            s, None if unc_part is None else unc_part[k], masks_np[k], (bx0, by0, bx1, by1), d
        )
        if not kept:
            continue
        pb = tuple(int(v) for v in prompt[k])
        result.append(
            Instance(
                crop=np.ascontiguousarray(masks_np[k, by0 : by1 + 1, bx0 : bx1 + 1]),
                box=(bx0 + c0, by0 + r0, bx1 + c0, by1 + r0),
                predicted_iou=float(iou[idx[k]]),
                stability_score=float(stability[k]),
                point=((pb[0] + pb[2]) / 2.0, (pb[1] + pb[3]) / 2.0),
                window=window,
                mean_uncertainty=mean_u,
                boundary_uncertainty=band_u,
                prompt_box=pb,  # type: ignore[arg-type]
                box_agreement=float(agree[k]),
                scale=prop.scale,
            )
        )
    return result


def _process_batch(
    seg: AutomaticSegmenter,
    points: np.ndarray,
    im_size: tuple[int, int],
    crop_box: tuple[int, int, int, int],
    orig_size: tuple[int, int],
) -> list[Instance]:
    """One decoder call for a batch of grid points of one window; the filters; box crops."""
    s = seg.settings
    pred = seg.predictor
    model = pred.model
    dev = pred.device
    # float64 coordinates, as SamAutomaticMaskGenerator passes them (the prompt encoder
    # adds 0.5 and normalizes before casting to float32)
    coords = torch.as_tensor(pred.transform.apply_coords(points, im_size), device=dev)
    labels = torch.ones(coords.shape[0], dtype=torch.int, device=dev)
    use_adapter = bool(s.use_adapter and model.has_adapter)
    with pred._autocast():
        out = model.decode(
            pred.features,
            guide=pred.guide,
            points=(coords[:, None, :], labels[:, None]),
            multimask_output=True,
            use_adapter=use_adapter,
        )
    low = out.masks.float()  # B x C x 4G x 4G (C = 1 with the adapter, 3 without)
    iou = out.iou_predictions.float()[:, : low.shape[1]]
    c = low.shape[1]
    low = low.flatten(0, 1)
    iou = iou.flatten(0, 1)
    src = torch.arange(len(points), device=dev).repeat_interleave(c)
    idx = _iou_survivors(iou, s.pred_iou_thresh)
    if idx.numel() == 0:
        return []
    # full-resolution logits of the survivors only (SAM's postprocess_masks)
    logits = pred._upsample(low[idx][:, None])[:, 0]
    h0, w0 = orig_size
    masks, boxes, stability, ok = _mask_filters(
        logits, model.mask_threshold, s, list(crop_box), (h0, w0), s.edge_tolerance
    )
    sel = torch.nonzero(ok).flatten()
    if sel.numel() == 0:
        return []
    unc_maps = None
    if out.uncertainty is not None:
        # the uncertainty map of each survivor at full resolution (as the predictor's)
        unc_maps = pred._upsample(out.uncertainty.float()[src[idx[sel]]])[:, 0].clamp_(0.0, 1.0)
        unc_maps = unc_maps.cpu().numpy()
    masks_np = masks[sel].cpu().numpy()
    boxes_np = boxes[sel].cpu().numpy().astype(np.int64)
    x_off, y_off = crop_box[0], crop_box[1]
    d = erosion_iterations(h0, w0, UNCERTAINTY_BAND_RATIO)
    result: list[Instance] = []
    for k in range(len(sel)):
        bx0, by0, bx1, by1 = (int(v) for v in boxes_np[k])
        crop = np.ascontiguousarray(masks_np[k, by0 : by1 + 1, bx0 : bx1 + 1])
        kept, mean_u, band_u = _kept_uncertainty(
            s, None if unc_maps is None else unc_maps[k], masks_np[k], (bx0, by0, bx1, by1), d
        )
        if not kept:
            continue
        pi = int(src[idx[sel[k]]])
        result.append(
            Instance(
                crop=crop,
                box=(bx0 + x_off, by0 + y_off, bx1 + x_off, by1 + y_off),
                predicted_iou=float(iou[idx[sel[k]]]),
                stability_score=float(stability[sel[k]]),
                point=(float(points[pi, 0] + x_off), float(points[pi, 1] + y_off)),
                window=tuple(int(v) for v in crop_box),  # type: ignore[arg-type]
                mean_uncertainty=mean_u,
                boundary_uncertainty=band_u,
            )
        )
    return result


def _mask_filters(
    logits: torch.Tensor,
    threshold: float,
    s: AutomaticSettings,
    crop_box: list[int],
    image_size: tuple[int, int],
    edge_tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's per-mask filters after the predicted IoU, for NxHxW ``logits`` of a crop:
    ``(masks, boxes, stability, ok)`` with ``ok`` = stable enough (when
    ``stability_score_thresh`` is set), not cut by the crop's edge (``crop_box`` x0, y0,
    x1, y1 inside an image of ``image_size`` (h, w)) and not empty (never an object)."""
    stability = calculate_stability_score(logits, threshold, s.stability_score_offset)
    ok = torch.ones_like(stability, dtype=torch.bool)
    if s.stability_score_thresh > 0.0:
        ok = stability >= s.stability_score_thresh
    masks = logits > threshold
    boxes = batched_mask_to_box(masks)
    h, w = image_size
    ok &= ~is_box_near_crop_edge(boxes, crop_box, [0, 0, w, h], atol=edge_tolerance)
    ok &= masks.flatten(1).any(1)
    return masks, boxes, stability, ok


def _iou_survivors(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the masks whose predicted IoU passes ``threshold`` (all when it is 0)."""
    if threshold <= 0.0:
        return torch.arange(len(iou), device=iou.device)
    return torch.nonzero(iou > threshold).flatten()


def crop_uncertainty(
    unc: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], d: int
) -> tuple[float | None, float | None]:
    """(mean uncertainty inside the mask, over its boundary band) of an HxW uncertainty map
    and bool mask (a window of the image), around the mask's inclusive ``box`` only, with the
    whole image's band width ``d``: :func:`pasam_plugins.segment.summarize_uncertainty`."""
    x0, y0, x1, y1 = box
    s = summarize_uncertainty(mask, unc, bounds=(y0, y1 + 1, x0, x1 + 1), iterations=d)
    return s.mean, s.boundary


def _kept_uncertainty(
    s: "AutomaticSettings",
    unc: np.ndarray | None,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    d: int,
) -> tuple[bool, float | None, float | None]:
    """(kept by the boundary-uncertainty filter, mean, boundary uncertainty) of one mask."""
    if unc is None:
        return True, None, None
    mean_u, band_u = crop_uncertainty(unc, mask, box, d)
    limit = s.max_boundary_uncertainty
    return limit is None or band_u is None or band_u <= limit, mean_u, band_u


# ---------------------------------------------------------------------------- outputs
#: share of the objects (the most uncertain ones) flagged for review first
REVIEW_FRACTION = 0.2


def review_flags(result: AutomaticResult, fraction: float = REVIEW_FRACTION) -> np.ndarray:
    """N bool: the ``fraction`` most uncertain objects (by boundary uncertainty; at least
    one when there are objects with an uncertainty), the ones a person should check first.
    All False without the adapter."""
    n = len(result.instances)
    flags = np.zeros(n, bool)
    if not n or all(i.boundary_uncertainty is None for i in result.instances):
        return flags
    k = max(1, int(math.ceil(fraction * n))) if fraction > 0 else 0
    flags[result.review_order()[:k]] = True
    return flags


def instance_attributes(result: AutomaticResult) -> list[dict[str, Any]]:
    """Per object (in :attr:`AutomaticResult.instances` order) the attributes every output
    carries: predicted IoU, stability, uncertainties, the grid point, the review rank (1 =
    look first) and the review flag."""
    rank = np.empty(len(result.instances), np.int64)
    rank[result.review_order()] = np.arange(1, len(result.instances) + 1)
    flags = review_flags(result)
    rows = []
    for i, inst in enumerate(result.instances):
        rows.append(
            {
                "predicted_iou": round(inst.predicted_iou, 6),
                "stability_score": round(inst.stability_score, 6),
                "mean_uncertainty": None
                if inst.mean_uncertainty is None
                else round(inst.mean_uncertainty, 6),
                "boundary_uncertainty": None
                if inst.boundary_uncertainty is None
                else round(inst.boundary_uncertainty, 6),
                "point_x": inst.point[0],
                "point_y": inst.point[1],
                "review_rank": int(rank[i]),
                "needs_review": bool(flags[i]),
            }
        )
    return rows


def result_objects(result: AutomaticResult, *, min_area: int = 1, category: str = "object"):
    """``(labels HxW, [(label, ExportObject)])``: the label image of the result (see
    :meth:`AutomaticResult.label_image`) and its visible objects with their attributes."""
    from .export import objects_from_labels

    labels = result.label_image(min_area=min_area)
    attrs = {i + 1: a for i, a in enumerate(instance_attributes(result))}
    return labels, objects_from_labels(labels, attrs, category=category)
