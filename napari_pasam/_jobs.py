"""Worker-thread helpers shared by the widget and the Segment all panel: failures come back
as :class:`_Failure` values, shown as notifications, never as tracebacks."""

from dataclasses import dataclass


@dataclass
class _Failure:
    message: str


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {text}"


def _run_safely(fn, *args, **kwargs):
    """Run ``fn`` in a worker thread; exceptions come back as :class:`_Failure` values so
    they reach the user as notifications, never as tracebacks."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the user by the main thread
        return _Failure(_message(exc))


def _guarded(gen_fn, *args, **kwargs):
    """Run the generator ``gen_fn`` in a worker thread; an exception ends it with a
    :class:`_Failure` return value (shown as a notification, never a traceback)."""
    try:
        return (yield from gen_fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - reported to the user by the main thread
        return _Failure(_message(exc))
