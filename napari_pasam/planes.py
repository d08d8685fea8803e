"""Which 2D plane of an image layer is annotated, and which prompts lie on it (no Qt, no torch).

Layer data layouts handled:

- grayscale ``[..., Y, X]`` (2D, 3D stacks, time series: every axis before Y, X is a slice axis),
- RGB/RGBA ``[..., Y, X, 3|4]`` (napari ``rgb=True``),
- multichannel ``[C, ..., Y, X]`` with the channel axis first: one channel is segmented at a
  time (the one under napari's slider for that axis). Other channel positions are refused
  with a message saying how to fix them: napari lines up layers by their trailing axes, so
  annotation layers without the channel axis only line up with a channels-first image.

The annotation layers (prompts, labels) have the image's *spatial* shape: the layer shape
without the RGB and channel axes. The slice position is that spatial shape's leading index.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: a plane thinner than this (pixels) means the axes were read wrongly (e.g. channels last)
MIN_PLANE_SIDE = 8


@dataclass(frozen=True)
class PlaneGeometry:
    """How to cut 2D planes out of an image layer's (level-0) data.

    Attributes:
      data_shape (tuple): shape of the layer data.
      rgb (bool): the last axis holds RGB(A) colour.
      channel_axis (int or None): data axis holding channels (only 0 is supported).
    """

    data_shape: tuple[int, ...]
    rgb: bool = False
    channel_axis: int | None = None

    def __post_init__(self) -> None:
        ndim = len(self.data_shape)
        nd = ndim - (1 if self.rgb else 0)
        if self.channel_axis is not None:
            if self.rgb:
                raise ValueError("an RGB layer has no separate channel axis")
            axis = int(self.channel_axis)
            if axis < 0:
                axis += ndim
            if axis >= ndim - 2:
                raise ValueError(
                    f"channel axis {self.channel_axis} is one of the last two axes of a "
                    f"{ndim}-axis layer: napari shows the last two axes as the image, so a "
                    f"channels-last layer is displayed wrongly; open it with its channels split "
                    f"(viewer.add_image(data, channel_axis=-1)) or move the channels first"
                )
            if axis != 0:
                raise ValueError(
                    f"the channel axis must be the first axis of the layer (got axis {axis}): "
                    f"napari lines up layers by their last axes, so the annotation layers can "
                    f"only follow a channels-first layer; move the channels first "
                    f"(np.moveaxis(data, {axis}, 0)) or split them (channel_axis={axis})"
                )
            object.__setattr__(self, "channel_axis", axis)
            nd -= 1
        if nd < 2:
            raise ValueError(f"layer data of shape {self.data_shape} has fewer than 2 spatial axes")
        h, w = self.plane_shape
        if min(h, w) < MIN_PLANE_SIDE:
            hint = ""
            if not self.rgb and self.data_shape[-1] < MIN_PLANE_SIDE:
                hint = (
                    f"; the last axis has only {self.data_shape[-1]} entries: channels last? "
                    f"open the image with its channels split (viewer.add_image(data, "
                    f"channel_axis=-1)) or channels first"
                )
            raise ValueError(f"the image plane would be {h} x {w} pixels{hint}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the labels/prompt layers: data shape without RGB and channel axes."""
        shape = list(self.data_shape)
        if self.rgb:
            shape = shape[:-1]
        if self.channel_axis is not None:
            del shape[self.channel_axis]
        return tuple(shape)

    @property
    def num_channels(self) -> int:
        return 1 if self.channel_axis is None else int(self.data_shape[self.channel_axis])

    @property
    def leading_ndim(self) -> int:
        """Number of slice axes before (Y, X)."""
        return len(self.spatial_shape) - 2

    @property
    def plane_shape(self) -> tuple[int, int]:
        h, w = self.spatial_shape[-2:]
        return int(h), int(w)

    @property
    def num_slices(self) -> int:
        """Length of the slice axis that propagation runs along (the axis just before Y)."""
        return int(self.spatial_shape[-3]) if self.leading_ndim else 1

    def spatial_axes(self) -> list[int]:
        """Data axes of the spatial shape, in order (the data axes without RGB and channel)."""
        n = len(self.data_shape) - (1 if self.rgb else 0)
        return [a for a in range(n) if a != self.channel_axis]

    def clamp_index(self, leading: Sequence[float]) -> tuple[int, ...]:
        """Round a (data-coordinate) leading position to valid integer slice indices."""
        leading = list(leading)[-self.leading_ndim :] if self.leading_ndim else []
        return tuple(
            int(min(max(round(float(v)), 0), n - 1))
            for v, n in zip(leading, self.spatial_shape[: self.leading_ndim], strict=True)
        )

    def clamp_channel(self, value: float) -> int:
        return int(min(max(round(float(value)), 0), self.num_channels - 1))

    def plane(self, data, leading: tuple[int, ...], channel: int | None = None) -> np.ndarray:
        """The 2D plane at ``leading`` as numpy: HxW, HxWx3/4 (RGB), or HxW of the chosen
        channel (channel axis given). Works for numpy, dask and zarr arrays."""
        if len(leading) != self.leading_ndim:
            raise ValueError(f"expected {self.leading_ndim} slice indices, got {leading}")
        index: list = list(int(i) for i in leading)
        if self.channel_axis is not None:
            c = 0 if channel is None else int(channel)
            if not 0 <= c < self.num_channels:
                raise ValueError(
                    f"channel {c} does not exist: the layer has {self.num_channels} channels"
                )
            index.insert(self.channel_axis, c)
        return np.asarray(data[tuple(index)])


def points_on_slice(
    coords: np.ndarray, positive: np.ndarray, leading: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Points of a prompt layer that lie on the slice ``leading``.

    Arguments:
      coords (np.ndarray): Nx(D) data coordinates (..., y, x).
      positive (np.ndarray): N bool.
      leading (tuple): the slice's leading indices (D-2 of them).

    Returns:
      (np.ndarray, np.ndarray): Mx2 (x, y) pixel coordinates and M labels (1 positive, 0 negative).
    """
    coords = np.asarray(coords, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if coords.size == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    coords = coords.reshape(len(positive), -1)
    on = np.ones(len(coords), dtype=bool)
    if leading:
        on = np.all(np.round(coords[:, :-2]) == np.asarray(leading)[None, :], axis=1)
    xy = coords[on][:, [-1, -2]].astype(np.float32)
    return xy, positive[on].astype(np.int64)


def box_on_slice(
    shapes: Sequence[np.ndarray], shape_types: Sequence[str], leading: tuple[int, ...]
) -> np.ndarray | None:
    """The most recently drawn rectangle on slice ``leading`` as (x0, y0, x1, y1), or None."""
    for verts, kind in zip(reversed(list(shapes)), reversed(list(shape_types)), strict=True):
        if kind != "rectangle":
            continue
        verts = np.asarray(verts, dtype=np.float64)
        if leading and not np.all(np.round(verts[:, :-2]) == np.asarray(leading)[None, :]):
            continue
        y0, x0 = verts[:, -2:].min(axis=0)
        y1, x1 = verts[:, -2:].max(axis=0)
        return np.array([x0, y0, x1, y1], dtype=np.float32)
    return None
