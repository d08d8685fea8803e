"""Parse a Label Studio labeling config into what PA-SAM needs.

A usable config has an ``<Image>``, a ``<BrushLabels>`` on it (where the masks go) and
prompt tags on the same image: ``<KeyPointLabels>``/``<KeyPoint>`` (clicks, positive or
negative) and/or ``<RectangleLabels>``/``<Rectangle>`` (boxes). Tasks without prompts are
pre-annotated automatically (every object, :mod:`label_studio_backend.automatic`), as
polygons when the config has a ``<PolygonLabels>`` on the image (then, without prompt
tags, no ``<BrushLabels>`` is needed), else as brush masks. ``smart="true"`` on a prompt tag
makes Label Studio send its regions to the backend while the annotator draws (interactive
mode); any prompt tag on the image is read in batch mode (e.g. boxes from a detector).
"""

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from label_studio_sdk.label_interface import LabelInterface

from .errors import BackendError

#: prompt control tag -> kind of prompt ("point" or "box")
PROMPT_TAGS = {
    "KeyPointLabels": "point",
    "KeyPoint": "point",
    "RectangleLabels": "box",
    "Rectangle": "box",
}


class LabelConfigError(BackendError):
    """The labeling config cannot be used with PA-SAM (HTTP 422)."""

    status_code = 422


@dataclass(frozen=True)
class PromptControl:
    """A control tag whose regions are prompts.

    Attributes:
      name: the tag's ``name`` (the ``from_name`` of its regions).
      tag: ``KeyPointLabels``, ``KeyPoint``, ``RectangleLabels`` or ``Rectangle``.
      kind: ``"point"`` or ``"box"``.
      result_type: the ``type`` of its regions (the tag name in lower case).
      labels: the label values (empty for the label-less tags).
      smart: whether Label Studio sends its regions interactively.
    """

    name: str
    tag: str
    kind: str
    result_type: str
    labels: tuple[str, ...]
    smart: bool


@dataclass(frozen=True)
class ParsedConfig:
    """The parts of a labeling config the backend uses.

    Attributes:
      image_name: ``name`` of the ``<Image>`` tag (the ``to_name`` of all regions).
      image_key: the task data key holding the image URL (``value="$image"`` -> ``"image"``).
      brush_name: ``name`` of the ``<BrushLabels>`` tag (the ``from_name`` of predicted masks).
      brush_labels: its label values.
      prompts: prompt controls on the same image, by name.
    """

    image_name: str
    image_key: str
    brush_name: str
    brush_labels: tuple[str, ...]
    prompts: dict[str, PromptControl] = field(default_factory=dict)
    #: a <PolygonLabels> on the image: automatic pre-annotations are polygons (issue 17)
    polygon_name: str | None = None
    polygon_labels: tuple[str, ...] = ()

    def brush_label_for(self, prompt_label: str | None, *, from_name: str) -> str:
        """The brush label a prompt's label maps to: the brush label of the same name, or
        the only brush label. Raises :class:`LabelConfigError` when neither exists."""
        if prompt_label is not None and prompt_label in self.brush_labels:
            return prompt_label
        if len(self.brush_labels) == 1:
            return self.brush_labels[0]
        if prompt_label is None:
            raise LabelConfigError(
                f"region from {from_name!r} has no label and <BrushLabels name="
                f"{self.brush_name!r}> has {len(self.brush_labels)} labels "
                f"{list(self.brush_labels)}: give the prompt a label with the same name as a "
                "brush label"
            )
        raise LabelConfigError(
            f"label {prompt_label!r} of {from_name!r} has no <BrushLabels name="
            f"{self.brush_name!r}> label of the same name (brush labels: "
            f"{list(self.brush_labels)}); add <Label value={prompt_label!r}/> to the BrushLabels"
        )


REQUIRED = (
    "the labeling config needs an <Image>, a <BrushLabels toName=...> on it, and a "
    '<KeyPointLabels smart="true"> and/or <RectangleLabels smart="true"> on the same image '
    "(or, for automatic pre-annotation without prompts, a <BrushLabels> or <PolygonLabels>)"
)


#: parsed configs kept (Label Studio sends the project's config with every request)
CACHE_SIZE = 64
#: longer configs are parsed every time (what a parsed config keeps, its names and labels,
#: is at most this long, so the cache holds at most CACHE_SIZE x this)
CACHE_MAX_CHARS = 256 << 10
_cache: OrderedDict[bytes, ParsedConfig] = OrderedDict()
_cache_lock = threading.Lock()


def parse_label_config(config: str) -> ParsedConfig:
    """Parse a labeling config (XML) with label-studio-sdk's ``LabelInterface``.

    The last :data:`CACHE_SIZE` results of configs up to :data:`CACHE_MAX_CHARS` long are
    kept, keyed by a SHA-256 digest (never the config text itself, which a request can make
    megabytes long).

    Raises:
      LabelConfigError: invalid XML or missing tags; the message says what is missing.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError(f"no labeling config given: {REQUIRED}")
    key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).digest()
    with _cache_lock:
        parsed = _cache.get(key)
        if parsed is not None:
            _cache.move_to_end(key)
            return parsed
    parsed = _parse(config)
    if len(config) > CACHE_MAX_CHARS:
        return parsed
    with _cache_lock:
        _cache[key] = parsed
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return parsed


def _parse(config: str) -> ParsedConfig:
    try:
        interface = LabelInterface(config)
    except Exception as e:  # the SDK raises several XML/validation error types
        raise LabelConfigError(f"cannot parse the labeling config: {e}") from None

    images = {o.name: o for o in interface.objects if o.tag == "Image"}
    if not images:
        raise LabelConfigError(f"the labeling config has no <Image> tag: {REQUIRED}")
    brushes = [
        c
        for c in interface.controls
        if c.tag == "BrushLabels" and any(n in images for n in (c.to_name or []))
    ]
    polygons = [
        c
        for c in interface.controls
        if c.tag == "PolygonLabels" and any(n in images for n in (c.to_name or []))
    ]
    if not brushes and polygons and not any(c.tag in PROMPT_TAGS for c in interface.controls):
        # automatic pre-annotation only: polygons, no prompts (label_studio_backend.automatic)
        brushes = polygons
    if not brushes:
        raise LabelConfigError(
            "the labeling config has no <BrushLabels> whose toName is an <Image> "
            f"({sorted(images)}): {REQUIRED}"
        )
    brush = brushes[0]
    image_name = next(n for n in brush.to_name if n in images)
    labels = tuple(str(v) for v in (brush.labels or []))
    if not labels:
        raise LabelConfigError(
            f"<BrushLabels name={brush.name!r}> has no <Label> children: add at least one"
        )
    prompts: dict[str, PromptControl] = {}
    for c in interface.controls:
        kind = PROMPT_TAGS.get(c.tag)
        if kind is None or image_name not in (c.to_name or []):
            continue
        prompts[c.name] = PromptControl(
            name=c.name,
            tag=c.tag,
            kind=kind,
            result_type=c.tag.lower(),
            labels=tuple(str(v) for v in (getattr(c, "labels", None) or [])),
            smart=str(c.attr.get("smart", "")).lower() == "true",
        )
    polygon = next((c for c in polygons if image_name in (c.to_name or [])), None)
    polygon_labels = tuple(str(v) for v in (polygon.labels or [])) if polygon else ()
    if polygon is not None and not polygon_labels:
        raise LabelConfigError(
            f"<PolygonLabels name={polygon.name!r}> has no <Label> children: add at least one"
        )
    if not prompts and any(c.tag in PROMPT_TAGS for c in interface.controls):
        raise LabelConfigError(
            f"the labeling config has no <KeyPointLabels> or <RectangleLabels> on the image "
            f"{image_name!r}: {REQUIRED}"
        )
    # no prompt tags at all is fine: every object of a task is pre-annotated automatically
    value = str(images[image_name].value or "")
    image_key = value[1:] if value.startswith("$") else value
    if not image_key:
        raise LabelConfigError(
            f'<Image name={image_name!r}> has no value="$key" naming the task data field'
        )
    return ParsedConfig(
        image_name=image_name,
        image_key=image_key,
        brush_name=brush.name,
        brush_labels=labels,
        prompts=prompts,
        polygon_name=polygon.name if polygon is not None else None,
        polygon_labels=polygon_labels,
    )
