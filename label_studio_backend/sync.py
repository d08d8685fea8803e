"""Keep Label Studio's view of this backend in step with the model it serves.

Label Studio 1.23 scores the Data Manager's "Prediction score" column (and shows predictions
when a task opens) for **one** model version per project: ``project.model_version``. When a
backend is connected it sets that to the backend's *title* (``"PA-SAM"``), while the
predictions carry the backend's model version (``"pasam-vit_b-3f2a9c81d0e4"``), so the column
stays empty until someone picks the version by hand, again after every fine-tuning.

:class:`ModelVersionSync` fixes that from the backend's side, through Label Studio's API (it
needs ``LABEL_STUDIO_URL`` and a token with the right to edit the project):

- the ML backend entry that is this server (the card under Settings -> Model) is renamed to
  the model version it serves. Label Studio moves the project's model version along with the
  title (its own rule), so predictions are scored and sorted right away; the live model stays
  selected (opening a task asks the backend), as after a normal connect;
- while a fine-tuning runs the card reads ``"<version> (fine-tuning: step 40/100)"`` (the
  project keeps scoring the served version's predictions when it has any); afterwards the
  new version (and the project follows), or ``"<version> (fine-tuning failed: ...)"``
  until the next batch prediction, fine-tuning or model change;
- a project whose model version a person set to something else (e.g. imported predictions)
  is left alone; only the card's title changes.

Everything runs in one background thread and never delays or fails a prediction; what
happened is in ``GET /metrics`` (``label_studio_sync``) and in the log.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .lsapi import LabelStudioAPIError, LabelStudioClient

logger = logging.getLogger(__name__)

#: longest note shown on the card (Label Studio shows the whole title)
MAX_NOTE = 160


def card_title(version: str, note: str | None) -> str:
    """The ML backend's title in Label Studio: the model version, plus a note in brackets."""
    if not note:
        return version
    note = " ".join(note.split())
    if len(note) > MAX_NOTE:
        note = note[: MAX_NOTE - 3] + "..."
    return f"{version} ({note})"


class ModelVersionSync:
    """Renames this backend's card in each Label Studio project it serves to the served
    model version (plus a note while fine-tuning or after a failure).

    Arguments:
      client: Label Studio's API (None: disabled, e.g. without ``LABEL_STUDIO_URL``).
      version: returns the model version served now.
      basic_auth: the (user, password) this server requires, sent along when Label Studio
        re-validates the connection.
      connect_wait: seconds to wait for Label Studio to finish connecting a new backend
        (it sets the project's model version right after ``/setup`` answers).
      retry_after: seconds before a project whose sync failed is tried again.
    """

    def __init__(
        self,
        client: LabelStudioClient | None,
        *,
        version: Callable[[], str],
        basic_auth: tuple[str, str] | None = None,
        connect_wait: float = 30.0,
        retry_after: float = 60.0,
    ) -> None:
        self.client = client
        self.version = version
        self.basic_auth = basic_auth
        self.connect_wait = float(connect_wait)
        self.retry_after = float(retry_after)
        self._cond = threading.Condition()
        self._queue: list[int] = []
        self._running: int | None = None
        self._stopped = False
        self._tokens: dict[int, str] = {}
        self._notes: dict[int, tuple[str, bool]] = {}  # project -> (note, sticky)
        self._done: dict[int, str] = {}  # project -> title Label Studio shows
        self._failed: dict[int, tuple[float, str]] = {}  # project -> (when, desired title)
        self._versions: list[str] = []  # every version served, newest last
        self._titles: set[str] = set()  # every title set by this server
        self.history: deque[dict[str, Any]] = deque(maxlen=50)
        self._thread: threading.Thread | None = None
        self.served(version())

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # ------------------------------------------------------------------ events
    def project_seen(self, project_id: int, token: str | None = None) -> None:
        """Label Studio called ``/setup`` for the project (a connect, a page view, the start
        of a batch prediction)."""
        if token:
            with self._cond:
                self._tokens[project_id] = token
        self._schedule(project_id)

    def served(self, version: str) -> None:
        """The backend serves ``version`` from now on: resync every known project."""
        with self._cond:
            if version not in self._versions:
                self._versions.append(version)
            projects = list(self._done) + list(self._failed)
            self._failed.clear()
        for p in projects:
            self._schedule(p)

    def note(self, project_id: int, text: str | None, *, sticky: bool = False) -> None:
        """Show ``text`` next to the version on the project's card (None: remove it). A
        sticky note (a failure) stays until the next batch prediction, fine-tuning or model
        change; a plain one (progress) until it is replaced."""
        with self._cond:
            if text:
                self._notes[project_id] = (text, sticky)
            else:
                self._notes.pop(project_id, None)
            self._failed.pop(project_id, None)
        self._schedule(project_id)

    def predicted(self, project_id: int) -> None:
        """A batch prediction for the project: a sticky note has been seen long enough."""
        with self._cond:
            note = self._notes.get(project_id)
            if note is None or not note[1]:
                return
            del self._notes[project_id]
        self._schedule(project_id)

    def desired_title(self, project_id: int) -> str:
        with self._cond:
            note = self._notes.get(project_id)
        return card_title(self.version(), note[0] if note else None)

    def status(self) -> dict[str, Any]:
        """For ``GET /metrics``: whether it runs, each project's card title, recent calls."""
        with self._cond:
            return {
                "enabled": self.enabled,
                "projects": {str(p): t for p, t in self._done.items()},
                "failed": {str(p): t for p, (_, t) in self._failed.items()},
                "history": list(self.history),
            }

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------------ the worker
    def _schedule(self, project_id: int) -> None:
        if self.client is None:
            return
        desired = self.desired_title(project_id)
        with self._cond:
            if self._stopped or project_id in self._queue or self._running == project_id:
                return
            if self._done.get(project_id) == desired:
                return
            failed = self._failed.get(project_id)
            if failed and failed[1] == desired and time.monotonic() - failed[0] < self.retry_after:
                return  # Label Studio's own calls to /setup must not hammer it after a failure
            self._queue.append(project_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="pasam-labelstudio-sync", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    if not self._cond.wait(60.0):
                        self._thread = None  # idle: end; the next event starts a new one
                        return
                if self._stopped:
                    return
                project_id = self._queue.pop(0)
                self._running = project_id
            desired = self.desired_title(project_id)
            try:
                self._sync(project_id, desired)
            except LabelStudioAPIError as e:
                with self._cond:
                    self._failed[project_id] = (time.monotonic(), desired)
                self._record(project_id, desired, error=str(e))
                logger.warning(
                    "could not show model version %s in Label Studio project %s: %s",
                    self.version(),
                    project_id,
                    e,
                )
            except Exception as e:  # noqa: BLE001 - never let the worker die
                with self._cond:
                    self._failed[project_id] = (time.monotonic(), desired)
                self._record(project_id, desired, error=f"{type(e).__name__}: {e}")
                logger.exception("model version sync for project %s failed", project_id)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
            # a change that came in while this ran
            if self.desired_title(project_id) != desired:
                self._schedule(project_id)

    def _sync(self, project_id: int, desired: str) -> None:
        client = self.client
        assert client is not None
        with self._cond:
            token = self._tokens.get(project_id)
        version = self.version()
        # a backend just being connected: Label Studio sets the project's model version to
        # its title right after our /setup answer; renaming before that would leave the
        # project on the old title
        deadline = time.monotonic() + self.connect_wait
        while True:
            project = client.project(project_id, token=token)
            if project.get("model_version") or not project.get("show_collab_predictions", True):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with self._cond:
            versions = set(self._versions)
            titles = set(self._titles)
        ours = [
            b
            for b in client.ml_backends(project_id, token=token)
            if b.get("model_version") in versions or b.get("title") in titles
        ]
        if not ours:
            raise LabelStudioAPIError(
                f"project {project_id} has no ML backend that reports model version {version}"
            )
        old_titles = set()
        for b in ours:
            old_titles.add(b.get("title"))
            if b.get("title") != desired:
                client.rename_ml_backend(b, desired, token=token, basic_auth=self.basic_auth)
                with self._cond:
                    self._titles.add(desired)
        # the project's model version: the served version's predictions are the ones to
        # score. Label Studio moved it along with the title if it was the old title; a
        # version a person picked (not one of ours) stays.
        project = client.project(project_id, token=token)
        current = project.get("model_version") or ""
        if (
            current != version
            and current
            and (current in old_titles | titles | versions | {desired})
        ):
            try:
                client.set_project_model_version(project_id, version, token=token)
            except LabelStudioAPIError as e:
                # refused while no prediction of this version exists and the card shows a
                # note: nothing to score yet; the next rename without note sets it
                if desired == version or e.status != 400:
                    raise
        with self._cond:
            self._done[project_id] = desired
            self._failed.pop(project_id, None)
        self._record(project_id, desired)
        logger.info("Label Studio project %s: model card is now %r", project_id, desired)

    def _record(self, project_id: int, title: str, *, error: str | None = None) -> None:
        entry: dict[str, Any] = {
            "project": project_id,
            "title": title,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if error:
            entry["error"] = error
        with self._cond:
            self.history.append(entry)
