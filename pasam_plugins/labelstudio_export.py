"""Label Studio JSON exports -> objects (:class:`pasam_plugins.export.ExportObject`).

Reads what annotators draw with PA-SAM's help: ``brushlabels`` regions (brush RLE) and
``polygonlabels`` regions (points in percent of the image). Every region of a task's newest
non-cancelled annotation is one object whose first label is its category; the image size
comes from the regions' ``original_width`` / ``original_height``.
"""

import json
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from .export import ExportObject, ImageObjects, ring_to_mask


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export (a list of task objects)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a Label Studio JSON export ({exc})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ValueError(f"{path}: expected a JSON list of Label Studio tasks")
    return data


def task_file_name(task: dict[str, Any]) -> str:
    """The file name of a task's image (from its data URL; ``task<id>`` when there is none)."""
    data = task.get("data") or {}
    url = next((v for k, v in data.items() if k in ("image", "img") and isinstance(v, str)), None)
    if url is None:
        url = next((v for v in data.values() if isinstance(v, str)), "")
    if url.startswith("data:"):
        return f"task{task.get('id', '')}.png"
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    path = query["d"][0] if "d" in query else parsed.path
    return Path(urllib.parse.unquote(path)).name or f"task{task.get('id', '')}"


def _newest(task: dict[str, Any], use_predictions: bool) -> dict[str, Any] | None:
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns and use_predictions:
        anns = list(task.get("predictions") or [])
    if not anns:
        return None
    return max(
        anns,
        key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
    )


def region_mask(region: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """(HxW bool mask, label) of a brush or polygon region; None for other region types."""
    kind = str(region.get("type", "")).lower()
    if kind not in ("brushlabels", "polygonlabels"):
        return None
    value = region.get("value") or {}
    try:
        h, w = int(region["original_height"]), int(region["original_width"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("a region without original_width/original_height") from None
    labels = value.get(kind) or []
    label = str(labels[0]) if labels else "object"
    if kind == "brushlabels":
        from .lsformat import FormatError
        from .lsformat import region_mask as brush_mask

        try:
            return brush_mask(region), label
        except FormatError as e:  # a FormatError is a ValueError
            raise ValueError(str(e)) from None
    points = np.asarray(value.get("points") or [], dtype=np.float64).reshape(-1, 2)
    if len(points) < 3:
        raise ValueError("a polygon region with fewer than 3 points")
    ring = points / 100.0 * np.array([w, h])
    return ring_to_mask(ring, h, w), label


def task_objects(task: dict[str, Any], *, use_predictions: bool = False) -> ImageObjects | None:
    """The objects of a task's newest annotation (None when it has no brush or polygon
    region). Raises ValueError for regions that cannot be read or disagree on the size."""
    ann = _newest(task, use_predictions)
    if ann is None:
        return None
    size: tuple[int, int] | None = None
    objects: list[ExportObject] = []
    for region in ann.get("result") or []:
        got = region_mask(region)
        if got is None:
            continue
        mask, label = got
        if size is not None and size != mask.shape:
            raise ValueError(f"regions of different image sizes {size} and {mask.shape}")
        size = mask.shape  # type: ignore[assignment]
        attrs: dict[str, Any] = {"region_id": region.get("id")}
        if isinstance(region.get("score"), int | float):
            attrs["predicted_iou"] = float(region["score"])
        obj = ExportObject.from_mask(mask, category=label, **attrs)
        if obj is not None:
            objects.append(obj)
    if size is None:
        return None
    return ImageObjects(
        file_name=task_file_name(task),
        height=size[0],
        width=size[1],
        objects=objects,
        attributes={"labelstudio_task_id": task.get("id")},
    )
