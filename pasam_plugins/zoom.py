"""Zoomed-in windows: the geometry of segmenting one object in a square crop around it.

Models trained by this project (small input, e.g. 256 px) see one object at a time: a square
window around the prompt, resized to the model input, so that a 15-px nucleus or a 60-px
cell fills a good part of the 16x16 embedding and the 64x64 low-res mask (RITM's and
FocalClick's "zoom-in"; large images need it anyway). Training crops (:mod:`pasam_plugins.
train`) and inference (:mod:`pasam_plugins.segment`) use the same functions, so a model sees at
inference exactly the geometry it was trained on.

Coordinates follow SAM's convention: a point or box corner ``(x, y)`` names a pixel by its
index (pixel ``i`` covers ``[i, i + 1)``), and the prompt encoder adds 0.5 to reach the pixel
centre. A :class:`Window` covers the continuous square ``[x0, x0 + size) x [y0, y0 + size)``
of the image (it may reach past the image border: that part is zero padding) and is mapped
onto the model input ``[0, out)``.
"""

from dataclasses import dataclass

import cv2
import numpy as np

#: window side / object side for box prompts (the middle of the training range)
BOX_CONTEXT = 2.0
#: the smallest window side in image pixels (below it the model sees single pixels blown up)
MIN_WINDOW = 12.0


@dataclass(frozen=True)
class Window:
    """A square window of an image: ``[x0, x0 + size) x [y0, y0 + size)`` in pixels."""

    x0: float
    y0: float
    size: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.size / 2.0, self.y0 + self.size / 2.0)

    def scale(self, out: int) -> float:
        """Model-input pixels per image pixel for an ``out``-px model input."""
        return out / self.size

    def to_input(self, xy: np.ndarray, out: int) -> np.ndarray:
        """Nx2 (x, y) pixel indices of the image -> pixel indices of the ``out``-px input
        (centres map to centres, so the prompt encoder's +0.5 lands where it should)."""
        s = self.scale(out)
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return (xy + 0.5 - np.array([self.x0, self.y0])) * s - 0.5

    def box_to_input(self, box: np.ndarray, out: int) -> np.ndarray:
        """A ``[x0, y0, x1, y1]`` box (pixel indices) -> the same in the ``out``-px input."""
        return self.to_input(np.asarray(box, dtype=np.float64).reshape(2, 2), out).reshape(4)

    def from_input(self, xy: np.ndarray, out: int) -> np.ndarray:
        """Inverse of :meth:`to_input`."""
        s = self.scale(out)
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return (xy + 0.5) / s + np.array([self.x0, self.y0]) - 0.5

    def pixel_bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)``: the image pixels whose centres lie in the window."""
        r0 = max(0, int(np.ceil(self.y0 - 0.5)))
        c0 = max(0, int(np.ceil(self.x0 - 0.5)))
        r1 = min(height, int(np.ceil(self.y0 + self.size - 0.5)))
        c1 = min(width, int(np.ceil(self.x0 + self.size - 0.5)))
        return r0, max(r0, r1), c0, max(c0, c1)

    def contains(self, xy: np.ndarray) -> bool:
        """Whether every (x, y) pixel centre lies inside the window."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2) + 0.5
        lo = np.array([self.x0, self.y0])
        return bool(((p >= lo) & (p < lo + self.size)).all())

    def key(self) -> str:
        """A short text identifying the window (cache keys, logs)."""
        return f"{self.x0:.2f},{self.y0:.2f},{self.size:.2f}"


def window_around_box(
    box: np.ndarray, *, context: float = BOX_CONTEXT, min_size: float = MIN_WINDOW
) -> Window:
    """The window centred on a ``[x0, y0, x1, y1]`` box (pixel indices, inclusive) whose side
    is ``context`` x the box's longer side (at least ``min_size``)."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x1 - x0 + 1.0, y1 - y0 + 1.0, 1.0)
    size = max(min_size, context * side)
    cx, cy = (x0 + x1 + 1.0) / 2.0, (y0 + y1 + 1.0) / 2.0
    return Window(cx - size / 2.0, cy - size / 2.0, size)


def window_around_point(xy: np.ndarray, size: float) -> Window:
    """The window of side ``size`` centred on the pixel ``(x, y)``."""
    x, y = (float(v) for v in np.asarray(xy, dtype=np.float64).reshape(2))
    return Window(x + 0.5 - size / 2.0, y + 0.5 - size / 2.0, float(size))


def _inverse_affine(window: Window, out: int) -> np.ndarray:
    """2x3 matrix mapping output pixel indices to image pixel indices (for warpAffine with
    WARP_INVERSE_MAP)."""
    inv = window.size / out
    return np.array(
        [[inv, 0.0, 0.5 * inv + window.x0 - 0.5], [0.0, inv, 0.5 * inv + window.y0 - 0.5]],
        dtype=np.float64,
    )


def crop(
    image: np.ndarray, window: Window, out: int, *, nearest: bool = False, fill: float = 0
) -> np.ndarray:
    """The window of an HxW or HxWxC image resized to ``out`` x ``out`` (bilinear, or
    nearest for label maps); outside the image: ``fill``.

    Shrinking by more than 2x first area-averages the window (no aliasing of thin
    structures), as ``cv2.resize(INTER_AREA)`` would.
    """
    arr = np.ascontiguousarray(image)
    src = arr
    w = window
    shrink = w.size / out
    if not nearest and shrink > 2.0:
        # area-average the part of the image the window covers down to ~2x the output
        h, wd = arr.shape[:2]
        r0, r1, c0, c1 = w.pixel_bounds(h, wd)
        if r1 > r0 and c1 > c0:
            f = shrink / 2.0
            sub = arr[r0:r1, c0:c1]
            nh = max(1, int(round((r1 - r0) / f)))
            nw = max(1, int(round((c1 - c0) / f)))
            src = cv2.resize(sub, (nw, nh), interpolation=cv2.INTER_AREA)
            # the window in the coordinates of the reduced sub-image
            sy, sx = (r1 - r0) / nh, (c1 - c0) / nw
            w = Window((w.x0 - c0) / sx, (w.y0 - r0) / sy, w.size / sx)
            if abs(sx - sy) > 1e-6:  # rounding made the pixels non-square: resample exactly
                src, w = arr, window
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    dtype = src.dtype
    if dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        # e.g. int32 label maps: float32 holds label ids below 2**24 exactly
        src = src.astype(np.float32)
    result = cv2.warpAffine(
        src,
        _inverse_affine(w, out),
        (out, out),
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    if result.dtype != dtype:
        result = (np.rint(result) if nearest else result).astype(dtype)
    if result.ndim == 2 and arr.ndim == 3:
        result = result[..., None]
    return result


def paste_part(
    maps: np.ndarray, window: Window, height: int, width: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Maps over the window (... x L x L) -> only the image pixels the window covers:
    ``(... x (r1 - r0) x (c1 - c0) float32, (r0, r1, c0, c1))``, bilinear (as :func:`paste`,
    which places them in a full ... x H x W frame). Large images need no full frame."""
    arr = np.asarray(maps, dtype=np.float32)
    lead = arr.shape[:-2]
    flat = arr.reshape(-1, *arr.shape[-2:])
    r0, r1, c0, c1 = window.pixel_bounds(height, width)
    out = np.zeros((flat.shape[0], r1 - r0, c1 - c0), np.float32)
    if r1 > r0 and c1 > c0:
        n = flat.shape[-1]
        s = n / window.size  # map pixels per image pixel
        # map index of image pixel (r, c): ((c + 0.5) - x0) * s - 0.5
        m = np.array(
            [
                [s, 0.0, (c0 + 0.5 - window.x0) * s - 0.5],
                [0.0, s, (r0 + 0.5 - window.y0) * s - 0.5],
            ],
            dtype=np.float64,
        )
        for i in range(flat.shape[0]):
            out[i] = cv2.warpAffine(
                np.ascontiguousarray(flat[i]),
                m,
                (c1 - c0, r1 - r0),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
    return out.reshape(*lead, r1 - r0, c1 - c0), (r0, r1, c0, c1)


def paste(
    maps: np.ndarray, window: Window, height: int, width: int, *, fill: float = 0.0
) -> np.ndarray:
    """Maps over the window (... x L x L, e.g. low-res logits or uncertainty at any
    resolution L) -> ... x H x W in the image frame, bilinear; outside the window: ``fill``.

    Only the pixels inside the window are interpolated; with ``fill`` 0 the frame is
    allocated zeroed (``np.zeros``), so on large images only the window's pages are ever
    written (resident memory grows by the window, not the frame).
    """
    part, (r0, r1, c0, c1) = paste_part(maps, window, height, width)
    lead = part.shape[:-2]
    if fill == 0:
        out = np.zeros((*lead, height, width), np.float32)
    else:
        out = np.full((*lead, height, width), fill, np.float32)
    out[..., r0:r1, c0:c1] = part
    return out
