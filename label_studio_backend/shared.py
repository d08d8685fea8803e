"""What several workers of one backend share through the models directory
(``PASAM_MODEL_DIR``): one fine-tuning run at a time, and the model to serve after it.

Several ``pasam serve`` processes (``pasam serve --workers N``, or one per GPU behind a
reverse proxy) that share ``PASAM_MODEL_DIR`` (and ``PASAM_CACHE_DIR`` for the embedding
cache) behave as one backend:

- a fine-tuning run takes an exclusive ``flock`` on ``.training.lock`` in that directory;
  a worker that cannot take it answers "already training" (the lock goes away with the
  process, also when it crashes);
- the run's result is announced in ``current.json`` (written to a temporary file, fsynced
  and renamed, so a reader sees the old or the new announcement, never half of one);
- every worker looks at ``current.json`` before it answers ``/predict``, ``/setup`` and
  ``/health`` (at most once a second: one ``stat``) and loads the announced checkpoint when
  it names another model version than the one it serves.

With ``DEVICE`` a comma-separated list (``cuda:0,cuda:1``), each worker takes the first
device whose slot lock (``.worker-slot-N.lock``) no live worker holds
(:func:`claim_device`): one worker per GPU, and a worker that its supervisor restarts takes
the slot its predecessor left.

Only announcements made since the server started count (``PASAM_SERVE_STARTED``, set by
``pasam serve`` for all its workers): a restart serves ``--checkpoint`` as before, not the
model a previous session fine-tuned.
"""

import json
import logging
import os
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CURRENT_NAME = "current.json"
LOCK_NAME = ".training.lock"
#: environment variable with the time (seconds since the epoch) the server started
STARTED_ENV = "PASAM_SERVE_STARTED"


def server_started() -> float:
    """When this server (all its workers) started: ``PASAM_SERVE_STARTED``, else now."""
    text = os.environ.get(STARTED_ENV, "")
    try:
        return float(text) if text else time.time()
    except ValueError:
        return time.time()


class TrainingLock:
    """An exclusive, non-blocking lock on ``.training.lock`` shared by every process (and
    every :class:`TrainingLock`) using the same directory."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another holder has it."""
        import fcntl

        if self._fd is not None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        import fcntl

        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def announce(directory: Path, *, checkpoint: Path, model_version: str) -> None:
    """Tell every worker to serve ``checkpoint`` (``model_version``) from now on."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "model_version": model_version,
        "announced_at": time.time(),
        "pid": os.getpid(),
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{CURRENT_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / CURRENT_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Announcements:
    """Reads ``current.json`` for one worker: :meth:`poll` returns a new announcement
    (made since ``since``) once, None otherwise; reads at most every ``interval`` s."""

    def __init__(self, directory: Path, *, since: float, interval: float = 1.0) -> None:
        self.path = Path(directory) / CURRENT_NAME
        self.since = since
        self.interval = interval
        self._checked = 0.0
        self._seen: tuple[int, int] | None = None

    def poll(self, *, force: bool = False) -> dict | None:
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return None
        self._checked = now
        try:
            st = self.path.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("%s is unreadable: ignored", self.path)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str):
            return None
        if float(record.get("announced_at") or 0) < self.since:
            return None  # from an earlier session of the server
        return record


class DeviceSlot:
    """A device this worker holds (:func:`claim_device`) until :meth:`release` or exit."""

    def __init__(self, index: int, device: str, lock: TrainingLock) -> None:
        self.index, self.device, self._lock = index, device, lock

    def release(self) -> None:
        self._lock.release()


def claim_device(devices: list[str], directory: Path) -> DeviceSlot:
    """The first of ``devices`` no other live worker (of any server sharing ``directory``)
    holds; raises RuntimeError when every one is taken (more workers than devices)."""
    for i, device in enumerate(devices):
        lock = TrainingLock(directory)
        lock.path = Path(directory) / f".worker-slot-{i}.lock"
        if lock.acquire():
            return DeviceSlot(i, device, lock)
    raise RuntimeError(
        f"all {len(devices)} devices of DEVICE={','.join(devices)} are taken by other "
        f"workers: start at most {len(devices)} workers"
    )


def device_list(device: str | None) -> list[str] | None:
    """``cuda:0,cuda:1`` -> ["cuda:0", "cuda:1"]; None for a single device."""
    if not device or "," not in device:
        return None
    out = [d.strip() for d in device.split(",") if d.strip()]
    return out or None
