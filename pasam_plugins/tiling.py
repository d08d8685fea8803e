"""Large images: lazy reading with whole-image contrast, and tiles at native resolution.

Microscopy images are often far larger than the model input (2k-20k px tiled scans,
stitched EM, whole slides). Shrinking such an image to the input makes small cells vanish,
and loading it whole to embed one corner wastes memory. Two pieces solve this:

- :class:`ImageSource` reads windows of an array-like lazily (numpy, ``np.memmap``, a zarr
  array, a dask array, :func:`open_image` for TIFF files via ``tifffile``'s zarr store):
  non-8-bit contrast levels come from a regular subsample of the whole image (so every
  window is scaled alike, no seams in intensity) and only the pixels of a window are read.
- :class:`TileGrid` lays overlapping tiles over the image: each tile has a core of
  ``tile`` px and is embedded with a ``halo`` on each side, so a window of
  ``tile + 2 x halo`` px (the model input, at native resolution) holds every object that
  touches the core and is at most ``halo`` px beyond it. :class:`pasam_plugins.segment.Segmenter`
  answers a prompt on the tile whose window holds it with the most margin, and pastes the mask
  and uncertainty back: an object straddling a core border is predicted whole in one window, so
  there is no seam to stitch. Tiles are embedded lazily (where prompts land) and cached like
  images (the embedding cache keys on the window's content).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import DEFAULT_PERCENTILES, ImageError, apply_levels, image_levels
from .zoom import Window, crop

#: pixels sampled to estimate the contrast levels of a large non-8-bit image
LEVEL_SAMPLES = 4_000_000


class ImageSource:
    """A 2D image read window by window, normalized to 8-bit RGB with whole-image levels.

    Arguments:
      data: HxW or HxWxC array-like (numpy, memmap, zarr, dask; anything that slices into
        something ``np.asarray`` accepts).
      channel: the channel to segment in a multichannel image.
      percentiles: contrast percentiles for non-8-bit images (as :func:`normalize_image`;
        exact for images up to :data:`LEVEL_SAMPLES` pixels, from a regular subsample above).
      sample: what the contrast levels are estimated from instead of that subsample: a small
        array of the image's pixels (a coarse level of an image pyramid, or
        :func:`chunk_sample`). A strided subsample of a chunked array (zarr, dask) reads
        every chunk, i.e. the whole image.
    """

    def __init__(
        self,
        data: Any,
        *,
        channel: int | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        sample: Any = None,
    ) -> None:
        shape = tuple(int(v) for v in getattr(data, "shape", np.shape(data)))
        if len(shape) == 3 and shape[-1] == 1:
            data = data[..., 0]
            shape = shape[:2]
        if len(shape) not in (2, 3) or shape[0] < 1 or shape[1] < 1:
            raise ImageError(f"expected an image of shape HxW or HxWxC, got shape {shape}")
        self.data = data
        self.channel = channel
        self.height, self.width = shape[:2]
        self.dtype = np.dtype(getattr(data, "dtype", np.asarray(data[:1, :1]).dtype))
        if sample is None:
            step = max(1, int(np.ceil(np.sqrt(self.height * self.width / LEVEL_SAMPLES))))
            sample = data[::step, ::step]
        sample = np.asarray(sample)
        if sample.ndim == 3 and sample.shape[-1] == 1 and len(shape) == 2:
            sample = sample[..., 0]
        self.levels = image_levels(sample, channel=channel, percentiles=percentiles)
        self._full: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows r0:r1 and columns c0:c1 (clipped to the image) as HxWx3 uint8 RGB."""
        r0, r1 = max(0, r0), min(self.height, r1)
        c0, c1 = max(0, c0), min(self.width, c1)
        window = np.asarray(self.data[r0:r1, c0:c1])
        return apply_levels(window, self.levels, channel=self.channel)

    def full(self) -> np.ndarray:
        """The whole image as HxWx3 uint8 (read once, kept: small images only)."""
        if self._full is None:
            self._full = self.read(0, self.height, 0, self.width)
        return self._full

    def crop(self, window: Window, out: int) -> np.ndarray:
        """``window`` resized to ``out`` x ``out`` (as :func:`pasam_plugins.zoom.crop` on the
        whole normalized image), reading only the pixels the window covers."""
        r0, r1, c0, c1 = window.pixel_bounds(self.height, self.width)
        # one pixel of margin for bilinear sampling at the window's edge
        r0, c0 = max(0, r0 - 1), max(0, c0 - 1)
        r1, c1 = min(self.height, r1 + 1), min(self.width, c1 + 1)
        if r1 <= r0 or c1 <= c0:
            return np.zeros((out, out, 3), np.uint8)
        part = self.read(r0, r1, c0, c1)
        local = Window(window.x0 - c0, window.y0 - r0, window.size)
        return crop(part, local, out)

    def nbytes_read_per_pixel(self) -> int:
        return int(self.dtype.itemsize)


def _chunk_bounds(data: Any, axis: int, extent: int) -> np.ndarray | None:
    """Start offsets of the chunks of ``data`` along ``axis`` (dask: tuples of sizes per
    axis; zarr: one size per axis), plus ``extent``; None for unchunked arrays."""
    chunks = getattr(data, "chunks", None)
    if not chunks or len(chunks) <= axis:
        return None
    c = chunks[axis]
    if isinstance(c, tuple | list):
        starts = np.concatenate([[0], np.cumsum(c)])
    else:
        starts = np.arange(0, extent + int(c), max(1, int(c)))
    return np.minimum(starts, extent).astype(np.int64)


def chunk_sample(data: Any, *, blocks: int = 3, side: int = 512) -> np.ndarray:
    """A small sample of a large lazily read HxW[xC] image to estimate its contrast levels
    from (see :class:`ImageSource`'s ``sample``), reading a bounded part of it: ``blocks`` x
    ``blocks`` squares of at most ``side`` px spread regularly over the image, each inside
    one storage chunk where the array has chunks (so each square reads one chunk). Returns
    the sampled pixels as an Nx1[xC] array."""
    shape = tuple(int(v) for v in data.shape)
    h, w = shape[:2]
    parts = []
    spans = []
    for axis, extent in ((0, h), (1, w)):
        bounds = _chunk_bounds(data, axis, extent)
        axis_spans = []
        for k in range(blocks):
            centre = int((k + 0.5) * extent / blocks)
            if bounds is None:
                lo = max(0, min(centre - side // 2, extent - side))
                hi = min(extent, lo + side)
            else:
                i = int(np.searchsorted(bounds, centre, side="right")) - 1
                lo, hi = int(bounds[i]), int(bounds[min(i + 1, len(bounds) - 1)])
                hi = min(hi, lo + side)
            axis_spans.append((lo, max(hi, lo + 1)))
        spans.append(sorted(set(axis_spans)))
    for r0, r1 in spans[0]:
        for c0, c1 in spans[1]:
            block = np.asarray(data[r0:r1, c0:c1])
            parts.append(block.reshape(-1, 1, *block.shape[2:]))
    return np.concatenate(parts, axis=0)


def open_image(path: str | Path) -> Any:
    """A lazily readable array for an image file: TIFF files (also BigTIFF, tiled or
    striped) through ``tifffile``'s zarr store (nothing is read until sliced), other formats
    read whole. 2D images only (a stack: pick the plane first)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        store = tifffile.imread(path, aszarr=True)
        arr = zarr.open(store, mode="r")
        if hasattr(arr, "shape"):
            return arr
        return arr[0]  # a multiscale group: level 0 (full resolution)
    from .imageio import read_image

    return read_image(path)


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of a ``height`` x ``width`` image.

    Tile (i, j) has the core rows ``i*tile .. (i+1)*tile`` and columns ``j*tile ..`` and is
    embedded as the square window of side ``tile + 2*halo`` centred on its core, moved inside
    the image where the image is larger than a window (so edge tiles hold no padding).
    """

    height: int
    width: int
    tile: int
    halo: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.halo < 0:
            raise ValueError(f"tile must be >= 1 and halo >= 0, got {self.tile} and {self.halo}")

    @property
    def window_size(self) -> int:
        return self.tile + 2 * self.halo

    @property
    def rows(self) -> int:
        return max(1, -(-self.height // self.tile))

    @property
    def cols(self) -> int:
        return max(1, -(-self.width // self.tile))

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in range(self.rows):
            for j in range(self.cols):
                yield i, j

    def _start(self, index: int, extent: int) -> float:
        s = self.window_size
        start = index * self.tile - self.halo
        if extent >= s:
            start = min(max(start, 0), extent - s)
        else:
            start = 0  # an image smaller than a window: one window from the origin
        return float(start)

    def window(self, i: int, j: int) -> Window:
        """The embedded window of tile (i, j)."""
        return Window(
            self._start(j, self.width), self._start(i, self.height), float(self.window_size)
        )

    def tile_of(self, x: float, y: float) -> tuple[int, int]:
        """The tile whose core holds pixel (x, y)."""
        i = min(self.rows - 1, max(0, int(y) // self.tile))
        j = min(self.cols - 1, max(0, int(x) // self.tile))
        return i, j

    def best_window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[Window, float]:
        """The tile window holding the pixel box ``lo``..``hi`` (x, y; inclusive) with the
        largest margin to its edges, and that margin (negative: no tile holds it whole)."""
        best, best_margin = None, -np.inf
        ci, cj = self.tile_of((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
        for i in range(max(0, ci - 1), min(self.rows, ci + 2)):
            for j in range(max(0, cj - 1), min(self.cols, cj + 2)):
                w = self.window(i, j)
                margin = min(
                    lo[0] - w.x0,
                    lo[1] - w.y0,
                    w.x0 + w.size - 1 - hi[0],
                    w.y0 + w.size - 1 - hi[1],
                )
                if margin > best_margin:
                    best, best_margin = w, margin
        assert best is not None
        return best, float(best_margin)
