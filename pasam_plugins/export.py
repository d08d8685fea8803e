"""The formats annotation teams exchange objects in: COCO (RLE or polygons), label images,
CSV tables, and polygons for Label Studio. Shared by the CLI, the Label Studio backend and
the napari plugin.

Conventions:

- An object is an :class:`ExportObject`: a bool mask cropped to its bounding box, the box
  ``(x0, y0, x1, y1)`` of its extreme pixels (inclusive), a category name and a dict of
  attributes (scores, uncertainty ...).
- Polygons are in continuous image coordinates: pixel ``(row r, column c)`` covers
  ``[c, c + 1) x [r, r + 1)``, so polygon vertices lie on pixel edges and a pixel belongs
  to a polygon when its centre ``(c + 0.5, r + 0.5)`` is inside (COCO's and Label Studio's
  convention). :func:`mask_to_polygon` traces the exact outline of the pixels (the "crack"
  boundary), then simplifies it with Douglas-Peucker to ``tolerance`` pixels. Holes and
  separate parts are joined into one ring by zero-width cuts (a "keyhole" polygon), which
  every even-odd or nonzero rasterizer (pycocotools, Label Studio's canvas) fills as the
  mask with its holes.
- COCO RLE: column-major run lengths starting with a background run, stored compressed as
  pycocotools' ``counts`` string (:func:`coco_rle_encode`, checked against pycocotools in
  the tests); pycocotools itself is not needed.
"""

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: default polygon simplification tolerance (pixels)
POLYGON_TOLERANCE = 1.0
#: a simplified polygon filled back must keep at least this IoU with its mask
MIN_POLYGON_IOU = 0.95
_NUDGES = tuple(np.array(v) for v in ([0.1, 0.1], [0.1, -0.1], [-0.1, 0.1], [-0.1, -0.1]))


# ---------------------------------------------------------------------------- objects
@dataclass
class ExportObject:
    """One object to export: a bool mask of its box, the box, a category, attributes."""

    crop: np.ndarray
    box: tuple[int, int, int, int]
    category: str = "object"
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    @property
    def bbox_xywh(self) -> list[int]:
        x0, y0, x1, y1 = self.box
        return [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]

    def mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = self.crop
        return out

    @classmethod
    def from_mask(
        cls, mask: np.ndarray, category: str = "object", **attributes: Any
    ) -> "ExportObject | None":
        """From an HxW mask (None when it is empty)."""
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return None
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        crop = np.ascontiguousarray(np.asarray(mask, bool)[y0 : y1 + 1, x0 : x1 + 1])
        return cls(crop=crop, box=(x0, y0, x1, y1), category=category, attributes=attributes)


def objects_from_labels(
    labels: np.ndarray,
    attributes: dict[int, dict[str, Any]] | None = None,
    *,
    category: str = "object",
) -> list[tuple[int, ExportObject]]:
    """``(label value, object)`` for every nonzero value of an HxW label image, in label
    order; ``attributes[label]`` (e.g. a napari layer's features row) goes with it."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"a label image must be 2D, got shape {lab.shape}")
    attributes = attributes or {}
    out: list[tuple[int, ExportObject]] = []
    flat = lab.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return out
    values = flat[idx]
    order = np.argsort(values, kind="stable")
    idx, values = idx[order], values[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    rows, cols = np.divmod(idx, lab.shape[1])
    for k, s0 in enumerate(starts):
        s1 = starts[k + 1] if k + 1 < len(starts) else idx.size
        value = values[s0].item()
        r, c = rows[s0:s1], cols[s0:s1]
        y0, y1, x0, x1 = int(r.min()), int(r.max()), int(c.min()), int(c.max())
        crop = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
        crop[r - y0, c - x0] = True
        attrs = dict(attributes.get(value, {}))
        cat = str(attrs.pop("category", category))
        out.append(
            (value, ExportObject(crop=crop, box=(x0, y0, x1, y1), category=cat, attributes=attrs))
        )
    return out


def label_image(
    objects: Sequence[ExportObject], height: int, width: int, *, dtype: Any = None
) -> np.ndarray:
    """An HxW label image, object ``i`` -> ``i + 1``; overlaps: larger objects first, so
    smaller ones stay visible. dtype: uint16 when it fits, else uint32."""
    if dtype is None:
        dtype = np.uint16 if len(objects) < 65535 else np.uint32
    out = np.zeros((height, width), dtype)
    for i in sorted(range(len(objects)), key=lambda i: -objects[i].area):
        o = objects[i]
        x0, y0, x1, y1 = o.box
        out[y0 : y1 + 1, x0 : x1 + 1][o.crop] = i + 1
    return out


# ---------------------------------------------------------------------------- COCO RLE
def coco_rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of an HxW mask: column-major runs, background first."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return [int(c) for c in counts]


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' ``rleToString``: differences to the run two back (from the 4th run on),
    5 bits per character with a continuation bit, offset by 48."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_string_to_counts(s: str) -> list[int]:
    """pycocotools' ``rleFrString``."""
    counts: list[int] = []
    p = 0
    data = s.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated COCO RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """HxW mask -> ``{"size": [h, w], "counts": str}`` (pycocotools ``mask.encode``)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    return {
        "size": [int(m.shape[0]), int(m.shape[1])],
        "counts": rle_counts_to_string(coco_rle_counts(m)),
    }


def coco_rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (compressed string or uncompressed list counts) -> HxW bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a COCO RLE (needs 'size' [h, w] and 'counts'): {e}") from None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts)
    counts = [int(c) for c in counts]
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise ValueError(f"COCO RLE counts sum to {sum(counts)}, expected {h} x {w} = {h * w}")
    vals = np.zeros(len(counts), bool)
    vals[1::2] = True
    flat = np.repeat(vals, counts)
    return flat.reshape((w, h)).T.copy()


# ---------------------------------------------------------------------------- polygons
def _clean_ring(ring: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear (axis-aligned) vertices of a closed ring."""
    if len(ring) < 3:
        return ring
    r = ring[np.any(ring != np.roll(ring, 1, axis=0), axis=1)]
    if len(r) < 3:
        return r
    prev, nxt = np.roll(r, 1, axis=0), np.roll(r, -1, axis=0)
    cross = (r[:, 0] - prev[:, 0]) * (nxt[:, 1] - r[:, 1]) - (r[:, 1] - prev[:, 1]) * (
        nxt[:, 0] - r[:, 0]
    )
    return r[cross != 0]


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on the midpoints of the outline's unit steps: the pixel staircase of
    a slanted edge becomes the straight line through the middle of its steps (instead of
    one through its outer or inner corners), so simplifying costs small objects little."""
    nxt = np.roll(ring, -1, axis=0)
    steps = np.abs(nxt - ring).max(axis=1).astype(np.int64)
    steps = np.maximum(steps, 1)
    k = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    start = np.repeat(ring, steps, axis=0)
    direction = np.repeat((nxt - ring) / steps[:, None], steps, axis=0)
    dense = start + direction * k[:, None]
    mid = (dense + np.roll(dense, -1, axis=0)) / 2.0
    out = cv2.approxPolyDP(mid.astype(np.float32).reshape(-1, 1, 2), tolerance, True)
    return out.reshape(-1, 2).astype(np.float64)


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@dataclass
class Polygon:
    """One connected part of a mask: its outer ring and its holes (Nx2 float (x, y))."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance: float = POLYGON_TOLERANCE,
    offset: tuple[float, float] = (0.0, 0.0),
) -> list[Polygon]:
    """The parts of a bool mask as polygons with holes, in continuous pixel coordinates
    (see the module docstring), simplified to ``tolerance`` pixels (0: exact outline).
    ``offset`` (x, y) is added to every vertex (for box crops)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if not m.any():
        return []
    # pixel (r, c) -> the 2x2 block (2r+1.., 2c+1..) of a padded double-resolution mask:
    # there, a boundary pixel's coordinate k maps to the pixel edge ceil((k - 1) / 2), so
    # outer contours and hole contours (both traced on foreground pixels) land exactly on
    # the edges between object and background pixels
    m2 = np.zeros((2 * m.shape[0] + 2, 2 * m.shape[1] + 2), np.uint8)
    m2[1:-1, 1:-1] = np.repeat(np.repeat(m, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(m2, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hier = hierarchy[0]
    ox, oy = offset

    def ring_of(contour: np.ndarray) -> np.ndarray | None:
        pts = contour.reshape(-1, 2).astype(np.int64)
        ring = np.ceil((pts - 1) / 2.0)
        ring = _clean_ring(ring)
        if len(ring) < 3:
            return None
        if tolerance > 0 and len(ring) > 4:
            simple = _simplify(ring, tolerance)
            if len(simple) >= 3 and abs(_ring_area(simple)) > 0:
                ring = simple
        return ring + np.array([ox, oy])

    polygons: list[Polygon] = []
    for i, h in enumerate(hier):
        if h[3] >= 0:  # a hole: attached to its parent below
            continue
        ext = ring_of(contours[i])
        if ext is None:
            continue
        holes = []
        child = h[2]
        while child >= 0:
            hole = ring_of(contours[child])
            if hole is not None:
                holes.append(hole)
            child = hier[child][0]
        polygons.append(Polygon(exterior=ext, holes=holes))
    return polygons


def _bridge(ring: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``ring`` and ``inner`` joined into one ring by a zero-width cut between their closest
    vertices (there and back)."""
    d = ((ring[:, None, :] - inner[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    inner_rot = np.concatenate([inner[j:], inner[: j + 1]])
    return np.concatenate([ring[: i + 1], inner_rot, ring[i:]])


def polygons_to_ring(polygons: Sequence[Polygon]) -> np.ndarray | None:
    """All parts and holes as one keyhole ring (Nx2), or None without polygons."""
    if not polygons:
        return None
    parts = sorted(polygons, key=lambda p: -abs(_ring_area(p.exterior)))
    ring = parts[0].exterior
    for hole in parts[0].holes:
        ring = _bridge(ring, hole)
    for part in parts[1:]:
        sub = part.exterior
        for hole in part.holes:
            sub = _bridge(sub, hole)
        ring = _bridge(ring, sub)
    return ring


def mask_to_polygon(
    mask: np.ndarray,
    *,
    tolerance: float = POLYGON_TOLERANCE,
    offset: tuple[float, float] = (0.0, 0.0),
    min_iou: float = MIN_POLYGON_IOU,
) -> np.ndarray | None:
    """A bool mask as one simplified keyhole ring (Nx2 float (x, y)), holes and separate
    parts included; None for an empty mask.

    The outline is simplified to ``tolerance`` pixels, less where that would change the
    mask: when the ring filled by pixel centre has IoU below ``min_iou`` with the mask (thin
    slivers, objects of a few pixels), the tolerance is halved until it does (0: the exact
    pixel outline, IoU 1)."""
    m = np.asarray(mask, bool)
    tol = float(tolerance)
    while True:
        ring = polygons_to_ring(mask_to_polygons(m, tolerance=tol))
        if ring is None:
            return None
        if tol <= 0.0 or min_iou <= 0.0:
            break
        # judged with pixel centres nudged both ways: an edge through a pixel centre is a
        # tie that other readers (pycocotools, Label Studio) may break the other way
        ious = []
        for nudge in _NUDGES:
            back = ring_to_mask(ring + nudge, *m.shape)
            ious.append(np.count_nonzero(back & m) / max(1, np.count_nonzero(back | m)))
        if min(ious) >= min_iou:
            break
        tol = tol / 2.0 if tol > 0.2 else 0.0
    return ring + np.array([offset[0], offset[1]], dtype=np.float64)


def _shoelace_fill(ring: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exact centre-inside (even-odd) rasterization of one ring (used for keyhole rings)."""
    r = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((height, width), bool)
    if len(r) < 3:
        return out
    x0, y0 = r[:, 0], r[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo = max(0, int(math.floor(r[:, 1].min() - 0.5)))
    hi = min(height, int(math.ceil(r[:, 1].max() + 0.5)))
    cols = np.arange(width) + 0.5
    for row in range(lo, hi):
        yc = row + 0.5
        cross = (y0 <= yc) != (y1 <= yc)
        if not cross.any():
            continue
        xs = x0[cross] + (yc - y0[cross]) * (x1[cross] - x0[cross]) / (y1[cross] - y0[cross])
        xs.sort()
        inside = np.searchsorted(xs, cols, side="right") % 2 == 1
        out[row] = inside
    return out


def ring_to_mask(ring: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ring (e.g. a keyhole polygon from :func:`mask_to_polygon` or a Label Studio
    polygon in pixels) -> HxW bool mask, a pixel set when its centre is inside (even-odd)."""
    return _shoelace_fill(ring, height, width)


def rings_to_mask(rings: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of rings (COCO's list of parts), each filled even-odd."""
    out = np.zeros((height, width), bool)
    for ring in rings:
        out |= _shoelace_fill(ring, height, width)
    return out


# ---------------------------------------------------------------------------- COCO
def coco_segmentation(
    obj: ExportObject,
    height: int,
    width: int,
    *,
    mode: str = "rle",
    tolerance: float = POLYGON_TOLERANCE,
) -> Any:
    """The ``segmentation`` field of an object: compressed RLE, or polygons (one flat
    ``[x0, y0, x1, y1, ...]`` list; holes and parts joined by zero-width cuts)."""
    if mode == "rle":
        return coco_rle_encode(obj.mask(height, width))
    if mode == "polygon":
        ring = mask_to_polygon(obj.crop, tolerance=tolerance, offset=(obj.box[0], obj.box[1]))
        if ring is None:
            return []
        return [[round(float(v), 2) for v in ring.reshape(-1)]]
    raise ValueError(f"COCO segmentation mode must be 'rle' or 'polygon', got {mode!r}")


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class ImageObjects:
    """The objects of one image for :func:`coco_dataset`."""

    file_name: str
    height: int
    width: int
    objects: list[ExportObject]
    attributes: dict[str, Any] = field(default_factory=dict)


def coco_dataset(
    images: Sequence[ImageObjects],
    *,
    mode: str = "rle",
    tolerance: float = POLYGON_TOLERANCE,
    categories: Sequence[str] | None = None,
    description: str = "pasam-plugins",
) -> dict[str, Any]:
    """A COCO instance-segmentation dataset (``images``, ``annotations``, ``categories``).

    Annotation ids and image ids start at 1; ``iscrowd`` is 0; ``score`` is the object's
    ``predicted_iou`` attribute when it has one (COCO results convention); every other
    attribute is kept as an extra annotation field.
    """
    names = list(categories or [])
    for im in images:
        for o in im.objects:
            if o.category not in names:
                names.append(o.category)
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    out_images, anns = [], []
    for image_id, im in enumerate(images, start=1):
        out_images.append(
            {
                "id": image_id,
                "file_name": im.file_name,
                "height": int(im.height),
                "width": int(im.width),
                **{k: _json_value(v) for k, v in im.attributes.items()},
            }
        )
        for o in im.objects:
            ann: dict[str, Any] = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_id[o.category],
                "segmentation": coco_segmentation(
                    o, im.height, im.width, mode=mode, tolerance=tolerance
                ),
                "area": o.area,
                "bbox": o.bbox_xywh,
                "iscrowd": 0,
            }
            if (
                "predicted_iou" in o.attributes
                and _json_value(o.attributes["predicted_iou"]) is not None
            ):
                ann["score"] = float(o.attributes["predicted_iou"])
            for k, v in o.attributes.items():
                if k not in ann:
                    ann[k] = _json_value(v)
            anns.append(ann)
    return {
        "info": {"description": description, "version": "1.0"},
        "images": out_images,
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in cat_id.items()],
    }


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- files
def write_label_tiff(path: str | Path, labels: np.ndarray) -> Path:
    """A label image (2D or a stack) as a zlib-compressed TIFF (uint16 when the labels fit,
    else uint32), readable by napari, Fiji and tifffile."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lab = np.asarray(labels)
    top = int(lab.max()) if lab.size else 0
    lab = lab.astype(np.uint16 if top < 65536 else np.uint32, copy=False)
    tifffile.imwrite(path, lab, compression="zlib")
    return path


#: the first CSV columns (others follow in the order met)
CSV_COLUMNS = (
    "label",
    "category",
    "area",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
    "centroid_x",
    "centroid_y",
)


def object_rows(objects: Sequence[tuple[int, ExportObject]], **extra: Any) -> list[dict[str, Any]]:
    """One table row per ``(label, object)``: geometry (pixels; centroid = mean pixel
    centre) then the object's attributes, then ``extra`` columns (e.g. the image)."""
    rows = []
    for value, o in objects:
        ys, xs = np.nonzero(o.crop)
        x, y, w, h = o.bbox_xywh
        row: dict[str, Any] = {
            "label": int(value),
            "category": o.category,
            "area": int(ys.size),
            "bbox_x": x,
            "bbox_y": y,
            "bbox_width": w,
            "bbox_height": h,
            "centroid_x": round(float(xs.mean() + o.box[0] + 0.5), 3) if ys.size else None,
            "centroid_y": round(float(ys.mean() + o.box[1] + 0.5), 3) if ys.size else None,
        }
        for k, v in o.attributes.items():
            row.setdefault(k, _json_value(v))
        for k, v in extra.items():
            row.setdefault(k, v)
        rows.append(row)
    return rows


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows (dicts) as CSV; columns: :data:`CSV_COLUMNS` first, then any others in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [c for c in CSV_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return path
