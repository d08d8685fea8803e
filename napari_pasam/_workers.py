"""Worker plumbing: one task at a time uses the model; the dock shows what runs and can
cancel it.

A task is a napari thread worker (``napari.qt.threading.create_worker``) with a kind:

- ``predict``: a click's prediction (short; the panel's buttons stay live),
- ``load``, ``embed``, ``propagate``, ``finetune``, ``segment_all``: long tasks (buttons that cannot run
  meanwhile are disabled, the dock's progress bar shows them).

Cancelling ``load``/``embed``/``predict`` discards the result when it arrives and frees the
annotator at once (the model slot's lock keeps a later job from using the model before the
abandoned one is done); ``propagate`` stops after the slice in progress and ``finetune``
after the step in progress, ``segment_all`` after the embedding or decoder batch in
progress (all deliver what they did so far).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LONG_KINDS = frozenset({"load", "embed", "propagate", "finetune", "segment_all"})


@dataclass
class Task:
    """A running worker and how the dock shows it."""

    kind: str
    title: str
    worker: Any
    total: int | None = None
    done: int = 0
    stop: Callable[[], None] | None = None
    cancelled: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def long(self) -> bool:
        return self.kind in LONG_KINDS


class TaskRunner:
    """Starts workers one at a time and tells ``on_change`` listeners when the running task,
    its progress or its status changes."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.listeners: list[Callable[[Task | None], None]] = []
        self.idle_callbacks: list[Callable[[], None]] = []
        self.closed = False

    def close(self) -> None:
        """The dock is gone: results of workers still running are dropped, nothing new
        starts, no listener is called again."""
        self.closed = True
        self.listeners.clear()
        self.idle_callbacks.clear()
        if self.task is not None and self.task.stop is not None:
            self.task.stop()
        self.task = None

    @property
    def busy(self) -> bool:
        return self.task is not None

    @property
    def long_running(self) -> bool:
        return self.task is not None and self.task.long

    def _notify(self) -> None:
        for fn in list(self.listeners):
            fn(self.task)

    def start(
        self,
        worker,
        *,
        kind: str,
        title: str,
        on_return: Callable[[Any], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        total: int | None = None,
        stop: Callable[[], None] | None = None,
    ) -> Task:
        """Start ``worker`` as the running task. ``on_return``/``on_yield`` are not called
        for a task cancelled by discarding (load/embed/predict); ``on_finish`` always is."""
        task = Task(kind, title, worker, total=total, stop=stop)
        if self.closed:
            raise RuntimeError("the annotator was closed")
        self.task = task

        def returned(value: Any) -> None:
            if self.closed or (task.cancelled and task.stop is None):
                return
            if on_return is not None:
                on_return(value)

        def yielded(value: Any) -> None:
            task.done += 1
            if self.closed or (task.cancelled and task.stop is None):
                return
            if on_yield is not None:
                on_yield(value)
            if self.task is task:
                self._notify()

        def finished() -> None:
            if self.closed:
                return
            if on_finish is not None:
                on_finish()
            if self.task is task:
                self.task = None
                self._notify()
                self._run_idle()

        worker.returned.connect(returned)
        if hasattr(worker, "yielded"):  # generator workers
            worker.yielded.connect(yielded)
        worker.finished.connect(finished)
        self._notify()
        worker.start()
        return task

    def _run_idle(self) -> None:
        for fn in list(self.idle_callbacks):
            if self.task is not None:
                return
            fn()

    def progress(self, done: int, title: str | None = None) -> None:
        """Report progress of the running task (e.g. a fine-tuning step)."""
        if self.task is not None:
            self.task.done = done
            if title is not None:
                self.task.title = title
            self._notify()

    def cancel(self) -> bool:
        """Cancel the running task (see the module docstring); False when nothing runs."""
        task = self.task
        if task is None:
            return False
        task.cancelled = True
        if task.stop is not None:  # cooperative: ends after the current slice/step
            task.stop()
            task.title = f"Stopping: {task.title}"
            self._notify()
            return True
        # discard: the worker finishes in the background, its result is ignored
        self.task = None
        self._notify()
        self._run_idle()
        return True
