"""The PA-SAM side of the ML backend: prompts in, brush regions out.

``PASamBackend`` owns one :class:`pasam_plugins.predictor.PASamPredictor` (weights loaded
once), the shared :class:`pasam_plugins.cache.EmbeddingCache` and the image loader. The
predictor is used under a lock (one request at a time on the model; downloads, decoding and
RLE encoding run outside it).
"""

import hashlib
import logging
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pasam_plugins.lsformat import mask_to_rle
from pasam_plugins.metrics import UNCERTAINTY_BAND_RATIO, erosion_iterations, uncertainty_band
from pasam_plugins.predictor import PASamPredictor

from .config import Settings
from .errors import BackendError, BadRequest, InvalidPrompt
from .images import ImageLoader
from .labelconfig import ParsedConfig, parse_label_config
from .prompts import Prompt, interactive_prompt, regions_of, task_prompts

logger = logging.getLogger(__name__)

#: webhook events label-studio-ml forwards to training
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")

#: ``trainer(event, payload) -> dict``: called on START_TRAINING; its dict is the answer.
#: Optional attributes: ``annotation_event(event, payload) -> dict | None`` (called for
#: ANNOTATION_CREATED/UPDATED, its dict is merged into the answer), ``status() -> dict``
#: (the ``training`` section of /health and /metrics), ``train_tasks(project_id, tasks,
#: label_config) -> dict`` (legacy ``POST /train``) and ``stop()`` (server shutdown). The
#: default of :meth:`PASamBackend.from_settings` is
#: :class:`label_studio_backend.training.FineTuner`.
Trainer = Callable[[str, dict], dict]


def no_trainer(event: str, payload: dict) -> dict:
    """Default START_TRAINING hook: fine-tuning is not wired in yet."""
    return {"status": "no trainer configured"}


@dataclass
class RegionResult:
    """One predicted object, already encoded for Label Studio."""

    label: str
    rle: list[int]
    score: float
    mean_uncertainty: float | None
    band_uncertainty_sum: float
    band_pixels: int
    area: int
    region_ids: list[str]

    @property
    def boundary_uncertainty(self) -> float | None:
        return self.band_uncertainty_sum / self.band_pixels if self.band_pixels else None


def model_version_of(predictor: PASamPredictor) -> str:
    """A version string that changes exactly when the weights change: the predictor's
    encoder signature plus a hash of the decoder weights (stable across restarts, so Label
    Studio keeps predictions instead of re-predicting)."""
    h = hashlib.sha256(str(predictor.model_signature).encode())
    with torch.no_grad():
        for name, t in sorted(predictor.model.mask_decoder.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    variant = getattr(predictor.model, "variant", "sam")
    return f"pasam-{variant}-{h.hexdigest()[:12]}"


class PASamBackend:
    """PA-SAM predictions in Label Studio's format.

    Arguments:
      predictor (PASamPredictor): the loaded model.
      loader (ImageLoader): fetches task images.
      model_version (str or None): reported to Label Studio; default from the weights.
      max_batch (int): prompt sets per ``predict_torch`` call.
      trainer (Trainer or None): START_TRAINING hook (default :func:`no_trainer`).
    """

    def __init__(
        self,
        *,
        predictor: PASamPredictor,
        loader: ImageLoader,
        model_version: str | None = None,
        max_batch: int = 16,
        trainer: Trainer | None = None,
    ) -> None:
        self.predictor = predictor
        self.loader = loader
        self.model_version = model_version or model_version_of(predictor)
        self.max_batch = max(1, int(max_batch))
        self.trainer: Trainer = trainer or no_trainer
        self.lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._image_key: str | None = None
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self.project_tokens: dict[str, str] = {}
        self.counters: dict[str, int] = {
            "setup": 0,
            "predict_requests": 0,
            "interactive_requests": 0,
            "batch_requests": 0,
            "tasks": 0,
            "regions": 0,
            "errors": 0,
            "webhooks": 0,
        }
        self._latency: deque[float] = deque(maxlen=200)
        self.started = time.time()

    @classmethod
    def from_settings(cls, settings: Settings, *, trainer: Trainer | None = None) -> "PASamBackend":
        """Load the checkpoint once and build the backend."""
        from pasam_plugins.cache import EmbeddingCache
        from pasam_plugins.checkpoint import load_model

        if settings.checkpoint is None:
            raise ValueError("no checkpoint: pass --checkpoint or set PASAM_CHECKPOINT")
        if not settings.checkpoint.exists():
            raise ValueError(f"checkpoint not found: {settings.checkpoint}")
        model = load_model(settings.checkpoint, device="cpu")
        # PASAM_CACHE_DIR is shared with checkpoint downloads: embeddings get a subdirectory
        disk = settings.cache_dir / "embeddings" if settings.cache_dir else None
        cache = EmbeddingCache(max_bytes=settings.cache_max_mb << 20, disk_dir=disk)
        predictor = PASamPredictor(model, device=settings.device, cache=cache)
        loader = ImageLoader(
            label_studio_url=settings.label_studio_url,
            api_key=settings.label_studio_api_key,
            local_files_root=settings.local_files_root,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            timeout=settings.download_timeout,
            cache_bytes=settings.image_cache_max_mb << 20,
        )
        backend = cls(
            predictor=predictor,
            loader=loader,
            model_version=settings.model_version,
            max_batch=settings.max_batch,
            trainer=trainer,
        )
        if trainer is None:
            from .training import FineTuner

            backend.trainer = FineTuner(backend=backend, settings=settings)
        return backend

    # ------------------------------------------------------------------ endpoints
    def setup(self, body: object) -> dict:
        """``POST /setup``: validate the labeling config, remember the project's token."""
        body = _object(body, "the /setup body")
        schema = body.get("schema")
        if schema is None:
            raise BadRequest("missing 'schema' (the project's labeling config)")
        parse_label_config(_string(schema, "schema"))
        token = body.get("access_token")
        if isinstance(token, str) and token:
            self.project_tokens[_project_id(body.get("project"))] = token
        self._count("setup")
        return {"model_version": self.model_version}

    def predict(self, body: object) -> dict:
        """``POST /predict``: interactive (``params.context.result`` present) or batch."""
        t0 = time.perf_counter()
        body = _object(body, "the /predict body")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("missing 'tasks' (a list of Label Studio tasks)")
        config = parse_label_config(_string(body.get("label_config"), "label_config"))
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be a JSON object")
        context = params.get("context") or {}
        if not isinstance(context, dict):
            raise BadRequest("'params.context' must be a JSON object")
        regions = context.get("result")
        if regions is not None and not isinstance(regions, list):
            raise BadRequest("'params.context.result' must be a list of regions")
        token = self.project_tokens.get(_project_id(body.get("project")))
        interactive = bool(regions)
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise BadRequest(f"tasks[{i}] must be a JSON object")
        results = [
            self._predict_task(task, config, regions if interactive else None, token)
            for task in tasks
        ]
        self._count("predict_requests")
        self._count("interactive_requests" if interactive else "batch_requests")
        self._count("tasks", len(tasks))
        self._count("regions", sum(len(r["result"]) for r in results))
        elapsed = time.perf_counter() - t0
        with self._stats_lock:
            self._latency.append(elapsed)
        logger.info(
            "predict: %s, %d task(s), %d region(s), %.0f ms",
            "interactive" if interactive else "batch",
            len(tasks),
            sum(len(r["result"]) for r in results),
            elapsed * 1000,
        )
        return {"results": results, "model_version": self.model_version}

    def webhook(self, body: object) -> tuple[dict, int]:
        """``POST /webhook``: acknowledge Label Studio events; START_TRAINING calls the
        trainer hook. Returns (answer, HTTP status)."""
        body = _object(body, "the /webhook body")
        event = body.get("action")
        if not isinstance(event, str) or not event:
            raise BadRequest("missing 'action' (the Label Studio event name)")
        self._count("webhooks")
        if event not in TRAIN_EVENTS:
            return {"status": "Unknown event", "action": event}, 200
        if event == "START_TRAINING":
            result = self.trainer(event, body)
            if not isinstance(result, dict):
                result = {"status": "ok", "result": result}
            return result, 201
        answer: dict = {"status": "ok", "action": event}
        hook = getattr(self.trainer, "annotation_event", None)
        if callable(hook):
            answer.update(hook(event, body) or {})
        return answer, 201

    def train(self, body: object) -> tuple[dict, int]:
        """Legacy ``POST /train`` (Label Studio without the START_TRAINING webhook flag):
        the annotated tasks come in ``annotations``. Returns (answer, HTTP status)."""
        body = _object(body, "the /train body")
        tasks = body.get("annotations")
        if not isinstance(tasks, list):
            raise BadRequest("missing 'annotations' (the annotated tasks)")
        hook = getattr(self.trainer, "train_tasks", None)
        if not callable(hook):
            return {"status": "no trainer configured"}, 201
        project = _project_id(body.get("project"))
        if not project.isdigit():
            raise BadRequest("missing 'project' (the Label Studio project id)")
        config = body.get("label_config")
        return hook(int(project), tasks, config if isinstance(config, str) else None), 201

    def swap_predictor(self, predictor: PASamPredictor, model_version: str | None = None) -> str:
        """Serve another model from now on (under the model lock, so no request sees a mix);
        returns its model version (default: derived from its weights)."""
        version = model_version or model_version_of(predictor)
        with self.lock:
            self.predictor = predictor
            self.model_version = version
            self._image = self._image_key = None
        logger.info("now serving model version %s", version)
        return version

    def training_status(self) -> dict | None:
        """The trainer's status (``/health`` and ``/metrics``), or None without one."""
        status = getattr(self.trainer, "status", None)
        return status() if callable(status) else None

    def close(self) -> None:
        """Server shutdown: stop a running fine-tuning."""
        stop = getattr(self.trainer, "stop", None)
        if callable(stop):
            stop(timeout=10)

    def metrics(self) -> dict:
        """Counters for ``GET /metrics``."""
        cache = self.predictor.cache
        with self._stats_lock:
            lat = list(self._latency)
            counters = dict(self.counters)
        return {
            "model_version": self.model_version,
            "device": str(self.predictor.device),
            "uptime_s": round(time.time() - self.started, 1),
            "encoder_runs": int(self.predictor.encoder_runs),
            "embedding_cache": {
                "hits": int(cache.hits),
                "misses": int(cache.misses),
                "entries": len(cache),
                "bytes": int(cache.nbytes),
                "disk_dir": str(cache.disk_dir) if cache.disk_dir else None,
            },
            "images": {"downloads": self.loader.downloads, "local_reads": self.loader.local_reads},
            "predict_latency_ms_median": round(statistics.median(lat) * 1000, 2) if lat else None,
            **counters,
            "training": self.training_status(),
        }

    def count_error(self) -> None:
        self._count("errors")

    # ------------------------------------------------------------------ internals
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _predict_task(
        self, task: dict, config: ParsedConfig, regions: list | None, token: str | None
    ) -> dict:
        task_id = task.get("id")
        data = task.get("data")
        if not isinstance(data, dict) or config.image_key not in data:
            raise BadRequest(
                f"task {task_id}: missing data[{config.image_key!r}] (the <Image name="
                f"{config.image_name!r} value=\"${config.image_key}\"> of the labeling config)"
            )
        if regions is None and not any(
            isinstance(r, dict) and r.get("from_name") in config.prompts for r in regions_of(task)
        ):
            # batch task without boxes or keypoints: empty prediction, no download
            return {"result": [], "model_version": self.model_version}
        image = self.loader.load(
            data[config.image_key],
            task_id=task_id if isinstance(task_id, int) else None,
            fallback_token=token,
        )
        height, width = image.shape[:2]
        try:
            if regions is not None:
                prompts = [interactive_prompt(regions, config, width, height)]
            else:
                prompts = task_prompts(task, config, width, height)
        except BackendError as e:
            e.message = f"task {task_id}: {e.message}"
            raise
        if not prompts:
            return {"result": [], "model_version": self.model_version}
        found = self._segment(image, prompts)
        result = [self._region(r, config, width, height) for r in found]
        # the version of the model that made these masks (a fine-tuned model may have been
        # swapped in since)
        version = getattr(self._local, "version", None) or self.model_version
        prediction: dict = {"result": result, "model_version": version}
        prediction["score"] = task_score(found)
        return prediction

    def _segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[RegionResult]:
        """Run all prompts of one image: one embedding, then batched decoder calls (prompts
        with the same structure together, ``max_batch`` at a time)."""
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.structure, []).append(i)
        raw: list[tuple | None] = [None] * len(prompts)
        with self.lock:
            self._local.version = self.model_version
            # the loader hands out the same (read-only) array for the same image: skip even
            # the content hash when the predictor already holds it (we keep the reference,
            # so the identity cannot be reused by another array)
            if image is not self._image or self.predictor.image_key != self._image_key:
                self.predictor.set_image(image)
                self._image, self._image_key = image, self.predictor.image_key
            size = self.predictor.original_size
            # full-resolution outputs (mask logits for up to 3 masks + uncertainty, float32)
            # of one chunk stay within ~512 MiB, whatever the image size
            per_prompt = 16 * size[0] * size[1]
            step = max(1, min(self.max_batch, (512 << 20) // per_prompt))
            for (n_points, has_box), idx in groups.items():
                for start in range(0, len(idx), step):
                    chunk = idx[start : start + step]
                    outs = self._decode([prompts[i] for i in chunk], n_points, has_box, size)
                    for i, out in zip(chunk, outs, strict=True):
                        raw[i] = out
        d = erosion_iterations(*image.shape[:2], UNCERTAINTY_BAND_RATIO)
        results = []
        for p, (mask, score, unc) in zip(prompts, raw, strict=True):  # type: ignore[misc]
            results.append(_region_result(p, mask, score, unc, d))
        return results

    def _decode(self, prompts: list[Prompt], n_points: int, has_box: bool, size) -> list[tuple]:
        pred = self.predictor
        dev = pred.device
        coords = labels = boxes = None
        if n_points:
            pts = torch.as_tensor(np.stack([p.points for p in prompts]), dtype=torch.float, device=dev)
            coords = pred.transform.apply_coords_torch(pts, size)
            labels = torch.as_tensor(np.stack([p.point_labels for p in prompts]), dtype=torch.int, device=dev)
        if has_box:
            b = torch.as_tensor(np.stack([p.box for p in prompts]), dtype=torch.float, device=dev)
            boxes = pred.transform.apply_boxes_torch(b, size)
        # one click alone is ambiguous: let the model pick the best of its 3 masks
        multimask = n_points == 1 and not has_box
        out = pred.predict_torch(coords, labels, boxes, None, multimask_output=multimask)
        best = out.scores.argmax(dim=1)
        rows = torch.arange(len(prompts), device=best.device)
        masks = out.masks[rows, best].cpu().numpy().astype(bool)
        scores = out.scores[rows, best].float().cpu().numpy()
        unc = out.uncertainty.float().cpu().numpy() if out.uncertainty is not None else None
        return [
            (masks[i], float(scores[i]), None if unc is None else unc[i]) for i in range(len(prompts))
        ]

    def _region(self, r: RegionResult, config: ParsedConfig, width: int, height: int) -> dict:
        meta: dict = {"area": r.area, "prompt_region_ids": r.region_ids}
        text = [f"IoU {r.score:.3f}"]
        if r.mean_uncertainty is not None:
            meta["mean_uncertainty"] = round(r.mean_uncertainty, 6)
            text.append(f"uncertainty {r.mean_uncertainty:.3f}")
        if r.boundary_uncertainty is not None:
            meta["boundary_uncertainty"] = round(r.boundary_uncertainty, 6)
        meta["text"] = ", ".join(text)
        return {
            "id": uuid.uuid4().hex[:10],
            "from_name": config.brush_name,
            "to_name": config.image_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": r.rle, "brushlabels": [r.label]},
            "score": round(r.score, 6),
            "readonly": False,
            "meta": meta,
        }


def _region_result(p: Prompt, mask: np.ndarray, score: float, unc: np.ndarray | None, d: int) -> RegionResult:
    area = int(mask.sum())
    mean_u = None
    band_sum, band_n = 0.0, 0
    if unc is not None:
        mean_u = float(unc[mask].mean()) if area else float(unc.mean())
        if area:
            band = uncertainty_band(mask, d)
            band_n = int(band.sum())
            band_sum = float(unc[band].sum(dtype=np.float64))
    return RegionResult(
        label=p.label,
        rle=mask_to_rle(mask),
        score=score,
        mean_uncertainty=mean_u,
        band_uncertainty_sum=band_sum,
        band_pixels=band_n,
        area=area,
        region_ids=list(p.region_ids),
    )


def task_score(found: list[RegionResult]) -> float:
    """Task-level score: 1 - mean uncertainty over the predicted objects' boundary bands
    (pixel-weighted over all objects), so sorting by prediction score puts the least certain
    tasks first. An object with an empty mask counts as fully uncertain. Without the adapter
    (no uncertainty) it is the mean predicted IoU."""
    if not found:
        return 0.0
    if all(r.mean_uncertainty is None for r in found):
        return round(float(np.mean([r.score for r in found])), 6)
    total = sum(r.band_uncertainty_sum for r in found)
    pixels = sum(r.band_pixels for r in found)
    empty = sum(1 for r in found if r.area == 0)
    if pixels == 0:
        return 0.0
    mean_u = total / pixels
    # empty masks: weight them as much as an average object, with uncertainty 1
    if empty:
        n = len(found) - empty
        mean_u = (mean_u * n + empty) / len(found)
    return round(float(1.0 - mean_u), 6)


def _object(body: object, what: str) -> dict:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def _string(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"missing '{name}' (the project's labeling config as XML)")
    return value


def _project_id(project: object) -> str:
    if isinstance(project, dict):
        project = project.get("id")
    return str(project).split(".", 1)[0] if project is not None else ""


__all__ = [
    "PASamBackend",
    "Trainer",
    "no_trainer",
    "mask_to_rle",
    "task_score",
    "InvalidPrompt",
]
