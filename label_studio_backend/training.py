"""Task-specific fine-tuning from Label Studio annotations, in one background thread.

:class:`FineTuner` is the backend's training hook with label-studio-ml's entry point,
``fit(event, data)``. ``START_TRAINING`` (Label Studio's "Start Training", ``POST
/api/ml/{id}/train``, or its "start training on annotation submission" setting), optionally
every N ``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` events, and the legacy ``POST /train``
start a run of :func:`pasam_plugins.train.finetune.finetune`:

1. the project's annotated tasks are fetched from ``LABEL_STUDIO_URL`` (``GET /api/tasks``
   with ``fields=all``, as label-studio-sdk's ``get_labeled_tasks``; the backend's API key,
   or the token Label Studio sent with ``/setup``);
2. when they are the ones the served model was fine-tuned on (same brush regions, images,
   base model and settings), nothing is trained: the answer is "up to date";
3. the brush regions of each task's newest annotation become a label map (one object per
   region, read with :mod:`pasam_plugins.lsformat`) and the image is loaded with the
   backend's guarded image loader;
4. the adapter (or what ``PASAM_TRAIN_PARTS`` names) is fine-tuned, starting from the model the server was started with;
5. the result is saved atomically under ``PASAM_MODEL_DIR`` as
   ``labelstudio-project<ID>-<model version>.safetensors`` (identical weights: the same
   file, never a copy) by :func:`pasam_plugins.checkpoint.save_finetuned`, and swapped in
   with its new model version (Label Studio then re-predicts); other workers of ``pasam
   serve --workers N`` load it from the ``current.json`` announcement
   (:mod:`label_studio_backend.shared`). One run at a time over all workers sharing the
   models directory (a file lock).

Progress and the outcome are in :meth:`FineTuner.status` (``/health`` and ``/metrics``),
in the log, and on the model's card in Label Studio (``report``, see
:mod:`label_studio_backend.sync`). A failed run leaves the served model alone.

The fine-tuner knows the backend only through narrow callables (the served predictor and
version, the image loader, the model swap), so this module does not import the backend.
"""

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pasam_plugins.checkpoint import save_finetuned
from pasam_plugins.lsformat import is_brush_region

from .config import Settings
from .errors import BackendError
from .labelconfig import parse_label_config
from .lsapi import LabelStudioAPIError, LabelStudioClient
from .shared import TrainingLock, announce
from .validation import project_id as parse_project_id

logger = logging.getLogger(__name__)

#: annotation events counted for ``train_every_n_annotations``
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")

#: seconds between progress notes sent to Label Studio
REPORT_EVERY = 5.0


class TrainingError(Exception):
    """A fine-tuning run that cannot proceed; the message is shown in the status."""


class FineTuner:
    """Fine-tunes the served model on a project's brush annotations.

    ``fit(event, data)`` answers every training event at once (a run goes on in the
    background; at most one at a time: another request answers ``"already training"``).

    Arguments:
      settings: ``train_*`` settings and ``models_dir``.
      served: ``served() -> (predictor, model version)`` of the model serving now; its
        device is used for training.
      load_image: ``load_image(url, task_id=..., fallback_token=...) -> array`` (the backend's
        guarded image loader).
      swap: ``swap(model, version) -> version``: serve a fine-tuned model from now on.
      version_of: ``version_of(model) -> str``: the model version the backend would give
        this model (used to name the saved file).
      client: Label Studio's API (None without ``LABEL_STUDIO_URL``: only the legacy
        ``/train`` with tasks works then).
      token_for: ``token_for(project_id)``: the token Label Studio sent with the project's
        ``/setup``, used without ``LABEL_STUDIO_API_KEY``.
      report: ``report(project_id, text or None, sticky=...)``: shows progress and outcome
        where Label Studio users look (the model's card).
      base_model: the starting point of every run (default: the model serving now).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        served: Callable[[], tuple[Any, str]],
        load_image: Callable[..., Any],
        swap: Callable[[Any, str | None], str],
        version_of: Callable[[Any], str],
        client: LabelStudioClient | None = None,
        token_for: Callable[[int], str | None] = lambda project: None,
        report: Callable[..., None] | None = None,
        base_model=None,
    ) -> None:
        self.settings = settings
        self.served = served
        self.load_image = load_image
        self.swap = swap
        self.version_of = version_of
        self.client = client
        self.token_for = token_for
        self.report = report or (lambda project, text, sticky=False: None)
        predictor, version = served()
        self.base_model = base_model if base_model is not None else predictor.model
        self.base_version = version
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._counts: dict[str, int] = {}
        # project -> (inputs digest, model version, checkpoint) of its last finished run
        self._trained: dict[int, tuple[str, str, str]] = {}
        self.runs = 0
        self._status: dict[str, Any] = {"status": "idle"}
        #: one run at a time over every worker sharing the models dir
        self._shared = TrainingLock(settings.models_dir)

    # ------------------------------------------------------------------ the hook
    def fit(self, event: str, data: dict) -> dict:
        """label-studio-ml's training entry: ``START_TRAINING`` starts a run for
        ``data["project"]`` (with ``data["tasks"]``: on those tasks, the legacy ``/train``);
        ``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` count towards
        ``train_every_n_annotations``. Returns the answer for Label Studio."""
        if event == "START_TRAINING":
            project_id = project_id_of(data)
            if project_id is None:
                raise BackendError("START_TRAINING without a project id ('project': {'id': ...})")
            tasks = data.get("tasks")
            return self.start(
                project_id,
                trigger="POST /train" if tasks is not None else event,
                label_config=_label_config(data),
                tasks=tasks if isinstance(tasks, list) else None,
            )
        if event in ANNOTATION_EVENTS:
            return {"status": "ok", "action": event, **(self._count_annotation(data) or {})}
        return {"status": "ok", "action": event}

    def _count_annotation(self, payload: dict) -> dict | None:
        n = self.settings.train_every_n_annotations
        if n <= 0:
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
        answer = self.start(
            project_id, trigger=f"{n} annotation events", label_config=_label_config(payload)
        )
        if answer["status"] == "training started":
            with self._lock:
                self._counts[key] = 0
        return {"training": answer["status"]}

    def status(self) -> dict:
        """A copy of the current/last run's status (``idle``, ``running``, ``done``,
        ``failed``), with phase, step, loss, error, model version and saved checkpoint."""
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
        """Start a run in the background unless one is running; never blocks on training.
        Without a way to get the annotations (no ``LABEL_STUDIO_URL`` and no tasks) it
        answers HTTP 422 at once (Label Studio then marks the model as failed)."""
        if tasks is None and self.client is None:
            raise BackendError(
                "cannot fetch the project's annotations: LABEL_STUDIO_URL is not set (start "
                "the backend with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)",
                status_code=422,
            )
        _, version = self.served()
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
                "model_version": version,
                "previous_model_version": version,
                "checkpoint": None,
                "unchanged": False,
            }
            self._thread = threading.Thread(
                target=self._run,
                args=(project_id, label_config, tasks),
                name=f"pasam-finetune-{project_id}",
                daemon=True,
            )
            self._thread.start()
        logger.info("fine-tuning on project %s started (%s)", project_id, trigger)
        return {
            "status": "training started",
            "project": project_id,
            "steps": self.settings.train_steps,
            "model_version": version,
            "progress": "the model's name in the project's Settings -> Model shows the step "
            "and then the new model version; details at GET /health of this backend",
        }

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
        self.report(project_id, "fine-tuning: fetching annotations")
        try:
            outcome = self._train(project_id, label_config, tasks)
        except Exception as exc:  # noqa: BLE001 - any failure ends in status "failed"
            message = (
                str(exc) if isinstance(exc, TrainingError | LabelStudioAPIError) else _describe(exc)
            )
            self._update(
                status="failed",
                phase=None,
                error=message,
                finished_at=_now(),
                seconds=round(time.perf_counter() - t0, 1),
            )
            self.report(project_id, f"fine-tuning failed: {message}", sticky=True)
            logger.error(
                "fine-tuning on project %s failed: %s",
                project_id,
                message,
                exc_info=not isinstance(
                    exc, TrainingError | LabelStudioAPIError | BackendError | ValueError
                ),
            )
            return
        if outcome is None:
            self._update(
                status="idle", phase=None, error="stopped before the end", finished_at=_now()
            )
            self.report(project_id, None)
            return
        version, path, unchanged = outcome
        if not unchanged:
            try:  # every other worker serves it from its next request
                announce(self.settings.models_dir, checkpoint=path, model_version=version)
            except OSError as e:
                logger.warning("cannot announce %s to the other workers: %s", path, e)
        self._update(
            status="done",
            phase=None,
            model_version=version,
            checkpoint=str(path),
            unchanged=unchanged,
            finished_at=_now(),
            seconds=round(time.perf_counter() - t0, 1),
        )
        if unchanged:
            self.report(
                project_id, "fine-tuning: annotations unchanged since this version", sticky=True
            )
            logger.info(
                "fine-tuning on project %s: annotations unchanged, still serving %s (%s)",
                project_id,
                version,
                path,
            )
        else:
            self.report(project_id, None)
            logger.info(
                "fine-tuning on project %s done: model version %s, saved to %s",
                project_id,
                version,
                path,
            )

    def _train(self, project_id: int, label_config: str | None, tasks: list | None):
        from pasam_plugins.train.datasets import labelstudio_samples
        from pasam_plugins.train.finetune import finetune

        token = self.token_for(project_id)
        if tasks is None or label_config is None:
            if self.client is None:
                raise TrainingError(
                    "cannot fetch the project's annotations: LABEL_STUDIO_URL is not set"
                )
            if label_config is None:
                label_config = self.client.label_config(project_id, token=token)
            if tasks is None:
                tasks = self.client.annotated_tasks(project_id, token=token)
        try:
            config = parse_label_config(label_config or "")
        except BackendError as e:
            raise TrainingError(f"project {project_id}: {e.message}") from None
        tasks = _newest_annotated(tasks, self.settings.train_max_tasks)

        # the same annotations as the served model was trained on: nothing to do
        digest = self._inputs_digest(tasks, config.image_key)
        last = self._trained.get(project_id)
        _, served_version = self.served()
        if last is not None and last[0] == digest and last[1] == served_version:
            return last[1], Path(last[2]), True

        self._update(phase="loading images", tasks=len(tasks))

        def load_image(task: dict):
            data = task.get("data") or {}
            tid = task.get("id")
            return self.load_image(
                data.get(config.image_key),
                task_id=tid if isinstance(tid, int) else None,
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
        steps = self.settings.train_steps
        self._update(phase="training", images=len(ds.samples))
        self.report(project_id, f"fine-tuning: step 0/{steps}")
        last_report = [time.monotonic()]

        def progress(step: int, total: int, info: dict) -> None:
            self._update(
                step=step,
                steps=total,
                loss=round(float(info["loss"]), 6),
                seconds=round(float(info["seconds"]), 1),
            )
            now = time.monotonic()
            if now - last_report[0] >= REPORT_EVERY and step < total:
                last_report[0] = now
                self.report(project_id, f"fine-tuning: step {step}/{total}")

        predictor, _ = self.served()
        result = finetune(
            self.base_model,
            ds.samples,
            steps=steps,
            lr=self.settings.train_lr,
            images_per_step=self.settings.train_images_per_step,
            objects_per_image=self.settings.train_objects_per_image,
            device=predictor.device,
            progress_callback=progress,
            should_stop=self._stop.is_set,
            train=self.settings.train_parts,
        )
        report = result.report
        if self._stop.is_set() or report.steps == 0:
            return None
        if report.skipped:
            self._update(skipped=[f"{w}: {r}" for w, r in report.skipped[:20]])
        self._update(phase="saving")
        self.report(project_id, "fine-tuning: saving")
        version = self.version_of(result.model)
        path = self._save(result, project_id, len(tasks), version)
        version = self.swap(result.model, version)
        self._trained[project_id] = (digest, version, str(path))
        return version, path, False

    def _inputs_digest(self, tasks: list[dict], image_key: str) -> str:
        """What a run depends on: the base model, the training settings and, per task, its
        image and the brush regions of its newest annotation."""
        s = self.settings
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [
                    self.base_version,
                    s.train_steps,
                    s.train_lr,
                    s.train_images_per_step,
                    s.train_objects_per_image,
                    s.train_parts,
                ]
            ).encode()
        )
        for task in sorted(tasks, key=lambda t: str(t.get("id"))):
            ann = _newest(task)
            regions = [r for r in ann.get("result") or [] if is_brush_region(r)]
            h.update(
                json.dumps(
                    [task.get("id"), (task.get("data") or {}).get(image_key), regions],
                    sort_keys=True,
                    default=str,
                ).encode()
            )
        return h.hexdigest()

    def _save(self, result, project_id: int, n_tasks: int, version: str) -> Path:
        """Save under the model version: the same weights never make a second file."""
        path = self.settings.models_dir / f"labelstudio-project{project_id}-{version}.safetensors"
        if path.is_file():
            logger.info("%s exists (the same weights): not written again", path)
            return path
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
        # what this run started from (the fine-tuned model has no file of its own yet)
        start = self.base_model.origin
        if start.file:
            provenance["base"] = start.file
        return save_finetuned(result.model, path, provenance=provenance)


def _newest(task: dict) -> dict:
    anns = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    return max(
        anns,
        key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
        default={},
    )


def _newest_annotated(tasks: Iterable, limit: int) -> list[dict]:
    out = [
        t
        for t in tasks
        if isinstance(t, dict)
        and any(
            isinstance(a, dict) and not a.get("was_cancelled") for a in t.get("annotations") or []
        )
    ]

    def newest(t: dict) -> str:
        return max(str(a.get("updated_at") or a.get("created_at") or "") for a in t["annotations"])

    out.sort(key=newest, reverse=True)
    return out[: max(1, limit)]


def _label_config(payload: dict) -> str | None:
    project = payload.get("project")
    config = project.get("label_config") if isinstance(project, dict) else None
    return config if isinstance(config, str) else None


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
        pid = parse_project_id(c)
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
