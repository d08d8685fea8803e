"""Exporting a PA-SAM labels layer (with its ``features``) as COCO JSON, label TIFF or CSV.

Pure functions (no Qt): the "Segment all" panel's buttons call them with a file name. Every
2D plane of the layer (each slice of a stack) holding objects is one COCO image (file name
``<image>`` or ``<image>[z=3]``); the layer's ``features`` rows (matched by their ``index``
column) become the objects' attributes (predicted IoU, uncertainties, review rank ...).
"""

from pathlib import Path
from typing import Any

import numpy as np

from pasam_plugins.export import (
    POLYGON_TOLERANCE,
    ExportObject,
    ImageObjects,
    coco_dataset,
    object_rows,
    objects_from_labels,
    write_csv,
    write_json,
    write_label_tiff,
)


def _features(layer) -> dict[int, dict[str, Any]]:
    table = getattr(layer, "features", None)
    if table is None or not len(table) or "index" not in table:
        return {}
    out = {}
    for row in table.to_dict("records"):
        idx = int(row.pop("index"))
        out[idx] = {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()
        }
    return out


def layer_planes(data: np.ndarray, leading_ndim: int) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """``(leading index, 2D plane)`` of every plane of a labels array that holds objects."""
    arr = np.asarray(data)
    if arr.ndim != leading_ndim + 2:
        raise ValueError(f"labels of shape {arr.shape} are not {leading_ndim + 2}D")
    if leading_ndim == 0:
        return [((), arr)] if arr.any() else []
    out = []
    for idx in np.ndindex(*arr.shape[:leading_ndim]):
        plane = arr[idx]
        if plane.any():
            out.append((tuple(int(i) for i in idx), plane))
    return out


def _plane_name(image_name: str, leading: tuple[int, ...]) -> str:
    if not leading:
        return image_name
    if len(leading) == 1:
        return f"{image_name}[z={leading[0]}]"
    return f"{image_name}[{','.join(str(i) for i in leading)}]"


def layer_objects(
    layer, leading_ndim: int, image_name: str
) -> list[tuple[tuple[int, ...], ImageObjects, list[tuple[int, ExportObject]]]]:
    """Per plane with objects: its leading index, the COCO image and ``(label, object)``."""
    feats = _features(layer)
    out = []
    for leading, plane in layer_planes(layer.data, leading_ndim):
        objs = objects_from_labels(plane, feats)
        for value, o in objs:
            o.attributes = {"label": int(value), **o.attributes}
        h, w = plane.shape
        im = ImageObjects(
            file_name=_plane_name(image_name, leading),
            height=h,
            width=w,
            objects=[o for _, o in objs],
            attributes={"slice": list(leading)} if leading else {},
        )
        out.append((leading, im, objs))
    return out


def export_coco(
    layer,
    path: str | Path,
    *,
    leading_ndim: int = 0,
    image_name: str = "image",
    mode: str = "rle",
    tolerance: float = POLYGON_TOLERANCE,
) -> dict[str, Any]:
    """Write the layer as a COCO instance-segmentation JSON; returns the dataset."""
    planes = layer_objects(layer, leading_ndim, image_name)
    if not planes:
        raise ValueError("the labels layer holds no objects to export")
    coco = coco_dataset([im for _, im, _ in planes], mode=mode, tolerance=tolerance)
    write_json(path, coco)
    return coco


def export_label_tiff(layer, path: str | Path) -> Path:
    """Write the labels layer's data (2D or a stack) as a label TIFF."""
    data = np.asarray(layer.data)
    if not data.any():
        raise ValueError("the labels layer holds no objects to export")
    return write_label_tiff(path, data)


def export_csv(
    layer, path: str | Path, *, leading_ndim: int = 0, image_name: str = "image"
) -> Path:
    """Write one row per object and plane: geometry plus the layer's features."""
    rows = []
    for leading, _, objs in layer_objects(layer, leading_ndim, image_name):
        extra: dict[str, Any] = {"image": image_name}
        if leading:
            extra["slice"] = leading[-1] if len(leading) == 1 else ",".join(map(str, leading))
        rows += object_rows(objs, **extra)
    if not rows:
        raise ValueError("the labels layer holds no objects to export")
    return write_csv(path, rows)
