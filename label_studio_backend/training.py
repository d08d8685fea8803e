"""Task-specific fine-tuning from Label Studio annotations, in one background thread.

``START_TRAINING`` (Label Studio's "Start Training" button, ``POST /api/ml/{id}/train``, or
its "start training on annotation submission" setting), optionally every N
``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` webhook events, and the legacy ``POST /train``
start a run of :func:`pasam_plugins.train.finetune.finetune`:

1. the project's annotated tasks are fetched from ``LABEL_STUDIO_URL`` (``GET /api/tasks``
   with ``fields=all``, as label-studio-sdk's ``get_labeled_tasks``; the backend's API key,
   or the token Label Studio sent with ``/setup``);
2. the brush regions (RLE) of each task's newest annotation become a label map (one object
   per region) and the image is loaded with the backend's guarded :class:`ImageLoader`;
3. the adapter is fine-tuned, starting from the model the server was started with;
4. the result is saved atomically under ``PASAM_MODEL_DIR`` (adapter only when the base
   checkpoint can be named, else the full model) and swapped in under the model lock with
   a new model version (Label Studio then re-predicts); image embeddings of the old model
   are not reused when the guiding conv changed (the cache key holds the model signature).

A failed run leaves the served model alone; the error is in :meth:`FineTuner.status`
(``/health`` and ``/metrics``, ``training`` section) and in the log.
"""

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from pasam_plugins.checkpoint import save_finetuned
from pasam_plugins.predictor import PASamPredictor

from .config import Settings
from .errors import BackendError
from .labelconfig import parse_label_config
from .shared import TrainingLock, announce
from .validation import project_id

if TYPE_CHECKING:
    from .model import PASamBackend

logger = logging.getLogger(__name__)

#: annotation events counted for ``train_every_n_annotations``
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


class TrainingError(Exception):
    """A fine-tuning run that cannot proceed; the message is shown in the status."""


class FineTuner:
    """The backend's training hook: ``trainer(event, payload) -> dict`` for ``START_TRAINING``,
    :meth:`annotation_event` for annotation webhooks, :meth:`train_tasks` for the legacy
    ``/train`` request, :meth:`status` for ``/health`` and ``/metrics``.

    At most one run at a time; requests while one runs answer ``{"status": "already
    training"}``.

    Arguments:
      backend (PASamBackend): the server whose model is fine-tuned and swapped.
      settings (Settings): ``train_*`` settings, ``models_dir``, ``checkpoint`` (the base).
      base_model (PASam or None): the starting point of every run (default: the model the
        backend serves now).
    """

    def __init__(self, *, backend: "PASamBackend", settings: Settings, base_model=None) -> None:
        self.backend = backend
        self.settings = settings
        self.base_model = base_model if base_model is not None else backend.predictor.model
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._counts: dict[str, int] = {}
        self.runs = 0
        self._status: dict[str, Any] = {"status": "idle"}
        #: one run at a time over every worker sharing the models dir
        self._shared = TrainingLock(settings.models_dir)

    # ------------------------------------------------------------------ hooks
    def __call__(self, event: str, payload: dict) -> dict:
        """``START_TRAINING``: start a run for the payload's project, answer at once."""
        project_id = project_id_of(payload)
        if project_id is None:
            raise BackendError("START_TRAINING without a project id ('project': {'id': ...})")
        project = payload.get("project") if isinstance(payload.get("project"), dict) else {}
        return self.start(project_id, trigger=event, label_config=project.get("label_config"))

    def annotation_event(self, event: str, payload: dict) -> dict | None:
        """Count ``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` per project; every
        ``train_every_n_annotations`` events start a run. Returns extra answer fields."""
        n = self.settings.train_every_n_annotations
        if n <= 0 or event not in ANNOTATION_EVENTS:
            return None
        project_id = project_id_of(payload)
        if project_id is None:
            return None
        key = str(project_id)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            count = self._counts[key]
        if count < n:
            return {"annotations_until_training": n - count}
        project = payload.get("project") if isinstance(payload.get("project"), dict) else {}
        answer = self.start(
            project_id, trigger=f"{n} annotation events", label_config=project.get("label_config")
        )
        if answer["status"] == "training started":
            with self._lock:
                self._counts[key] = 0
        return {"training": answer["status"]}

    def train_tasks(self, project_id: int, tasks: list, label_config: str | None) -> dict:
        """Legacy ``POST /train``: Label Studio sent the annotated tasks itself."""
        return self.start(project_id, trigger="POST /train", label_config=label_config, tasks=tasks)

    def status(self) -> dict:
        """A copy of the current/last run's status (``idle``, ``running``, ``done``,
        ``failed``), with step, loss, error, model version and saved checkpoint."""
        with self._lock:
            out = dict(self._status)
        out["runs"] = self.runs
        out["every_n_annotations"] = self.settings.train_every_n_annotations
        return out

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(
        self,
        project_id: int,
        *,
        trigger: str,
        label_config: str | None = None,
        tasks: list | None = None,
    ) -> dict:
        """Start a run in the background unless one is running; never blocks on training."""
        with self._lock:
            if self.running:
                return {
                    "status": "already training",
                    "project": self._status.get("project"),
                    "step": self._status.get("step"),
                    "steps": self._status.get("steps"),
                }
            try:
                mine = self._shared.acquire()
            except OSError as e:  # (saving the result would fail the same way)
                logger.warning(
                    "cannot lock %s (%s): not coordinating with other workers", self._shared.path, e
                )
                mine = True
            if not mine:
                return {"status": "already training", "where": "another worker"}
            self.runs += 1
            self._stop.clear()
            self._status = {
                "status": "running",
                "phase": "fetching tasks",
                "project": project_id,
                "trigger": trigger,
                "step": 0,
                "steps": self.settings.train_steps,
                "loss": None,
                "error": None,
                "started_at": _now(),
                "finished_at": None,
                "model_version": self.backend.model_version,
                "previous_model_version": self.backend.model_version,
                "checkpoint": None,
            }
            self._thread = threading.Thread(
                target=self._run,
                args=(project_id, label_config, tasks),
                name=f"pasam-finetune-{project_id}",
                daemon=True,
            )
            self._thread.start()
        logger.info("fine-tuning on project %s started (%s)", project_id, trigger)
        return {"status": "training started", "project": project_id, "steps": self.settings.train_steps}

    def stop(self, timeout: float | None = None) -> None:
        """Ask a running fine-tuning to end (the partial result is discarded) and wait."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the current run to end; returns the status."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.status()

    # ------------------------------------------------------------------ the run
    def _update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)

    def _run(self, project_id: int, label_config: str | None, tasks: list | None) -> None:
        try:
            self._run_locked(project_id, label_config, tasks)
        finally:
            self._shared.release()

    def _run_locked(self, project_id: int, label_config: str | None, tasks: list | None) -> None:
        t0 = time.perf_counter()
        try:
            version, path = self._train(project_id, label_config, tasks)
        except Exception as exc:  # noqa: BLE001 - any failure ends in status "failed"
            message = str(exc) if isinstance(exc, TrainingError) else _describe(exc)
            self._update(status="failed", phase=None, error=message, finished_at=_now(),
                         seconds=round(time.perf_counter() - t0, 1))
            logger.error("fine-tuning on project %s failed: %s", project_id, message,
                         exc_info=not isinstance(exc, TrainingError | BackendError | ValueError))
            return
        if version is None:
            self._update(status="idle", phase=None, error="stopped before the end",
                         finished_at=_now())
            return
        try:  # every other worker serves it from its next request
            announce(self.settings.models_dir, checkpoint=path, model_version=version)
        except OSError as e:
            logger.warning("cannot announce %s to the other workers: %s", path, e)
        self._update(status="done", phase=None, model_version=version, checkpoint=str(path),
                     finished_at=_now(), seconds=round(time.perf_counter() - t0, 1))
        logger.info("fine-tuning on project %s done: model version %s, saved to %s",
                    project_id, version, path)

    def _train(self, project_id: int, label_config: str | None, tasks: list | None):
        from pasam_plugins.train.datasets import labelstudio_samples
        from pasam_plugins.train.finetune import finetune

        backend = self.backend
        token = backend.project_tokens.get(str(project_id))
        if tasks is None or label_config is None:
            api = LabelStudioAPI(backend, token=token)
            if label_config is None:
                label_config = api.label_config(project_id)
            if tasks is None:
                tasks = api.annotated_tasks(project_id)
        try:
            config = parse_label_config(label_config or "")
        except BackendError as e:
            raise TrainingError(f"project {project_id}: {e.message}") from None
        tasks = _newest_annotated(tasks, self.settings.train_max_tasks)
        self._update(phase="loading images", tasks=len(tasks))

        def load_image(task: dict):
            data = task.get("data") or {}
            tid = task.get("id")
            return backend.loader.load(
                data.get(config.image_key), task_id=tid if isinstance(tid, int) else None,
                fallback_token=token,
            )

        # every brush region of a task's newest annotation is one object
        ds = labelstudio_samples(tasks, load_image, name=f"project{project_id}")
        if not ds.samples:
            why = "; ".join(f"{w}: {r}" for w, r in ds.skipped[:5])
            raise TrainingError(
                f"project {project_id} has no usable annotations to train on: {len(tasks)} "
                f"annotated task(s), none with a non-empty <BrushLabels name="
                f"{config.brush_name!r}> region" + (f" ({why})" if why else "")
            )
        self._update(phase="training", images=len(ds.samples))
        steps = self.settings.train_steps

        def progress(step: int, total: int, info: dict) -> None:
            self._update(step=step, steps=total, loss=round(float(info["loss"]), 6),
                         seconds=round(float(info["seconds"]), 1))

        result = finetune(
            self.base_model,
            ds.samples,
            steps=steps,
            lr=self.settings.train_lr,
            images_per_step=self.settings.train_images_per_step,
            objects_per_image=self.settings.train_objects_per_image,
            device=backend.predictor.device,
            progress_callback=progress,
            should_stop=self._stop.is_set,
            train=self.settings.train_parts,
        )
        report = result.report
        if self._stop.is_set() or report.steps == 0:
            return None, None
        if report.skipped:
            self._update(skipped=[f"{w}: {r}" for w, r in report.skipped[:20]])
        self._update(phase="saving")
        path = self._save(result, project_id, len(tasks))
        # same device, cache, precision and encoder path as the predictor it replaces
        predictor = PASamPredictor(result.model, **backend.predictor.settings())
        return backend.swap_predictor(predictor), path

    def _save(self, result, project_id: int, n_tasks: int) -> Path:
        report = result.report
        provenance = {
            "kind": "label studio fine-tuning",
            "train": self.settings.train_parts,
            "project": project_id,
            "tasks": n_tasks,
            "images": report.images,
            "objects": report.objects,
            "steps": report.steps,
            "lr": self.settings.train_lr,
            "first_loss": report.losses[0] if report.losses else None,
            "final_loss": report.losses[-1] if report.losses else None,
        }
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = self.settings.models_dir / f"labelstudio-project{project_id}-{stamp}-run{self.runs}.safetensors"
        return save_finetuned(result.model, path, provenance=provenance)


def _newest_annotated(tasks: Iterable, limit: int) -> list[dict]:
    out = [t for t in tasks if isinstance(t, dict) and any(
        isinstance(a, dict) and not a.get("was_cancelled") for a in t.get("annotations") or [])]

    def newest(t: dict) -> str:
        return max(str(a.get("updated_at") or a.get("created_at") or "") for a in t["annotations"])

    out.sort(key=newest, reverse=True)
    return out[: max(1, limit)]


class LabelStudioAPI:
    """The two Label Studio API calls fine-tuning needs, on LABEL_STUDIO_URL only, with the
    backend's credentials, timeouts and no redirects or proxies."""

    page_size = 100

    def __init__(self, backend: "PASamBackend", *, token: str | None) -> None:
        self.loader = backend.loader
        self.url = backend.loader.label_studio_url
        self.token = token
        if not self.url:
            raise TrainingError(
                "cannot fetch the project's annotations: LABEL_STUDIO_URL is not set"
            )

    def _get(self, path: str, params: dict) -> Any:
        try:
            auth = self.loader.auth_header(self.token)
        except BackendError as e:
            raise TrainingError(f"cannot fetch the project's annotations: {e.message}") from None
        with requests.Session() as s:
            s.trust_env = False
            try:
                r = s.get(self.url + path, params=params, headers={"Authorization": auth},
                          timeout=(5.0, max(30.0, self.loader.timeout)), allow_redirects=False)
            except requests.RequestException as e:
                raise TrainingError(f"cannot reach Label Studio at {self.url}: {e}") from None
        if r.status_code != 200:
            hint = " (check LABEL_STUDIO_API_KEY)" if r.status_code in (401, 403) else ""
            raise TrainingError(
                f"Label Studio answered HTTP {r.status_code} for GET {path}{hint}: {r.text[:300]}"
            )
        try:
            return r.json()
        except ValueError:
            raise TrainingError(f"Label Studio sent no JSON for GET {path}") from None

    def label_config(self, project_id: int) -> str:
        project = self._get(f"/api/projects/{int(project_id)}/", {})
        config = project.get("label_config") if isinstance(project, dict) else None
        if not isinstance(config, str):
            raise TrainingError(f"project {project_id}: Label Studio sent no label_config")
        return config

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """All tasks of the project that have annotations (with their annotations),
        page by page."""
        query = json.dumps({"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater",
             "type": "Number", "value": 0}]}})
        tasks: list[dict] = []
        page = 1
        while True:
            body = self._get("/api/tasks", {
                "project": int(project_id), "fields": "all", "page": page,
                "page_size": self.page_size, "query": query, "resolve_uri": "false",
            })
            items = body.get("tasks") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise TrainingError("unexpected answer of Label Studio's /api/tasks")
            tasks += [t for t in items if isinstance(t, dict) and t.get("annotations")]
            total = body.get("total", 0) if isinstance(body, dict) else 0
            if not items or page * self.page_size >= int(total or 0):
                return tasks
            page += 1


def project_id_of(payload: dict) -> int | None:
    """The project id of a webhook payload (``project.id``, ``annotation.project``,
    ``task.project``) or of a ``/train`` request (``"12.1700000000"``)."""
    candidates = []
    project = payload.get("project")
    if isinstance(project, dict):
        candidates.append(project.get("id"))
    else:
        candidates.append(project)
    for key in ("annotation", "task"):
        obj = payload.get(key)
        if isinstance(obj, dict):
            candidates.append(obj.get("project"))
    for c in candidates:
        pid = project_id(c)
        if pid is not None:
            return pid
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _describe(exc: Exception) -> str:
    if isinstance(exc, BackendError):
        return exc.message
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
