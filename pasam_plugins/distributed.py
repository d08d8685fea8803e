"""Running under ``torchrun``: PyTorch's own distributed runtime, nothing home-made.

``torchrun`` (also ``srun torchrun`` on SLURM, or ``torch.multiprocessing`` with the same
environment) starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`session` turns that into a
process group (NCCL when the rank runs on CUDA, Gloo on CPUs) and the rank's device
(``cuda:LOCAL_RANK``), and always tears the group down again, also after an error, so that
a failing rank ends instead of leaving the others waiting. Without those variables
everything here is the single-process case: rank 0 of 1, no process group.

The helpers (:func:`shard`, :func:`gather`, :func:`all_gather`, :func:`any_rank`) are what
``pasam train``, ``pasam eval``, ``pasam embed`` and ``pasam segment-all`` use to split
work across ranks and to let rank 0 write the merged outputs.

Environment:
  ``PASAM_DIST_BACKEND``: force a backend (``gloo`` or ``nccl``).
  ``PASAM_DIST_TIMEOUT``: seconds a collective may wait for the other ranks (default
  1800); a rank that died makes the others fail after at most this long (Gloo notices a
  closed connection at once; torchrun also stops the remaining ranks of a failed run).
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds a collective waits for the other ranks by default
DEFAULT_TIMEOUT_S = 1800.0


def launched() -> bool:
    """True in a process started by torchrun (or anything setting ``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs and writes shared outputs."""
    return rank() == 0


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def rank_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``preferred`` is None, ``auto``
    or ``cuda`` (without index) and CUDA is available under torchrun; otherwise what
    :func:`pasam_plugins.predictor.select_device` gives for ``preferred``."""
    from .predictor import select_device

    dev = select_device(preferred)
    if launched() and dev.type == "cuda" and (preferred is None or dev.index is None):
        n = torch.cuda.device_count()
        lr = local_rank()
        if lr >= n:
            raise ValueError(
                f"local rank {lr} has no GPU: this node has {n}; start at most {n} ranks "
                "per node (torchrun --nproc_per_node)"
            )
        dev = torch.device("cuda", lr)
    return dev


def backend_for(device: torch.device) -> str:
    forced = os.environ.get("PASAM_DIST_BACKEND", "").strip().lower()
    if forced:
        if forced not in ("gloo", "nccl"):
            raise ValueError(f"PASAM_DIST_BACKEND={forced!r}: use gloo or nccl")
        return forced
    return "nccl" if device.type == "cuda" else "gloo"


def _timeout() -> timedelta:
    text = os.environ.get("PASAM_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"PASAM_DIST_TIMEOUT={text!r} is not a number of seconds") from None
    return timedelta(seconds=max(1.0, seconds))


@contextmanager
def session(preferred: str | torch.device | None = None) -> Iterator[torch.device]:
    """Join the process group when launched by torchrun; yields this rank's device.

    NCCL for CUDA devices, Gloo otherwise. The group is destroyed on the way out, whether
    the block ended normally or with an error; a group that already existed (a caller's)
    is left alone. Single process: yields the device, no group.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield rank_device(preferred) if launched() else _single_device(preferred)
        return
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed")
    device = rank_device(preferred)
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this GPU at once
    dist.init_process_group(backend=backend, timeout=_timeout(), **kwargs)
    logger.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, backend)
    try:
        yield device
    finally:
        shutdown()


def _single_device(preferred: str | torch.device | None) -> torch.device:
    from .predictor import select_device

    return select_device(preferred)


def shutdown() -> None:
    """Destroy the default process group (never raises: used on error paths)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # noqa: BLE001 - the run is ending anyway
            logger.debug("destroy_process_group: %s", e)


def shard(items: Sequence[T], r: int | None = None, n: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``n``-th item from position ``r``
    (round-robin, so ranks get neighbouring items of similar cost)."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return list(items[r::n])


def gather(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (rank order) on rank 0, None on the others; ``[obj]`` alone."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (rank order) on every rank; ``[obj]`` alone."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one (a stop every rank agrees on)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if active():
        dist.barrier()


class StopRequest:
    """SIGINT/SIGTERM as a request to stop after the current step (every rank then stops
    at the same step, see :func:`any_rank`, and rank 0 saves). torchrun forwards Ctrl-C
    and a scheduler's SIGTERM to every rank, so one Ctrl-C often arrives twice; a signal
    at least ``force_after`` seconds after the first raises ``KeyboardInterrupt`` (stop
    now). Use as a context manager (installs and restores the handlers, main thread only);
    call it to read the flag."""

    def __init__(self, force_after: float = 3.0) -> None:
        self.force_after = force_after
        self.requested = False
        self.signal: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested and now - self._first >= self.force_after:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.signal, self._first = True, signum, now
            logger.warning(
                "rank %d: %s received, stopping after this step (again in %.0f s or later: "
                "stop at once)",
                rank(),
                signal.Signals(signum).name,
                self.force_after,
            )

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
