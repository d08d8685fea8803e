"""Label Studio regions -> PA-SAM prompts in image pixels.

Label Studio stores region geometry in percent of the image (``x``, ``y``, ``width``,
``height`` in 0..100, rectangles rotated by ``rotation`` degrees clockwise around their
top-left corner). Percentages are converted with the size of the decoded image, so prompts
line up with the pixels whatever ``original_width``/``original_height`` the region carries.
"""

import math
import reprlib
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidPrompt
from .labelconfig import ParsedConfig, PromptControl

_TOL = 1e-3  # percent; Label Studio's float arithmetic can overshoot 100 by a hair
#: more regions in one interactive request are refused (HTTP 422)
MAX_INTERACTIVE_REGIONS = 1000


@dataclass
class Prompt:
    """One object to segment.

    Attributes:
      points: Nx2 float (x, y) in SAM's pixel convention (pixel i's center is i).
      point_labels: N int, 1 positive / 0 negative.
      box: 4 float (x0, y0, x1, y1) in pixels, or None.
      label: the brush label the mask gets.
      region_ids: ids of the Label Studio regions the prompt came from.
    """

    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    label: str
    region_ids: list[str] = field(default_factory=list)

    @property
    def structure(self) -> tuple[int, bool]:
        """(number of points, has box): prompts with the same structure batch together."""
        return len(self.points), self.box is not None


def _finite(v: object) -> bool:
    try:
        return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    except OverflowError:  # an integer beyond a float's range
        return False


def _show(v: object) -> str:
    """A short description of a bad value for an error message."""
    if isinstance(v, int) and not isinstance(v, bool):
        return "an integer too large for a float"
    return reprlib.repr(v)


def _number(value: dict, key: str, where: str) -> float:
    v = value.get(key)
    if not _finite(v):
        raise InvalidPrompt(f"{where}: value.{key} must be a number, got {_show(v)}")
    return float(v)


def _percent(value: dict, key: str, where: str) -> float:
    v = _number(value, key, where)
    if not -_TOL <= v <= 100 + _TOL:
        raise InvalidPrompt(f"{where}: value.{key}={v} is outside 0..100 (percent of the image)")
    return min(max(v, 0.0), 100.0)


def region_label(region: dict, control: PromptControl) -> str | None:
    """The first label of a region (``value.keypointlabels[0]`` ...), or None."""
    value = region.get("value") or {}
    labels = value.get(control.result_type)
    if labels is None:
        labels = next((v for k, v in value.items() if k.endswith("labels")), None)
    if isinstance(labels, list) and labels:
        return str(labels[0])
    return None


@dataclass
class ParsedRegion:
    """A validated prompt region."""

    control: PromptControl
    kind: str  # "point" or "box"
    xy: np.ndarray  # point: (x, y); box: (x0, y0, x1, y1) in pixels
    positive: bool
    label: str | None
    region_id: str


def parse_region(region: object, config: ParsedConfig, width: int, height: int) -> ParsedRegion:
    """Validate one Label Studio region and convert it to pixels of a ``width`` x ``height``
    image. Raises :class:`InvalidPrompt` naming the problem."""
    if not isinstance(region, dict):
        raise InvalidPrompt(f"a region must be a JSON object, got {type(region).__name__}")
    rid = str(region.get("id", "?"))
    from_name = region.get("from_name")
    where = f"region {reprlib.repr(rid)} (from_name={reprlib.repr(from_name)})"
    control = config.prompts.get(from_name) if isinstance(from_name, str) else None
    if control is None:
        raise InvalidPrompt(
            f"{where}: unknown from_name; the labeling config's prompt tags on image "
            f"{config.image_name!r} are {sorted(config.prompts)}"
        )
    to_name = region.get("to_name")
    if to_name is not None and to_name != config.image_name:
        raise InvalidPrompt(
            f"{where}: to_name {reprlib.repr(to_name)} is not the image {config.image_name!r}"
        )
    value = region.get("value")
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{where}: missing 'value' object with the region geometry")
    x = _percent(value, "x", where) / 100.0 * width
    y = _percent(value, "y", where) / 100.0 * height
    positive = region.get("is_positive", True) is not False
    label = region_label(region, control)
    if control.kind == "point":
        # continuous coordinates -> SAM's pixel-index convention (the encoder adds 0.5 back)
        xy = np.array(
            [min(max(x - 0.5, 0.0), width - 1.0), min(max(y - 0.5, 0.0), height - 1.0)],
            dtype=np.float64,
        )
        return ParsedRegion(control, "point", xy, positive, label, rid)
    w_pct = _percent(value, "width", where)
    h_pct = _percent(value, "height", where)
    w = w_pct / 100.0 * width
    h = h_pct / 100.0 * height
    rotation = value.get("rotation", 0) or 0
    if not _finite(rotation):
        raise InvalidPrompt(f"{where}: value.rotation must be a number, got {_show(rotation)}")
    if rotation % 360:
        # corners rotated clockwise (image y points down) around the top-left corner
        t = math.radians(rotation)
        c, s = math.cos(t), math.sin(t)
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        rot = np.stack([corners[:, 0] * c - corners[:, 1] * s, corners[:, 0] * s + corners[:, 1] * c], 1)
        rot += (x, y)
        x0, y0 = rot.min(0)
        x1, y1 = rot.max(0)
    else:
        if value["x"] + w_pct > 100 + _TOL or value["y"] + h_pct > 100 + _TOL:
            raise InvalidPrompt(
                f"{where}: the box (x={value['x']}, y={value['y']}, width={w_pct}, "
                f"height={h_pct}) extends outside 0..100"
            )
        x0, y0, x1, y1 = x, y, x + w, y + h
    box = np.array(
        [
            min(max(x0, 0.0), float(width)),
            min(max(y0, 0.0), float(height)),
            min(max(x1, 0.0), float(width)),
            min(max(y1, 0.0), float(height)),
        ],
        dtype=np.float64,
    )
    return ParsedRegion(control, "box", box, positive, label, rid)


def interactive_prompt(regions: list, config: ParsedConfig, width: int, height: int) -> Prompt:
    """All regions of an interactive request as ONE prompt: every keypoint (positive, or
    negative with ``is_positive: false``) plus the box (the last one if several)."""
    if len(regions) > MAX_INTERACTIVE_REGIONS:
        # every point is a token the decoder attends over the whole image with: a
        # request must not be able to make it allocate gigabytes
        raise InvalidPrompt(
            f"the interactive context has {len(regions)} regions; at most "
            f"{MAX_INTERACTIVE_REGIONS} keypoints and boxes make one object"
        )
    parsed = [parse_region(r, config, width, height) for r in regions]
    points = [p for p in parsed if p.kind == "point"]
    boxes = [p for p in parsed if p.kind == "box"]
    box = boxes[-1] if boxes else None
    labelled = ([box] if box is not None else []) + [p for p in points if p.positive] + points
    source = next((p for p in labelled if p.label is not None), labelled[0] if labelled else None)
    if source is None:
        raise InvalidPrompt("the interactive context has no keypoint or rectangle region")
    label = config.brush_label_for(source.label, from_name=source.control.name)
    return Prompt(
        points=np.array([p.xy for p in points], dtype=np.float64).reshape(-1, 2),
        point_labels=np.array([1 if p.positive else 0 for p in points], dtype=np.int64),
        box=None if box is None else box.xy,
        label=label,
        region_ids=[p.region_id for p in parsed],
    )


def task_prompts(task: dict, config: ParsedConfig, width: int, height: int) -> list[Prompt]:
    """One prompt per rectangle or positive keypoint region found in the task's annotations
    (not cancelled) and predictions; regions of other tags are ignored and duplicates (same
    tag, geometry and label) count once."""
    prompts: list[Prompt] = []
    seen: set[tuple] = set()
    for source in regions_of(task):
        if not isinstance(source, dict) or source.get("from_name") not in config.prompts:
            continue
        r = parse_region(source, config, width, height)
        if r.kind == "point" and not r.positive:
            continue  # a lone negative click does not describe an object
        key = (r.control.name, tuple(np.round(r.xy, 2)), r.label)
        if key in seen:
            continue
        seen.add(key)
        label = config.brush_label_for(r.label, from_name=r.control.name)
        if r.kind == "point":
            prompts.append(Prompt(r.xy[None], np.ones(1, np.int64), None, label, [r.region_id]))
        else:
            prompts.append(Prompt(np.zeros((0, 2)), np.zeros(0, np.int64), r.xy, label, [r.region_id]))
    return prompts


def regions_of(task: dict) -> list:
    """All result regions of a task's annotations (not cancelled) and predictions."""
    out: list = []
    for key in ("annotations", "predictions"):
        items = task.get(key) or []
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict) or item.get("was_cancelled"):
                continue
            result = item.get("result")
            if isinstance(result, list):
                out.extend(result)
    return out
