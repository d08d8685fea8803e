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
project's 256-px models, which see one object at a time when prompted) see the image at
native resolution in square tiles of the model's input size that overlap by
``tile_overlap``; masks cut by a tile edge (not an image edge) are dropped there and come
from the neighbouring tile, and NMS runs across tiles.

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
from .segment import ZoomSettings

NmsMode = Literal["box", "mask"]
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

    @classmethod
    def sam(cls, **changes: Any) -> "AutomaticSettings":
        """SamAutomaticMaskGenerator's behaviour: adapter off, no uncertainty filter, box NMS
        (plus ``changes``)."""
        base = cls(use_adapter=False, max_boundary_uncertainty=None, nms="box")
        return replace(base, **changes)


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
    """

    crop: np.ndarray
    box: tuple[int, int, int, int]
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    window: tuple[int, int, int, int]
    mean_uncertainty: float | None = None
    boundary_uncertainty: float | None = None

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

    def windows(self, height: int, width: int) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """The windows ``(x0, y0, x1, y1)`` the image is segmented in and their layer."""
        s = self.settings
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
    keep = torch.ones_like(iou, dtype=torch.bool)
    if s.pred_iou_thresh > 0.0:
        keep = iou > s.pred_iou_thresh
    idx = torch.nonzero(keep).flatten()
    if idx.numel() == 0:
        return []
    # full-resolution logits of the survivors only (SAM's postprocess_masks)
    logits = pred._upsample(low[idx][:, None])[:, 0]
    thr = model.mask_threshold
    stability = calculate_stability_score(logits, thr, s.stability_score_offset)
    ok = torch.ones_like(stability, dtype=torch.bool)
    if s.stability_score_thresh > 0.0:
        ok = stability >= s.stability_score_thresh
    masks = logits > thr
    boxes = batched_mask_to_box(masks)
    h0, w0 = orig_size
    ok &= ~is_box_near_crop_edge(boxes, list(crop_box), [0, 0, w0, h0], atol=s.edge_tolerance)
    ok &= masks.flatten(1).any(1)  # empty masks are never objects
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
        mean_u = band_u = None
        if unc_maps is not None:
            mean_u, band_u = crop_uncertainty(unc_maps[k], masks_np[k], (bx0, by0, bx1, by1), d)
            if (
                s.max_boundary_uncertainty is not None
                and band_u is not None
                and band_u > s.max_boundary_uncertainty
            ):
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


def crop_uncertainty(
    unc: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], d: int
) -> tuple[float | None, float | None]:
    """(mean uncertainty inside the mask, over its boundary band) of an HxW uncertainty map
    and bool mask: the values :func:`pasam_plugins.segment.summarize` gives, computed
    around the mask's ``box`` only (the band reaches ``d`` pixels past the box; the image
    border is not a boundary)."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    r0, r1 = max(0, y0 - d), min(h, y1 + d + 1)
    c0, c1 = max(0, x0 - d), min(w, x1 + d + 1)
    u = unc[r0:r1, c0:c1]
    m = mask[r0:r1, c0:c1]
    if not m.any():
        return None, None
    inside = float(u[m].mean())
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1))
    mu8 = m.astype(np.uint8)
    # where the window is cut short of d pixels past the box, it ends at the image border,
    # where BORDER_REPLICATE is what the full image gets (see metrics.uncertainty_band)
    band = cv2.dilate(mu8, k) > cv2.erode(mu8, k, borderType=cv2.BORDER_REPLICATE)
    return inside, float(u[band].mean()) if band.any() else inside


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
