"""Pre-annotating every object of a task that has no prompts ("Retrieve predictions").

A batch task without boxes or keypoints (and without an annotation) is segmented with
:class:`pasam_plugins.automatic.AutomaticSegmenter` (the same rules as ``pasam
segment-all`` and napari's "Segment all"). Each object becomes one region:

- a polygon (``PolygonLabels``, contour simplified to ``PASAM_POLYGON_TOLERANCE`` pixels,
  holes and separate parts joined by zero-width cuts) when the labeling config has a
  ``<PolygonLabels>`` on the image, else a brush mask (``BrushLabels`` RLE);
- scored with its predicted IoU, its ``meta`` holding the boundary uncertainty and its
  review rank; regions come most uncertain first.

The task score is ``1 - mean boundary uncertainty`` of its objects (mean predicted IoU
without the adapter; 0 when nothing was found), so sorting tasks by prediction score shows
the ones to review first. At most ``PASAM_AUTO_MAX_REGIONS`` regions are returned per task
(the most confident; a warning is logged when objects are left out), which bounds the
response: see ``label_studio_backend/README.md`` for measured sizes.

Settings (environment, read when the backend starts; tests set ``backend.automatic``):
``PASAM_AUTO=0`` turns it off (no prediction, as before), ``PASAM_AUTO_POINTS_PER_SIDE``
(32), ``PASAM_AUTO_PRED_IOU``, ``PASAM_AUTO_STABILITY`` and ``PASAM_AUTO_BOX_AGREEMENT``
(unset: the model's defaults, :func:`pasam_plugins.automatic.default_settings`: SAM's 0.88
/ 0.95 for whole-image models, :meth:`~pasam_plugins.automatic.AutomaticSettings.for_zoom`
(box proposals) for zoomed ones), ``PASAM_AUTO_MAX_UNCERTAINTY`` (unset: no uncertainty
filter), ``PASAM_AUTO_MIN_AREA`` (pixels, 0), ``PASAM_AUTO_MAX_REGIONS`` (500),
``PASAM_POLYGON_TOLERANCE`` (1.0).
"""

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from pasam_plugins.automatic import (
    AutomaticSegmenter,
    AutomaticSettings,
    default_settings,
    instance_attributes,
)
from pasam_plugins.export import POLYGON_TOLERANCE, mask_to_polygon
from pasam_plugins.lsformat import mask_to_rle

from .labelconfig import ParsedConfig

logger = logging.getLogger(__name__)


def _env_number(name: str, default: float | None, kind=float) -> Any:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(float(value))
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


@dataclass(frozen=True)
class AutomaticConfig:
    """How tasks without prompts are pre-annotated (see the module docstring)."""

    enabled: bool = True
    points_per_side: int = 32
    #: None: the model's default (:func:`pasam_plugins.automatic.default_settings`)
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    min_box_agreement: float | None = None
    max_boundary_uncertainty: float | None = None
    min_area: int = 0
    max_regions: int = 500
    polygon_tolerance: float = POLYGON_TOLERANCE

    @classmethod
    def from_env(cls) -> "AutomaticConfig":
        return cls(
            enabled=os.environ.get("PASAM_AUTO", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            points_per_side=_env_number("PASAM_AUTO_POINTS_PER_SIDE", 32, int),
            pred_iou_thresh=_env_number("PASAM_AUTO_PRED_IOU", None),
            stability_score_thresh=_env_number("PASAM_AUTO_STABILITY", None),
            min_box_agreement=_env_number("PASAM_AUTO_BOX_AGREEMENT", None),
            max_boundary_uncertainty=_env_number("PASAM_AUTO_MAX_UNCERTAINTY", None),
            min_area=_env_number("PASAM_AUTO_MIN_AREA", 0, int),
            max_regions=_env_number("PASAM_AUTO_MAX_REGIONS", 500, int),
            polygon_tolerance=_env_number("PASAM_POLYGON_TOLERANCE", POLYGON_TOLERANCE),
        )

    def settings(self, model: Any) -> AutomaticSettings:
        """The settings for ``model``: its defaults (zoomed models: box proposals,
        :meth:`AutomaticSettings.for_zoom`) with what the environment sets."""
        return default_settings(
            model,
            points_per_side=self.points_per_side,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            min_box_agreement=self.min_box_agreement,
            max_boundary_uncertainty=self.max_boundary_uncertainty if model.has_adapter else None,
            min_mask_region_area=self.min_area,
        )


def config_of(backend: Any) -> AutomaticConfig:
    """The backend's automatic settings (``backend.automatic``, else from the environment)."""
    cfg = getattr(backend, "automatic", None)
    if not isinstance(cfg, AutomaticConfig):
        cfg = AutomaticConfig.from_env()
        backend.automatic = cfg
    return cfg


def has_annotation(task: dict) -> bool:
    """Whether a person already annotated the task (a non-cancelled annotation with regions)."""
    return any(
        isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")
        for a in task.get("annotations") or []
    )


def predict_task(backend: Any, task: dict, config: ParsedConfig, token: str | None) -> dict:
    """The prediction for a batch task without prompts: every object, or an empty result
    (automatic pre-annotation off, or the task is already annotated), which the backend
    turns into no prediction at all (:meth:`label_studio_backend.model.PASamBackend.predict`:
    an empty one would make Label Studio skip the task once boxes are added)."""
    auto = config_of(backend)
    if not auto.enabled or has_annotation(task):
        return {"result": [], "model_version": backend.model_version}
    task_id = task.get("id")
    image = backend.loader.load(
        task["data"][config.image_key],
        task_id=task_id if isinstance(task_id, int) else None,
        fallback_token=token,
    )
    height, width = image.shape[:2]
    with backend.lock:
        version = backend.model_version
        predictor = backend.predictor
        segmenter = AutomaticSegmenter(predictor, auto.settings(predictor.model))
        result = segmenter.generate(image)
        # the predictor now holds the last window's embedding, not the whole image
        backend._image = backend._image_key = None
    attrs = instance_attributes(result)
    order = result.review_order()  # most uncertain first: what a person checks first
    keep = set(sorted(range(len(result.instances)))[: auto.max_regions])
    if len(keep) < len(result.instances):
        logger.warning(
            "task %s: %d objects found, returning the first %d (PASAM_AUTO_MAX_REGIONS)",
            task_id,
            len(result.instances),
            len(keep),
        )
    regions = []
    for i in order:
        if i not in keep:
            continue
        region = object_region(
            result.instances[i], attrs[i], config, width, height, auto.polygon_tolerance
        )
        if region is not None:
            regions.append(region)
    backend._count("regions_automatic", len(regions))
    return {"result": regions, "score": automatic_task_score(result), "model_version": version}


def automatic_task_score(result) -> float:
    """``1 - mean boundary uncertainty`` of the objects (mean predicted IoU without the
    adapter); 0 when nothing was found."""
    if not result.instances:
        return 0.0
    unc = [i.boundary_uncertainty for i in result.instances if i.boundary_uncertainty is not None]
    if unc:
        return round(float(1.0 - np.mean(unc)), 6)
    return round(float(np.mean([i.predicted_iou for i in result.instances])), 6)


def object_region(
    inst: Any,
    attrs: dict[str, Any],
    config: ParsedConfig,
    width: int,
    height: int,
    tolerance: float = POLYGON_TOLERANCE,
) -> dict | None:
    """One object as a Label Studio region: polygon when the config has PolygonLabels,
    else brush RLE."""
    meta: dict[str, Any] = {"area": inst.area, "review_rank": attrs["review_rank"]}
    text = [f"IoU {inst.predicted_iou:.3f}"]
    if inst.boundary_uncertainty is not None:
        meta["boundary_uncertainty"] = round(inst.boundary_uncertainty, 6)
        meta["mean_uncertainty"] = round(inst.mean_uncertainty, 6)
        text.append(f"boundary uncertainty {inst.boundary_uncertainty:.3f}")
    if attrs.get("needs_review"):
        meta["needs_review"] = True
        text.append("review first")
    meta["text"] = ", ".join(text)
    region: dict[str, Any] = {
        "id": uuid.uuid4().hex[:10],
        "to_name": config.image_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(inst.predicted_iou), 6),
        "readonly": False,
        "meta": meta,
    }
    if config.polygon_name is not None:
        ring = mask_to_polygon(inst.crop, tolerance=tolerance, offset=(inst.box[0], inst.box[1]))
        if ring is None:
            return None
        points = np.round(ring / np.array([width, height]) * 100.0, 4)
        region.update(
            from_name=config.polygon_name,
            type="polygonlabels",
            value={
                "points": points.tolist(),
                "closed": True,
                "polygonlabels": [config.polygon_labels[0]],
            },
        )
        return region
    region.update(
        from_name=config.brush_name,
        type="brushlabels",
        value={
            "format": "rle",
            "rle": mask_to_rle(inst.mask(height, width)),
            "brushlabels": [config.brush_labels[0]],
        },
    )
    return region
