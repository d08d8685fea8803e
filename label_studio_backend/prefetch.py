"""Embedding the next tasks of a project while the user works on this one (opt-in).

With ``PASAM_PREFETCH_TASKS=N`` (default 0: off), after answering ``/predict`` for a task
the backend lists the next N tasks of the same project (task id order, through Label
Studio's API) and embeds their images in one background thread, exactly as ``/predict``
will ask for them (:meth:`label_studio_backend.model.PASamBackend.embed_task`: the whole
image, or every tile of a large one; same predictor, cache and precision), so the first
click on the next task finds its embedding cached (in memory, and on disk with
``PASAM_CACHE_DIR``). Zoomed models (the shipped one) embed a window per prompt when it
arrives: for them there is nothing to prefetch.

- Requests never wait for it: :meth:`Prefetcher.after` only queues (at most ``queue_size``
  requests: a newer one for a project replaces its queued one, the oldest is dropped when
  the queue is full), and before each encoder run the thread waits until no ``/predict`` is
  being answered; the model lock keeps one encoder at a time.
- A newer request for the same project (the user moved on) stops the rest of the one being
  prefetched; :meth:`Prefetcher.stop` (server shutdown) stops it all.
- A failure (Label Studio unreachable, an image that cannot be loaded) is logged and
  counted (``GET /metrics``: ``prefetch``), never an HTTP error.
"""

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .labelconfig import ParsedConfig
from .lsapi import LabelStudioAPIError, LabelStudioClient

logger = logging.getLogger(__name__)

#: prefetch requests waiting at most (one per project; the oldest is dropped beyond)
QUEUE_SIZE = 4


@dataclass(frozen=True)
class _Request:
    project: int
    after: int  # the task id just predicted: its successors are prefetched
    config: ParsedConfig
    token: str | None


class _QueueThread:
    """A deque of work items handled one at a time by a daemon thread started on demand:
    what :class:`Prefetcher` and :class:`Warmer` share (waiting, stopping, failures)."""

    thread_name = "pasam-background"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._current: Any = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.queue_size = 1  # items waiting at most (set by the subclasses)
        self.counters: dict[str, int] = {}
        self.last_error: str | None = None

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or running (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and self._current is None, timeout=timeout
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Drop what is queued and stop after the encoder run in progress (shutdown)."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _wake(self) -> None:
        """With the lock held, after queueing: drop the oldest items beyond ``queue_size``
        (counted), start the thread if needed, notify it."""
        while len(self._queue) > self.queue_size:
            self._queue.popleft()
            self.counters["dropped"] += 1
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                item = self._current = self._queue.popleft()
            try:
                self._handle(item)
            except Exception as e:  # never let the thread die on an unexpected error
                logger.exception("%s: %r failed", self.thread_name, item)
                self._fail(f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _handle(self, item: Any) -> None:
        raise NotImplementedError

    def _fail(self, message: str) -> None:
        logger.warning("%s: %s", self.thread_name, message)
        with self._cond:
            self.counters["failures"] = self.counters.get("failures", 0) + 1
            self.last_error = message


class Prefetcher(_QueueThread):
    """Embeds the next ``count`` tasks of a project in a background thread.

    Arguments:
      backend: the :class:`~label_studio_backend.model.PASamBackend` (``embed_task``,
        ``wait_idle``).
      client: Label Studio's API (lists the next tasks).
      count: tasks embedded after each prediction.
      queue_size: prefetch requests waiting at most.
    """

    def __init__(
        self, backend: Any, client: LabelStudioClient, *, count: int, queue_size: int = QUEUE_SIZE
    ) -> None:
        super().__init__()
        self.backend = backend
        self.client = client
        self.count = int(count)
        self.queue_size = max(1, int(queue_size))
        self.counters = {
            "requests": 0,
            "dropped": 0,
            "tasks": 0,
            "embedded": 0,
            "cached": 0,
            "failures": 0,
        }

    thread_name = "pasam-prefetch"

    # ------------------------------------------------------------------ public
    def after(self, project: int, task_id: int, config: ParsedConfig, token: str | None) -> None:
        """Queue the tasks after ``task_id`` of ``project`` (returns at once)."""
        with self._cond:
            if self._stopped:
                return
            self.counters["requests"] += 1
            kept = [r for r in self._queue if r.project != project]
            self.counters["dropped"] += len(self._queue) - len(kept)
            self._queue = deque(kept)
            self._queue.append(_Request(project, int(task_id), config, token))
            self._wake()

    def status(self) -> dict:
        """For ``GET /metrics``."""
        with self._cond:
            return {
                "tasks_per_prediction": self.count,
                "queued": len(self._queue),
                "running": self._current.project if self._current else None,
                **self.counters,
                "last_error": self.last_error,
            }

    # ------------------------------------------------------------------ thread
    def _handle(self, request: _Request) -> None:
        t0 = time.perf_counter()
        try:
            tasks = list(
                self.client.tasks(
                    request.project, after=request.after, limit=self.count, token=request.token
                )
            )
        except LabelStudioAPIError as e:
            self._fail(f"project {request.project}: cannot list the next tasks: {e}")
            return
        ran = cached = done = 0
        for task in tasks:
            if self._cancelled(request):
                break
            try:
                r, c = self.backend.embed_task(
                    task, request.config, request.token, proceed=lambda: self._proceed(request)
                )
            except Exception as e:  # an image that cannot be loaded: the next task
                message = getattr(e, "message", None) or str(e)
                self._fail(f"project {request.project}, task {task.get('id')}: {message}")
                continue
            ran, cached, done = ran + r, cached + c, done + 1
            with self._cond:
                self.counters["tasks"] += 1
                self.counters["embedded"] += r
                self.counters["cached"] += c
        if tasks:
            logger.info(
                "prefetch: project %d, %d task(s) after task %d: %d embedding(s) computed, %d "
                "cached, %.0f ms",
                request.project,
                done,
                request.after,
                ran,
                cached,
                (time.perf_counter() - t0) * 1000,
            )

    def _cancelled(self, request: _Request) -> bool:
        """Stopped, or a newer request for the same project is queued (the user moved on)."""
        with self._cond:
            return self._stopped or any(r.project == request.project for r in self._queue)

    def _proceed(self, request: _Request) -> bool:
        """Before each encoder run: wait until no request is being answered; False when
        the prefetch is cancelled meanwhile."""
        while not self.backend.wait_idle(timeout=0.1):
            if self._cancelled(request):
                return False
        return not self._cancelled(request)


#: tasks of "Retrieve predictions" waiting to be embedded at most (the oldest are dropped)
WARM_QUEUE = 256


class Warmer(_QueueThread):
    """Embeds the images of tasks that came without prompts ("Retrieve predictions" on tasks
    with no boxes or keypoints) in a background thread, as ``/predict`` will ask for them
    (:meth:`~label_studio_backend.model.PASamBackend.embed_task`): the first click on such a
    task then finds its embedding (every tile of a large image) cached. This is how Label
    Studio users warm the cache without a shell; ``pasam embed-project`` does a whole project.

    - Requests never wait: :meth:`add` only queues (at most ``queue_size`` tasks, the oldest
      dropped and counted beyond); before each encoder run the thread waits until no
      ``/predict`` is being answered; the model lock keeps one encoder at a time.
    - A task whose image cannot be loaded is logged and counted, never an HTTP error.
    """

    thread_name = "pasam-warm"

    def __init__(self, backend: Any, *, queue_size: int = WARM_QUEUE) -> None:
        super().__init__()
        self.backend = backend
        self.queue_size = max(1, int(queue_size))
        self.counters = {"tasks": 0, "dropped": 0, "embedded": 0, "cached": 0, "failures": 0}

    def add(self, tasks: list[dict], config: ParsedConfig, token: str | None) -> None:
        """Queue ``tasks`` (returns at once)."""
        with self._cond:
            if self._stopped or not tasks:
                return
            for task in tasks:
                self._queue.append((task, config, token))
            self._wake()

    def status(self) -> dict:
        """For ``GET /metrics``."""
        with self._cond:
            return {"queued": len(self._queue), **self.counters, "last_error": self.last_error}

    def _proceed(self) -> bool:
        while not self.backend.wait_idle(timeout=0.1):
            if self._stopped:
                return False
        return not self._stopped

    def _handle(self, item: tuple[dict, ParsedConfig, str | None]) -> None:
        task, config, token = item
        try:
            ran, cached = self.backend.embed_task(task, config, token, proceed=self._proceed)
        except Exception as e:  # an image that cannot be loaded: the next task
            message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            self._fail(f"task {task.get('id')}: {message}")
            return
        with self._cond:
            self.counters["tasks"] += 1
            self.counters["embedded"] += ran
            self.counters["cached"] += cached
