"""What the axes of an image layer are, as far as the layer says (no Qt, no torch).

napari knows axis names only when a reader or the user set them: the layer's
``axis_labels`` (e.g. ``("c", "y", "x")`` from an OME-Zarr reader) or an ``axes`` string in
the layer's metadata (tifffile/ImageJ style, e.g. ``"CYX"``, ``"TZCYX"``). Without them
every axis before (Y, X) is a slice axis, which is how napari itself shows the layer; a
short first axis (a few entries) or a short last axis is then pointed out, because those are
usually channels the layer does not name.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: axis names that mean "channel"
CHANNEL_NAMES = frozenset({"c", "ch", "channel", "channels"})
#: a first axis this short, unnamed, is pointed out as possibly channels
FEW_ENTRIES = 4
#: a last axis this short (not RGB) is a channels-last layer napari displays wrongly
THIN_LAST = 8

SOURCE_LABELS = "napari axis labels"
SOURCE_METADATA = "layer metadata 'axes'"
SOURCE_ASSUMED = "assumed: the layer names no axes"
SOURCE_CHOSEN = "chosen in the panel"


@dataclass(frozen=True)
class AxesInfo:
    """The axes of a layer: a name per data axis, the channel axis, where that came from,
    and a hint when the guess may be wrong."""

    names: tuple[str, ...]
    channel_axis: int | None
    source: str
    hint: str | None = None
    shape: tuple[int, ...] = ()

    def describe(self) -> str:
        """E.g. ``C · Y · X = 3 · 400 · 300 (channel axis 0; layer metadata 'axes')``."""
        dims = " · ".join(self.names)
        sizes = " · ".join(str(n) for n in self.shape)
        text = f"{dims} = {sizes}" if sizes else dims
        if self.channel_axis is not None:
            text += f" (channel axis {self.channel_axis}; {self.source})"
        else:
            text += f" ({self.source})"
        return text


def _default_names(n_spatial: int) -> list[str]:
    """Slice axes named as napari users read them: Z Y X, T Z Y X, then generic."""
    named = ["Y", "X"]
    extra = ["Z", "T"]
    for i in range(n_spatial - 2):
        named.insert(0, extra[i] if i < len(extra) else f"axis {n_spatial - 3 - i}")
    return named


def _channel_from_labels(labels: Sequence[str], ndim: int) -> int | None:
    """The channel axis named in napari's axis labels (None when the labels are napari's
    defaults ``"-3", "-2", "-1"`` or name no channel)."""
    labels = [str(v) for v in labels]
    if len(labels) != ndim or labels == [str(i) for i in range(-ndim, 0)]:
        return None
    hits = [i for i, v in enumerate(labels) if v.strip().lower() in CHANNEL_NAMES]
    return hits[0] if len(hits) == 1 else None


def _channel_from_metadata(metadata: dict[str, Any] | None, ndim: int) -> int | None:
    axes = (metadata or {}).get("axes")
    if not isinstance(axes, str) or len(axes) != ndim:
        return None
    axes = axes.upper()
    return axes.index("C") if axes.count("C") == 1 else None


def axes_for(shape: Sequence[int], *, rgb: bool, channel_axis: int | None, source: str) -> AxesInfo:
    """Names for ``shape`` with the given channel axis (see :func:`infer_axes`)."""
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if rgb:
        names = [*_default_names(ndim - 1), "RGB" if shape[-1] == 3 else "RGBA"]
        return AxesInfo(tuple(names), None, source, shape=shape)
    if channel_axis is not None and channel_axis < 0:
        channel_axis += ndim
    n_spatial = ndim - (1 if channel_axis is not None else 0)
    names = _default_names(max(n_spatial, 2))[-n_spatial:] if n_spatial else []
    if channel_axis is not None:
        names.insert(channel_axis, "C")
    hint = None
    if ndim >= 3 and shape[-1] <= THIN_LAST:
        hint = (
            f"the last axis has only {shape[-1]} entries: channels last? napari shows this "
            f"layer as {shape[-3]} x {shape[-2]} x {shape[-1]} ({shape[-2]} x {shape[-1]} "
            f"pixel planes); open it with its channels split (viewer.add_image(data, "
            f"channel_axis=-1)) or with channels first"
        )
    elif channel_axis is None and ndim >= 3 and shape[0] <= FEW_ENTRIES:
        hint = (
            f"axis 0 has only {shape[0]} entries: if these are channels, choose channel "
            f"axis 0 (then the annotator follows napari's slider for it)"
        )
    return AxesInfo(tuple(names), channel_axis, source, hint, shape)


def infer_axes(
    shape: Sequence[int],
    *,
    rgb: bool,
    axis_labels: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> AxesInfo:
    """The axes of a layer of ``shape``: RGB as napari says; the channel axis from napari's
    axis labels, else from ``metadata["axes"]``; else none (every axis before Y, X is a
    slice), with a hint when a short first or last axis looks like channels."""
    ndim = len(shape)
    if rgb:
        return axes_for(shape, rgb=True, channel_axis=None, source="RGB layer")
    for found, source in (
        (_channel_from_labels(axis_labels or (), ndim), SOURCE_LABELS),
        (_channel_from_metadata(metadata, ndim), SOURCE_METADATA),
    ):
        if found is not None and found < ndim - 2:
            return axes_for(shape, rgb=False, channel_axis=found, source=source)
    return axes_for(shape, rgb=False, channel_axis=None, source=SOURCE_ASSUMED)
