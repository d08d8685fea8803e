"""Large images in the annotator (no Qt, no torch): planes of dask/zarr-backed layers read
window by window, contrast levels from a pyramid's coarse level, and the memory limit of the
annotation layers.

A plane of a numpy layer is a view (no copy), so the core reads it as it likes. A plane of
a dask or zarr layer (or of a napari multiscale pyramid's level 0) is handed to the core's
:class:`~pasam_plugins.segment.Segmenter` as a :class:`LazyPlane` when the Segmenter reads
it in windows (zoomed models, and images it tiles): only the pixels of the windows it
embeds are read, never the whole plane. Contrast levels come from the pyramid's coarsest
level of at most :data:`OVERVIEW_PIXELS` pixels when there is one, else from
:func:`pasam_plugins.tiling.chunk_sample` (a few chunks).

The annotation layers (labels, current object, uncertainty) are dense numpy arrays of the
image's spatial shape, as the editing tools (accept, undo, paint, save) need them; with the
core's full-size prediction per click that is about :func:`annotation_bytes`. An image
whose layers would exceed :func:`max_layer_bytes` (4 GiB by default: a 16k x 16k plane
fits; environment variable :data:`MAX_LAYER_ENV` in GiB) is refused with a message instead
of exhausting memory.
"""

import os
from typing import Any

import numpy as np

from .planes import PlaneGeometry

#: a pyramid level of at most this many pixels per plane gives the contrast levels
OVERVIEW_PIXELS = 1 << 20
#: environment variable: the most memory (GiB) the annotation layers of an image may take
MAX_LAYER_ENV = "PASAM_NAPARI_MAX_LAYER_GB"
DEFAULT_MAX_LAYER_GB = 4.0
#: bytes per pixel: labels (uint32) for every spatial pixel; per plane the current object
#: (uint8) and uncertainty (float32) layers plus the core's prediction of one click (mask,
#: uncertainty, the displayed copy)
LABEL_BYTES = 4
PLANE_BYTES = 1 + 4 + 1 + 4 + 1


#: a zoomed model reads a lazy plane window by window above this many pixels (smaller
#: planes are read once, whole: cheaper than a dask/zarr read per window)
LAZY_PIXELS = 2048 * 2048


def is_lazy(data: Any) -> bool:
    """Whether reading ``data`` costs I/O or compute (dask, zarr, ...): not a numpy array."""
    return not isinstance(data, np.ndarray)


def reads_in_windows(segmenter, plane_shape: tuple[int, ...]) -> bool:
    """Whether ``segmenter`` reads an image of ``plane_shape`` window by window (it tiles
    it, or it is a zoomed model and the plane is large), so a lazy plane stays lazy."""
    if segmenter.grid_for(plane_shape) is not None:
        return True
    h, w = plane_shape[:2]
    return segmenter.zoom is not None and h * w > LAZY_PIXELS


class LazyPlane:
    """One 2D plane (HxW, or HxWxC for RGB) of a layer's data, read only where sliced.

    Supports what :class:`pasam_plugins.tiling.ImageSource` uses: ``shape``, ``dtype``,
    ``chunks`` and ``plane[rows, cols]`` (returned as numpy)."""

    def __init__(self, data: Any, geometry: PlaneGeometry, leading: tuple, channel) -> None:
        self.data = data
        index: list = [int(i) for i in leading]
        if geometry.channel_axis is not None:
            index.insert(geometry.channel_axis, 0 if channel is None else int(channel))
        self.index = tuple(index)
        rest = tuple(int(n) for n in data.shape[len(index) :])
        self.shape = rest
        self.ndim = len(rest)
        self.dtype = np.dtype(data.dtype)
        chunks = getattr(data, "chunks", None)
        self.chunks = None if not chunks else tuple(chunks)[len(index) :]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.data[(*self.index, *key)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _level_geometry(data: Any, geometry: PlaneGeometry) -> PlaneGeometry | None:
    try:
        shape = tuple(int(n) for n in data.shape)
        return PlaneGeometry(shape, rgb=geometry.rgb, channel_axis=geometry.channel_axis)
    except (ValueError, TypeError):
        return None


def overview_of(levels: list, geometry: PlaneGeometry) -> Any:
    """The level of a pyramid (a multiscale layer's data) that gives a plane's contrast
    levels: the finest one whose planes have at most :data:`OVERVIEW_PIXELS` pixels (None:
    none is that small or fits ``geometry``, the level-0 geometry)."""
    for data in list(levels)[1:]:
        coarse = _level_geometry(data, geometry)
        if coarse is not None and coarse.leading_ndim == geometry.leading_ndim:
            h, w = coarse.plane_shape
            if h * w <= OVERVIEW_PIXELS:
                return data
    return None


def overview_plane(
    overview: Any, geometry: PlaneGeometry, leading: tuple, channel
) -> np.ndarray | None:
    """The plane of the pyramid level ``overview`` at the (level-0) slice ``leading``: the
    slice indices scaled to the level's shape. None when the level does not fit."""
    full = geometry.data_shape
    coarse = _level_geometry(overview, geometry)
    if coarse is None:
        return None
    shape = coarse.data_shape
    axes = coarse.spatial_axes()[: geometry.leading_ndim]
    scaled = tuple(
        min(shape[a] - 1, int(i * shape[a] / full[a])) for i, a in zip(leading, axes, strict=True)
    )
    return coarse.plane(overview, scaled, channel)


def level_sample(plane: LazyPlane, overview: Any, geometry, leading, channel) -> np.ndarray:
    """What the contrast levels of a lazily read plane come from (see the module docstring)."""
    from pasam_plugins.tiling import chunk_sample

    if overview is not None:
        sample = overview_plane(overview, geometry, leading, channel)
        if sample is not None:
            return sample
    return chunk_sample(plane)


def annotation_bytes(geometry: PlaneGeometry) -> int:
    """Memory the annotation layers of an image with ``geometry`` take (see the module
    docstring)."""
    h, w = geometry.plane_shape
    return (
        int(np.prod(geometry.spatial_shape, dtype=np.float64)) * LABEL_BYTES + h * w * PLANE_BYTES
    )


def max_layer_bytes() -> int:
    try:
        gb = float(os.environ.get(MAX_LAYER_ENV, DEFAULT_MAX_LAYER_GB))
    except ValueError:
        gb = DEFAULT_MAX_LAYER_GB
    return int(gb * (1 << 30))


def check_annotation_size(geometry: PlaneGeometry) -> None:
    """Raise ValueError (a message for the user) when the annotation layers of an image
    with ``geometry`` would take more memory than :func:`max_layer_bytes`."""
    need, limit = annotation_bytes(geometry), max_layer_bytes()
    if need <= limit:
        return
    shape = " x ".join(str(n) for n in geometry.spatial_shape)
    raise ValueError(
        f"its annotation layers ({shape} labels, plus the current object and uncertainty of "
        f"a plane) would take {need / (1 << 30):.1f} GiB, more than the limit of "
        f"{limit / (1 << 30):.1f} GiB; annotate a crop or a sub-stack (e.g. "
        f"viewer.add_image(data[..., y0:y1, x0:x1])), segment it with 'pasam predict', or "
        f"raise the limit with the environment variable {MAX_LAYER_ENV}"
    )
