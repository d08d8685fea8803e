"""The annotator's napari layers: creating them for an image, finding them again when the
same image is annotated again (never a second set, never orphaned accepted objects), and
updating them cheaply on every prediction.

Each layer carries ``metadata["pasam_role"]`` (its job) and ``metadata["pasam_image"]`` (the
``unique_id`` of the image layer it annotates).
"""

from dataclasses import dataclass, fields

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.colormaps import Colormap

from .planes import PlaneGeometry
from .session import empty_features

ROLE = "pasam_role"
IMAGE = "pasam_image"

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
SUGGEST_POSITIVE_COLOR = "cyan"
SUGGEST_NEGATIVE_COLOR = "magenta"
CURRENT_OBJECT_COLOR = (0.118, 0.565, 1.0)  # dodgerblue
#: the current object: 0 transparent, 1 blue
CURRENT_COLORMAP = Colormap(
    [[0.0, 0.0, 0.0, 0.0], [*CURRENT_OBJECT_COLOR, 1.0]], name="pasam current object"
)


@dataclass
class AnnotationLayers:
    """The six layers of one annotated image (in the order they are stacked)."""

    labels: Labels
    uncertainty: Image
    current: Image
    suggestions: Points
    boxes: Shapes
    points: Points

    def all(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def image_id(layer: Image) -> str:
    return str(layer.unique_id)


def is_annotation_layer(layer) -> bool:
    return ROLE in layer.metadata


def level0(layer: Image):
    """Full-resolution data of an image layer (level 0 of a pyramid)."""
    return layer.data[0] if layer.multiscale else layer.data


def _spatial(values, geometry: PlaneGeometry) -> list:
    values = list(values)
    return [values[a] for a in geometry.spatial_axes()]


def _fits(layer, role: str, geometry: PlaneGeometry) -> bool:
    if role == "labels":
        return isinstance(layer, Labels) and np.shape(layer.data) == geometry.spatial_shape
    if role in ("uncertainty", "current"):
        return np.shape(layer.data) == geometry.plane_shape
    if role == "suggestions":
        return layer.ndim == 2
    if role in ("points", "boxes"):
        return layer.ndim == len(geometry.spatial_shape)
    return False


def find_layers(viewer, image: Image, geometry: PlaneGeometry) -> tuple[dict, list[str]]:
    """The annotation layers of ``image`` already in the viewer, by role, that fit
    ``geometry``; plus the names of labels layers of it that do not fit (left as they are)."""
    found: dict = {}
    misfits: list[str] = []
    key = image_id(image)
    for layer in viewer.layers:
        if layer.metadata.get(IMAGE) != key:
            continue
        role = layer.metadata.get(ROLE)
        if role not in found and _fits(layer, role, geometry):
            found[role] = layer
        elif role == "labels":
            misfits.append(layer.name)
    return found, misfits


def create_layers(image: Image, geometry: PlaneGeometry, *, found: dict, opacity: float):
    """The annotation layers of ``image``: those in ``found`` reused, the others new."""
    scale = _spatial(image.scale, geometry)
    translate = _spatial(image.translate, geometry)
    labels_axes = None
    if not image._has_default_axis_labels():
        labels_axes = _spatial(image.axis_labels, geometry)
    nd = len(geometry.spatial_shape)
    base = image.name
    h, w = geometry.plane_shape
    point_size = max(6.0, round(max(h, w) / 64))
    meta = {IMAGE: image_id(image)}
    extra = {} if labels_axes is None else {"axis_labels": labels_axes}
    extra2d = {} if labels_axes is None else {"axis_labels": labels_axes[-2:]}

    def make(role: str, factory):
        return found.get(role) or factory()

    labels = make(
        "labels",
        lambda: Labels(
            np.zeros(geometry.spatial_shape, dtype=np.uint32),
            name=f"{base} PA-SAM labels",
            scale=scale,
            translate=translate,
            features=empty_features(),
            metadata={ROLE: "labels", **meta},
            **extra,
        ),
    )
    uncertainty = make(
        "uncertainty",
        lambda: Image(
            np.zeros((h, w), np.float32),
            name=f"{base} PA-SAM uncertainty",
            colormap="magma",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=opacity,
            scale=scale[-2:],
            translate=translate[-2:],
            metadata={ROLE: "uncertainty", **meta},
            **extra2d,
        ),
    )
    current = make(
        "current",
        lambda: Image(  # an Image, not a Labels layer: much cheaper to create
            np.zeros((h, w), np.uint8),
            name=f"{base} PA-SAM current object",
            colormap=CURRENT_COLORMAP,
            contrast_limits=(0, 1),
            blending="translucent",
            opacity=0.55,
            scale=scale[-2:],
            translate=translate[-2:],
            metadata={ROLE: "current", **meta},
            **extra2d,
        ),
    )
    suggestions = make(
        "suggestions",
        lambda: Points(
            np.zeros((0, 2)),
            ndim=2,
            name=f"{base} PA-SAM suggestions",
            features={"positive": np.zeros(0, bool)},
            face_color="positive",
            face_color_cycle={True: SUGGEST_POSITIVE_COLOR, False: SUGGEST_NEGATIVE_COLOR},
            border_color="white",
            symbol="diamond",
            size=point_size,
            scale=scale[-2:],
            translate=translate[-2:],
            metadata={ROLE: "suggestions", **meta},
            **extra2d,
        ),
    )
    boxes = make(
        "boxes",
        lambda: Shapes(
            ndim=nd,
            name=f"{base} PA-SAM boxes",
            edge_color="yellow",
            face_color="transparent",
            edge_width=max(1.0, point_size / 4),
            scale=scale,
            translate=translate,
            metadata={ROLE: "boxes", **meta},
            **extra,
        ),
    )
    points = make(
        "points",
        lambda: Points(
            np.zeros((0, nd)),
            ndim=nd,
            name=f"{base} PA-SAM points",
            features={"positive": np.zeros(0, bool)},
            feature_defaults={"positive": True},
            face_color="positive",
            face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
            border_color="white",
            size=point_size,
            scale=scale,
            translate=translate,
            metadata={ROLE: "points", **meta},
            **extra,
        ),
    )
    return AnnotationLayers(labels, uncertainty, current, suggestions, boxes, points)


def add_missing(viewer, layers: AnnotationLayers) -> None:
    """Add the layers that are not in the viewer (new ones, or ones the user deleted) in
    their stacking order, keeping the active layer."""
    active = viewer.layers.selection.active
    added = False
    for layer in layers.all():
        if layer not in viewer.layers:
            above = [
                la for la in layers.all()[layers.all().index(layer) + 1 :] if la in viewer.layers
            ]
            index = viewer.layers.index(above[0]) if above else len(viewer.layers)
            viewer.layers.insert(index, layer)
            added = True
    if added and active is not None and active in viewer.layers:
        viewer.layers.selection.active = active


def add_one_missing(viewer, layers: AnnotationLayers) -> bool:
    """Add the first layer that is not in the viewer (in its stacking place, keeping the
    active layer); False when all are there. Adding napari layers is slow (visuals, layer
    controls): one per event-loop pass keeps the UI responsive."""
    missing = [la for la in layers.all() if la not in viewer.layers]
    if not missing:
        return False
    active = viewer.layers.selection.active
    layer = missing[0]
    above = [la for la in layers.all()[layers.all().index(layer) + 1 :] if la in viewer.layers]
    viewer.layers.insert(viewer.layers.index(above[0]) if above else len(viewer.layers), layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return len(missing) > 1


def set_array(layer, array: np.ndarray) -> None:
    """Show ``array`` in an Image/Labels layer; same shape and dtype: copy in place and
    refresh (no dims/extent recomputation, which dominates the cost of ``layer.data = ...``).
    The layer-list thumbnail is left to :func:`refresh_thumbnails` (called once the clicks
    pause): recomputing it on every click costs more than the update itself."""
    data = layer.data
    if isinstance(data, np.ndarray) and data.shape == array.shape and data.dtype == array.dtype:
        np.copyto(data, array)
        layer.refresh(extent=False, thumbnail=False)
    else:
        layer.data = array


def clear_array(layer) -> None:
    if layer is not None and isinstance(layer.data, np.ndarray) and layer.data.any():
        layer.data[...] = 0
        layer.refresh(extent=False, thumbnail=False)


def set_points(layer: Points, yx: np.ndarray, positive: np.ndarray) -> None:
    """Show suggestion points with their ``positive`` feature; an empty ``yx`` empties the
    layer (napari 0.9 still draws 2D points whose ``shown`` is False, so hiding is not
    enough). A set of the same size as the one shown (a refinement click's) is written in
    place. Otherwise the data changes without the layer's data events (those make the
    viewer recompute its dims from every layer, and the suggestions never leave the image's
    extent). The ``positive`` feature is written into the layer's table and the colours
    re-mapped from it only when the signs changed (the thumbnail
    waits for :func:`refresh_thumbnails`)."""
    if len(yx) == 0 and len(layer.data) == 0:
        return
    positive = np.asarray(positive, bool)
    resized = len(layer.data) != len(yx)
    if not resized:
        np.copyto(layer.data, yx)
    else:
        with layer._block_refresh(), layer.events.data.blocker():
            layer.data = yx if len(yx) else np.zeros((0, layer.ndim))
    if len(yx) and not np.array_equal(layer.features["positive"].to_numpy(bool), positive):
        layer.features.loc[:, "positive"] = positive
        layer.refresh_colors(update_color_mapping=False)
    layer.refresh(extent=resized, thumbnail=False)


def refresh_thumbnails(layers: "AnnotationLayers | None") -> None:
    """Bring the layer-list thumbnails of the per-click layers up to date."""
    if layers is None:
        return
    for layer in (layers.current, layers.uncertainty, layers.suggestions):
        layer.refresh(data_displayed=False, highlight=False, extent=False, thumbnail=True)
