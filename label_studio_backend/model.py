"""The PA-SAM side of the ML backend: prompts in, brush regions out.

``PASamBackend`` owns one :class:`pasam_plugins.segment.Segmenter` (the core's rules for
segmenting an object: which mask one click keeps, prompt mapping, zoomed windows, the
per-object summary) around the loaded predictor, the shared
:class:`pasam_plugins.cache.EmbeddingCache` and the image loader. The model is used under
a lock (one request at a time; downloads, decoding and RLE encoding run outside it).
Fine-tuning (:class:`label_studio_backend.training.FineTuner`) and the model-version sync
with Label Studio (:mod:`label_studio_backend.sync`) are wired in by
:meth:`PASamBackend.from_settings`.
"""

import hashlib
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson
import torch

from pasam_plugins.lsformat import mask_to_rle_array, rle_region
from pasam_plugins.metrics import task_score as core_task_score
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import ObjectMask, PromptError, Segmenter

from .config import Settings
from .errors import BackendError, BadRequest, InvalidPrompt
from .images import ImageLoader
from .labelconfig import ParsedConfig, parse_label_config
from .lsapi import LabelStudioClient
from .prefetch import Prefetcher, Warmer
from .prompts import Prompt, interactive_prompt, regions_of, task_prompts
from .shared import Announcements, server_started
from .sync import ModelVersionSync
from .training import FineTuner
from .validation import project_id

logger = logging.getLogger(__name__)

#: webhook events label-studio-ml forwards to ``fit``
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


class Trainer(Protocol):
    """The backend's training hook, shaped like label-studio-ml's ``LabelStudioMLBase.fit``:
    ``fit(event, data) -> dict`` gets every training event (``START_TRAINING``,
    ``ANNOTATION_CREATED``, ``ANNOTATION_UPDATED``, ``ANNOTATION_DELETED``; the legacy ``POST /train`` arrives as
    ``START_TRAINING`` with the annotated tasks in ``data["tasks"]``) and returns the answer.
    Optional: ``status() -> dict`` (the ``training`` section of /health and /metrics) and
    ``stop(timeout)`` (server shutdown). The default of :meth:`PASamBackend.from_settings` is
    :class:`label_studio_backend.training.FineTuner`."""

    def fit(self, event: str, data: dict) -> dict: ...


class NoTrainer:
    """Training hook of a backend built without one."""

    def fit(self, event: str, data: dict) -> dict:
        return {"status": "no trainer configured", "action": event}


@dataclass
class RegionResult:
    """One predicted object: its mask already encoded for Label Studio, and what the task
    score needs (boundary-band uncertainty sum and pixel count, area)."""

    label: str
    rle: np.ndarray  # the brush RLE bytes (uint8)
    score: float
    mean_uncertainty: float | None
    band_uncertainty_sum: float
    band_pixels: int
    area: int
    region_ids: list[str]
    width: int = 0
    height: int = 0

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
    return f"pasam-{predictor.model.origin.variant}-{h.hexdigest()[:12]}"


class PASamBackend:
    """PA-SAM predictions in Label Studio's format.

    Arguments:
      predictor (PASamPredictor): the loaded model.
      loader (ImageLoader): fetches task images.
      model_version (str or None): reported to Label Studio; default from the weights.
      max_batch (int): objects per decoder call in batch mode.
      trainer (Trainer or None): training hook (default: none configured).
      sync (ModelVersionSync or None): keeps Label Studio's model version in step.
    """

    def __init__(
        self,
        *,
        predictor: PASamPredictor,
        loader: ImageLoader,
        model_version: str | None = None,
        max_batch: int = 16,
        trainer: Trainer | None = None,
        sync: ModelVersionSync | None = None,
    ) -> None:
        # (segmenter, model version): replaced as one tuple, so readers that do not take
        # the model lock (health, setup, the fine-tuner) never see a mix
        self._serving: tuple[Segmenter, str] = (
            Segmenter(predictor),
            model_version or model_version_of(predictor),
        )
        self.loader = loader
        self.max_batch = max(1, int(max_batch))
        self.trainer: Trainer = trainer or NoTrainer()
        self.sync = sync
        self.lock = threading.Lock()
        #: the models directory other workers announce fine-tuned models in (see
        #: :mod:`label_studio_backend.shared`); None: this process alone decides
        self.announcements: Announcements | None = None
        self._reload_lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._image_key: str | None = None
        self._stats_lock = threading.Lock()
        self.project_tokens: dict[str, str] = {}
        self.counters: dict[str, int] = {
            "setup": 0,
            "predict_requests": 0,
            "interactive_requests": 0,
            "batch_requests": 0,
            "tasks": 0,
            "regions": 0,
            "empty_masks": 0,
            "errors": 0,
            "webhooks": 0,
        }
        self._latency: deque[float] = deque(maxlen=200)
        self.started = time.time()
        #: /predict requests being answered (prefetching waits until there are none)
        self._in_flight = 0
        self._idle = threading.Condition()
        #: embeds the next tasks of a project after a prediction (PASAM_PREFETCH_TASKS)
        self.prefetcher: Prefetcher | None = None
        #: embeds prompt-less tasks of batch requests ("Retrieve predictions") in the
        #: background, so their first click finds the embedding (whole-image models)
        self.warmer = Warmer(self)

    @property
    def segmenter(self) -> Segmenter:
        return self._serving[0]

    @property
    def model_version(self) -> str:
        return self._serving[1]

    @property
    def predictor(self) -> PASamPredictor:
        return self._serving[0].predictor

    @classmethod
    def from_settings(cls, settings: Settings, *, trainer: Trainer | None = None) -> "PASamBackend":
        """Load the checkpoint once and build the backend, its fine-tuner (unless ``trainer``
        is given) and the model-version sync with Label Studio."""
        from pasam_plugins.cache import EmbeddingCache
        from pasam_plugins.checkpoint import load_model
        from pasam_plugins.paths import embeddings_dir

        if settings.checkpoint is None:
            raise ValueError("no checkpoint: pass --checkpoint or set PASAM_CHECKPOINT")
        if not settings.checkpoint.exists():
            raise ValueError(f"checkpoint not found: {settings.checkpoint}")
        model = load_model(settings.checkpoint, device="cpu")
        # embeddings persist on disk only with an explicit PASAM_CACHE_DIR
        disk = embeddings_dir(settings.cache_dir) if settings.cache_dir else None
        cache = EmbeddingCache(max_bytes=settings.cache_max_mb << 20, disk_dir=disk)
        predictor = PASamPredictor(
            model,
            device=settings.device,
            cache=cache,
            precision=settings.precision,
            fast_encoder=True,
            compile_encoder=settings.compile_encoder,
        )
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
        client = None
        if settings.label_studio_url:
            client = LabelStudioClient(
                settings.label_studio_url,
                loader.auth_header,
                timeout=max(30.0, settings.download_timeout),
            )
        if settings.sync_model_version:
            auth = None
            if settings.basic_auth_user and settings.basic_auth_pass:
                auth = (settings.basic_auth_user, settings.basic_auth_pass)
            backend.sync = ModelVersionSync(
                client, version=lambda: backend.model_version, basic_auth=auth
            )
        if trainer is None:
            sync = backend.sync
            backend.trainer = FineTuner(
                settings=settings,
                served=backend.served,
                load_image=loader.load,
                swap=backend.swap_model,
                version_of=backend.version_of,
                client=client,
                token_for=lambda project: backend.project_tokens.get(str(project)),
                report=sync.note if sync is not None else None,
            )
        if settings.prefetch_tasks > 0:
            if client is None:
                logger.warning(
                    "PASAM_PREFETCH_TASKS=%d is ignored: the next tasks of a project are "
                    "listed through Label Studio's API, and LABEL_STUDIO_URL is not set",
                    settings.prefetch_tasks,
                )
            else:
                backend.prefetcher = Prefetcher(backend, client, count=settings.prefetch_tasks)
        # several workers (pasam serve --workers N, or one per GPU) share the models dir:
        # a model fine-tuned by any of them is served by all
        backend.announcements = Announcements(settings.models_dir, since=server_started())
        return backend

    def refresh(self) -> str | None:
        """Serve the model another worker announced after fine-tuning, if there is a new
        one (checked at most once a second; see :mod:`label_studio_backend.shared`).
        Returns the new model version, or None when nothing changed. Never raises: a
        checkpoint that cannot be loaded is logged and the current model keeps serving."""
        if self.announcements is None or not self._reload_lock.acquire(blocking=False):
            return None  # (another thread is loading it: this request uses the old model)
        try:
            record = self.announcements.poll()
            if record is None or record.get("model_version") == self.model_version:
                return None
            from pathlib import Path

            from pasam_plugins.checkpoint import load_model

            path = Path(record["checkpoint"])
            try:
                model = load_model(path, device="cpu")
            except (ValueError, OSError) as e:  # CheckpointError is a ValueError
                logger.error(
                    "cannot load the announced model %s: %s; keeping %s",
                    path,
                    e,
                    self.model_version,
                )
                return None
            logger.info("another worker fine-tuned %s: loading it", path)
            return self.swap_model(model)
        finally:
            self._reload_lock.release()

    # ------------------------------------------------------------------ endpoints
    def setup(self, body: object) -> dict:
        """``POST /setup``: validate the labeling config, remember the project's token."""
        body = _object(body, "the /setup body")
        self.refresh()
        schema = body.get("schema")
        if schema is None:
            raise BadRequest("missing 'schema' (the project's labeling config)")
        parse_label_config(_string(schema, "schema"))
        project = _project_id(body.get("project"))
        token = body.get("access_token")
        token = token if isinstance(token, str) and token else None
        if token:
            self.project_tokens[project] = token
        self._count("setup")
        if self.sync is not None and project.isdigit():
            self.sync.project_seen(int(project), token)
        return {"model_version": self.model_version}

    def predict(self, body: object) -> dict:
        """``POST /predict``: interactive (``params.context.result`` present) or batch.

        Batch: one answer per task; a task without prompt regions gets an empty list (no
        prediction: Label Studio stores nothing, so a later run with prompts predicts it)."""
        out = self._predict_counted(body)
        for task in out["results"]:
            for region in task.get("result", []) if isinstance(task, dict) else []:
                value = region["value"]
                if isinstance(value.get("rle"), np.ndarray):
                    value["rle"] = value["rle"].tolist()
        return out

    def predict_json(self, body: object) -> bytes:
        """:meth:`predict`'s answer as JSON bytes, what the HTTP route sends: the brush RLE
        arrays (10^5 bytes for a ragged mask) are written by orjson directly, not as
        Python lists."""
        return orjson.dumps(self._predict_counted(body), option=orjson.OPT_SERIALIZE_NUMPY)

    def _predict_counted(self, body: object) -> dict:
        with self._idle:
            self._in_flight += 1
        try:
            return self._predict(body)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _predict(self, body: object) -> dict:
        t0 = time.perf_counter()
        body = _object(body, "the /predict body")
        self.refresh()
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
        project = _project_id(body.get("project"))
        token = self.project_tokens.get(project)
        interactive = bool(regions)
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise BadRequest(f"tasks[{i}] must be a JSON object")
        results = [
            self._predict_task(task, config, regions if interactive else None, token)
            for task in tasks
        ]
        n_regions = sum(len(r["result"]) for r in results if isinstance(r, dict))
        self._count("predict_requests")
        self._count("interactive_requests" if interactive else "batch_requests")
        self._count("tasks", len(tasks))
        self._count("regions", n_regions)
        elapsed = time.perf_counter() - t0
        with self._stats_lock:
            self._latency.append(elapsed)
        logger.info(
            "predict: %s, %d task(s), %d region(s), %.0f ms",
            "interactive" if interactive else "batch",
            len(tasks),
            n_regions,
            elapsed * 1000,
        )
        if not interactive and self.sync is not None and project.isdigit():
            self.sync.predicted(int(project))
        if not interactive and self.segmenter.zoom is None:
            self.warmer.add([t for t in tasks if not self._has_prompts(t, config)], config, token)
        ids = [t["id"] for t in tasks if isinstance(t.get("id"), int)]
        if self.prefetcher is not None and project.isdigit() and ids:
            # the tasks after these ones, embedded in the background (never waited for)
            self.prefetcher.after(int(project), max(ids), config, token)
        return {"results": results, "model_version": self.model_version}

    def embed_task(
        self,
        task: dict,
        config: ParsedConfig,
        token: str | None = None,
        *,
        proceed: Callable[[], bool] | None = None,
    ) -> tuple[int, int]:
        """Embed a task's image as ``/predict`` will ask for it (the whole image, or every
        tile of a large one: the serving segmenter's rules, the same predictor, cache and
        precision, so the same cache keys) without segmenting anything.

        Arguments:
          task: a Label Studio task (``id`` and ``data``).
          config: the project's parsed labeling config (which data key holds the image).
          token: the token Label Studio sent with ``/setup`` (used without an API key).
          proceed: called before each encoder run, outside the model lock; False stops
            (prefetching waits in it until no request is being answered).

        Returns:
          (embeddings computed, embeddings found cached); (0, 0) for a zoomed model, which
          embeds a window around each prompt when the prompt arrives.

        Raises:
          BadRequest: the task has no image under the config's key; ImageError: the image
          cannot be fetched or decoded (the loader's rules).
        """
        task_id = task.get("id")
        data = task.get("data")
        if not isinstance(data, dict) or config.image_key not in data:
            raise BadRequest(f"task {task_id}: missing data[{config.image_key!r}]")
        if self.segmenter.zoom is not None:
            return 0, 0
        image = self.loader.load(
            data[config.image_key],
            task_id=task_id if isinstance(task_id, int) else None,
            fallback_token=token,
        )
        ran = cached = 0
        serving = self.segmenter
        # a segmenter of its own on the same predictor: the serving one keeps its image
        # (and tiles) for the next click; _set_image notices the predictor's new image
        warm = Segmenter(
            serving.predictor, tile=serving.tile, halo=serving.halo, tile_above=serving.tile_above
        )
        windows: list = [None]  # None: the whole image, embedded by set_image
        if serving.tiles(image.shape):
            warm.set_image(image)  # tiles: nothing is embedded yet (no lock needed)
            windows = warm.windows()
        for window in windows:
            if proceed is not None and not proceed():
                break
            with self.lock:
                if self.segmenter is not serving:  # a fine-tuned model came in meanwhile
                    break
                runs = serving.predictor.encoder_runs
                if window is None:
                    warm.set_image(image)
                else:
                    warm.embed_window(window)
                done = serving.predictor.encoder_runs > runs
            ran += done
            cached += not done
        return ran, cached

    def webhook(self, body: object) -> tuple[dict, int]:
        """``POST /webhook``: training events go to ``trainer.fit(event, data)``, others are
        acknowledged. Returns (answer, HTTP status)."""
        body = _object(body, "the /webhook body")
        event = body.get("action")
        if not isinstance(event, str) or not event:
            raise BadRequest("missing 'action' (the Label Studio event name)")
        self._count("webhooks")
        if event not in TRAIN_EVENTS:
            return {"status": "Unknown event", "action": event}, 200
        answer = self.trainer.fit(event, body)
        return (answer if isinstance(answer, dict) else {"status": "ok", "result": answer}), 201

    def train(self, body: object) -> tuple[dict, int]:
        """Legacy ``POST /train`` (Label Studio without the START_TRAINING webhook flag):
        the annotated tasks come in ``annotations``; passed to ``fit`` as a
        ``START_TRAINING`` event with ``tasks``. Returns (answer, HTTP status)."""
        body = _object(body, "the /train body")
        tasks = body.get("annotations")
        if not isinstance(tasks, list):
            raise BadRequest("missing 'annotations' (the annotated tasks)")
        project = project_id(body.get("project"))
        if project is None:
            raise BadRequest("missing or invalid 'project' (the Label Studio project id)")
        config = body.get("label_config")
        data = {
            "action": "START_TRAINING",
            "project": {
                "id": project,
                "label_config": config if isinstance(config, str) else None,
            },
            "tasks": tasks,
        }
        answer = self.trainer.fit("START_TRAINING", data)
        return (answer if isinstance(answer, dict) else {"status": "ok", "result": answer}), 201

    def served(self) -> tuple[PASamPredictor, str]:
        """The predictor serving now and its model version (without waiting for the model
        lock: a long request must not delay a training answer)."""
        segmenter, version = self._serving
        return segmenter.predictor, version

    def swap_model(self, model, model_version: str | None = None) -> str:
        """Serve ``model`` from now on, on the same device, embedding cache and precision
        (under the model lock, so no request sees a mix); returns its model version."""
        return self.swap_predictor(self._predictor_for(model), model_version)

    def version_of(self, model) -> str:
        """The model version ``model`` would be served under."""
        return model_version_of(self._predictor_for(model))

    def _predictor_for(self, model) -> PASamPredictor:
        old = self.predictor
        # same device, cache, precision and encoder path as the predictor it replaces
        return PASamPredictor(model, **old.settings())

    def swap_predictor(self, predictor: PASamPredictor, model_version: str | None = None) -> str:
        """Serve another predictor from now on; returns its model version (default: derived
        from its weights)."""
        version = model_version or model_version_of(predictor)
        segmenter = Segmenter(predictor)
        with self.lock:
            self._serving = (segmenter, version)
            self._image = self._image_key = None
        logger.info("now serving model version %s", version)
        if self.sync is not None:
            self.sync.served(version)
        return version

    def training_status(self) -> dict | None:
        """The trainer's status (``/health`` and ``/metrics``), or None without one."""
        status = getattr(self.trainer, "status", None)
        return status() if callable(status) else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no ``/predict`` is being answered (prefetching goes after requests);
        False when ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        """Server shutdown: stop prefetching, a running fine-tuning and the sync."""
        if self.prefetcher is not None:
            self.prefetcher.stop(timeout=10)
        self.warmer.stop(timeout=10)
        stop = getattr(self.trainer, "stop", None)
        if callable(stop):
            stop(timeout=10)
        if self.sync is not None:
            self.sync.stop()

    def metrics(self) -> dict:
        """Counters for ``GET /metrics``."""
        predictor = self.predictor
        cache = predictor.cache
        with self._stats_lock:
            lat = list(self._latency)
            counters = dict(self.counters)
        return {
            "model_version": self.model_version,
            "pid": os.getpid(),  # which worker answered (pasam serve --workers N)
            "device": str(predictor.device),
            "zoomed": self.segmenter.zoom is not None,
            "encoder": {
                "precision": predictor.precision,
                "fast": bool(predictor.fast_encoder),
                "compile": predictor.compile_state,
            },
            "uptime_s": round(time.time() - self.started, 1),
            "encoder_runs": int(predictor.encoder_runs),
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
            "label_studio_sync": self.sync.status() if self.sync is not None else None,
            "prefetch": self.prefetcher.status() if self.prefetcher is not None else None,
            "warm": self.warmer.status(),
        }

    def count_error(self) -> None:
        self._count("errors")

    # ------------------------------------------------------------------ internals
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[key] = self.counters.get(key, 0) + n

    @staticmethod
    def _has_prompts(task: dict, config: ParsedConfig) -> bool:
        """Whether a task's annotations hold boxes or keypoints of the config's prompts."""
        return any(
            isinstance(r, dict) and r.get("from_name") in config.prompts for r in regions_of(task)
        )

    def _predict_task(
        self, task: dict, config: ParsedConfig, regions: list | None, token: str | None
    ) -> dict | list:
        task_id = task.get("id")
        data = task.get("data")
        if not isinstance(data, dict) or config.image_key not in data:
            raise BadRequest(
                f"task {task_id}: missing data[{config.image_key!r}] (the <Image name="
                f'{config.image_name!r} value="${config.image_key}"> of the labeling config)'
            )
        if regions is None and not self._has_prompts(task, config):
            # batch task without boxes or keypoints: every object, no prompts (issue 17);
            # nothing found (or automatic pre-annotation off, or already annotated): no
            # prediction (an empty one would be stored under this model version and make
            # Label Studio skip the task later, after boxes were added)
            from .automatic import predict_task

            found = predict_task(self, task, config, token)
            return found if found.get("result") else []
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
            return []
        found, version = self._segment(image, prompts, interactive=regions is not None)
        # empty masks count in the task score (fully uncertain) but are no regions
        result = [self._region(r, config) for r in found if r.area]
        self._count("empty_masks", len(found) - len(result))
        # the version of the model that made these masks (a fine-tuned model may have been
        # swapped in since)
        return {"result": result, "score": task_score(found), "model_version": version}

    def _segment(
        self, image: np.ndarray, prompts: list[Prompt], *, interactive: bool
    ) -> tuple[list[RegionResult], str]:
        """All prompts of one image through the core's :class:`Segmenter`: one image, then
        prompts with the same structure batched (``max_batch`` at a time, fewer for big
        images). Returns the objects and the model version that made them."""
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.structure, []).append(i)
        objects: list[ObjectMask | None] = [None] * len(prompts)
        with self.lock:
            seg, version = self._serving
            self._set_image(seg, image)
            h, w = seg.size  # type: ignore[misc]
            # full-resolution outputs (mask logits for up to 3 masks + uncertainty, float32)
            # of one chunk stay within ~512 MiB, whatever the image size
            chunk = max(1, min(self.max_batch, (512 << 20) // (16 * h * w)))
            try:
                if interactive:
                    p = prompts[0]
                    objects[0] = seg.segment(
                        p.points if len(p.points) else None,
                        p.point_labels if len(p.points) else None,
                        p.box,
                    )
                else:
                    for (n_points, has_box), idx in groups.items():
                        group = [prompts[i] for i in idx]
                        out = seg.segment_many(
                            boxes=np.stack([p.box for p in group]) if has_box else None,
                            points=np.stack([p.points for p in group]) if n_points else None,
                            labels=np.stack([p.point_labels for p in group]) if n_points else None,
                            chunk=chunk,
                        )
                        for i, obj in zip(idx, out, strict=True):
                            objects[i] = obj
            except PromptError as e:
                raise InvalidPrompt(str(e)) from None
        results = [
            _region_result(p, obj)
            for p, obj in zip(prompts, objects, strict=True)  # type: ignore[arg-type]
        ]
        return results, version

    def _set_image(self, seg: Segmenter, image: np.ndarray) -> None:
        """Give the segmenter this image unless it holds it already. The loader hands out the
        same (read-only) array for the same image, so identity skips even the content hash
        (we keep the reference, so the identity cannot be reused by another array); a
        whole-image model also checks that the predictor still holds its embedding."""
        if (
            image is self._image
            and seg.size is not None
            and (seg.zoom is not None or seg.predictor.image_key == self._image_key)
        ):
            return
        seg.set_image(image)
        self._image, self._image_key = image, seg.predictor.image_key

    def _region(self, r: RegionResult, config: ParsedConfig) -> dict:
        meta: dict = {"area": r.area, "prompt_region_ids": r.region_ids}
        text = [f"IoU {r.score:.3f}"]
        if r.mean_uncertainty is not None:
            meta["mean_uncertainty"] = round(r.mean_uncertainty, 6)
            text.append(f"uncertainty {r.mean_uncertainty:.3f}")
        if r.boundary_uncertainty is not None:
            meta["boundary_uncertainty"] = round(r.boundary_uncertainty, 6)
        meta["text"] = ", ".join(text)
        return rle_region(
            r.rle,
            r.width,
            r.height,
            label=r.label,
            from_name=config.brush_name,
            to_name=config.image_name,
            score=r.score,
            meta=meta,
        )


def _region_result(p: Prompt, obj: ObjectMask) -> RegionResult:
    """The core's per-object result as the backend reports it: RLE, score, the core's
    uncertainty summary, and the boundary band's sum and size for the task score."""
    mask = obj.mask
    area = obj.area
    mean_u = obj.mean_uncertainty
    if obj.uncertainty is not None and not area:
        mean_u = 1.0  # an empty mask is no answer: fully uncertain (as the task score counts it)
    h, w = mask.shape
    return RegionResult(
        label=p.label,
        rle=mask_to_rle_array(mask),
        score=obj.score,
        mean_uncertainty=mean_u,
        band_uncertainty_sum=obj.band_uncertainty_sum,
        band_pixels=obj.band_pixels,
        area=area,
        region_ids=list(p.region_ids),
        width=int(w),
        height=int(h),
    )


def task_score(found: list[RegionResult]) -> float:
    """Task-level score (:func:`pasam_plugins.metrics.task_score`, the one definition that
    ``pasam eval`` measures): 1 - mean uncertainty over the predicted objects' boundary
    bands, so sorting by prediction score puts the least certain tasks first; an object with
    an empty mask counts as fully uncertain; without the adapter the mean predicted IoU."""
    has_u = any(r.mean_uncertainty is not None for r in found)
    return round(
        core_task_score(
            [r.score for r in found],
            [r.band_uncertainty_sum for r in found] if has_u else None,
            [r.band_pixels for r in found],
            [r.area for r in found],
        ),
        6,
    )


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
    "NoTrainer",
    "task_score",
    "InvalidPrompt",
]
