"""Annotation session logs: what a person did, so that real sessions are measured like the
simulated annotators of ``pasam eval --clicks``.

A log is a JSONL file, one event per line, written as it happens (flushed per line, so a
crash loses nothing). Format version 1:

.. code-block:: text

    {"event": "session", "version": 1, "time": "2026-11-30T19:50:00+00:00", "tool": "napari",
     "model": "pasam-vit_s256-3f2a9c81d0e4"}
    {"event": "prompt", "t": 1.52, "image": "cells.tif[z=3]", "object": 1, "kind": "point",
     "x": 120.0, "y": 80.0, "label": 1, "predicted_iou": 0.91, "iou": null}
    {"event": "prompt", "t": 2.80, "image": "cells.tif[z=3]", "object": 1, "kind": "box",
     "box": [60.0, 40.0, 200.0, 180.0], "predicted_iou": 0.93, "iou": null}
    {"event": "accept", "t": 4.10, "image": "cells.tif[z=3]", "object": 1,
     "predicted_iou": 0.93, "iou": null, "area": 5120}
    {"event": "discard", "t": 9.00, "image": "cells.tif[z=3]", "object": 2}

- ``t``: seconds since the session started (monotonic clock).
- ``object``: the object being annotated; its prompts run until an ``accept`` or ``discard``
  of the same ``(image, object)``; a later prompt with the same id starts a new object.
- ``predicted_iou``: the model's predicted IoU of the mask after this prompt; ``iou``: the
  true IoU when a reference mask is known (e.g. re-annotating a labelled image), else null.
- ``kind``: ``point`` (``x``, ``y`` image pixels, ``label`` 1 positive / 0 negative) or
  ``box`` (``box``: x0, y0, x1, y1).
- ``source`` (``accept`` only, optional): how an object was found when not by its own
  prompts, e.g. ``"segment all"`` (napari's automatic segmentation); such objects are
  counted apart and left out of the per-object clicks and seconds.

:class:`SessionLog` writes it (the napari panel and any other front end),
:func:`read_session_log` reads and checks it, :func:`summarize_sessions` (``pasam eval
--session-log``) gives clicks, seconds and IoU per object.
"""

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import never_reached, number_of_clicks

VERSION = 1
EVENTS = ("session", "prompt", "accept", "discard")


class SessionLogError(ValueError):
    """A session log that cannot be read; the message names the file and line."""


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


class SessionLog:
    """Writes one session's events to a JSONL file (appending: one file can hold several
    sessions).

    Arguments:
      path: the log file.
      tool / model: recorded in the session line (e.g. ``napari``, the model version).
      clock: seconds, monotonic (default :func:`time.monotonic`; tests pass their own).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        tool: str | None = None,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._t0 = clock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._write(
            {
                "event": "session",
                "version": VERSION,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "tool": tool,
                "model": model,
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            raise ValueError(f"session log {self.path} is closed")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def _now(self) -> float:
        return round(self._clock() - self._t0, 4)

    def _event(self, event: str, image: str, object_id: int, **fields: Any) -> None:
        """One object event: its name, the time since the session started, the image and
        the object, then ``fields``."""
        self._write(
            {"event": event, "t": self._now(), "image": str(image), "object": int(object_id)}
            | fields
        )

    def point(
        self,
        image: str,
        object_id: int,
        x: float,
        y: float,
        label: int,
        *,
        predicted_iou: float | None = None,
        iou: float | None = None,
    ) -> None:
        """A click (image pixels; label 1 positive, 0 negative) and the result's IoUs."""
        self._event(
            "prompt",
            image,
            object_id,
            kind="point",
            x=float(x),
            y=float(y),
            label=int(label),
            predicted_iou=_num(predicted_iou),
            iou=_num(iou),
        )

    def box(
        self,
        image: str,
        object_id: int,
        box: Sequence[float],
        *,
        predicted_iou: float | None = None,
        iou: float | None = None,
    ) -> None:
        """A box (x0, y0, x1, y1 image pixels) and the result's IoUs."""
        self._event(
            "prompt",
            image,
            object_id,
            kind="box",
            box=[float(v) for v in box],
            predicted_iou=_num(predicted_iou),
            iou=_num(iou),
        )

    def accept(
        self,
        image: str,
        object_id: int,
        *,
        predicted_iou: float | None = None,
        iou: float | None = None,
        area: int | None = None,
        source: str | None = None,
    ) -> None:
        """The object was kept (``source``: how it was found when not by its prompts, e.g.
        ``"segment all"``)."""
        extra = {} if source is None else {"source": str(source)}
        self._event(
            "accept",
            image,
            object_id,
            predicted_iou=_num(predicted_iou),
            iou=_num(iou),
            area=None if area is None else int(area),
            **extra,
        )

    def discard(self, image: str, object_id: int) -> None:
        """The object was thrown away."""
        self._event("discard", image, object_id)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SessionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REQUIRED = {
    "session": ("version",),
    "prompt": ("t", "image", "object", "kind"),
    "accept": ("t", "image", "object"),
    "discard": ("t", "image", "object"),
}


def read_session_log(path: str | Path) -> list[dict[str, Any]]:
    """The events of a log, checked: every line a JSON object with a known ``event`` and
    its fields; a newer format version is an error. Empty lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SessionLogError(f"{path}: cannot read the session log ({e.strerror})") from None
    events = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SessionLogError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or rec.get("event") not in EVENTS:
            raise SessionLogError(f"{where}: expected an event among {', '.join(EVENTS)}")
        missing = [k for k in _REQUIRED[rec["event"]] if k not in rec]
        if missing:
            raise SessionLogError(f"{where}: {rec['event']} event without {', '.join(missing)}")
        if rec["event"] == "session" and int(rec["version"]) > VERSION:
            raise SessionLogError(
                f"{where}: format version {rec['version']}; this pasam reads up to {VERSION}"
            )
        if rec["event"] == "prompt":
            if rec["kind"] == "point" and not all(k in rec for k in ("x", "y", "label")):
                raise SessionLogError(f"{where}: point prompt without x, y and label")
            if rec["kind"] == "box" and len(rec.get("box") or ()) != 4:
                raise SessionLogError(f"{where}: box prompt without 4 box numbers")
            if rec["kind"] not in ("point", "box"):
                raise SessionLogError(f"{where}: unknown prompt kind {rec['kind']!r}")
        events.append(rec)
    return events


@dataclass
class ObjectSession:
    """One annotated object of a session: its prompts until accept/discard."""

    log: str
    image: str
    object_id: int
    points: int = 0
    boxes: int = 0
    first_t: float = math.nan
    end_t: float = math.nan
    outcome: str = "open"  # accept, discard or open (the log ended first)
    predicted_ious: list[float | None] = field(default_factory=list)
    ious: list[float | None] = field(default_factory=list)
    final_predicted_iou: float | None = None
    final_iou: float | None = None
    source: str | None = None  # e.g. "segment all": found without its own prompts

    @property
    def interactions(self) -> int:
        return self.points + self.boxes

    @property
    def seconds(self) -> float:
        """From the first prompt to accept/discard."""
        return self.end_t - self.first_t


@dataclass
class SessionSummary:
    """Objects of one or more logs and their aggregates."""

    logs: int
    objects: list[ObjectSession]

    @property
    def accepted(self) -> list[ObjectSession]:
        return [o for o in self.objects if o.outcome == "accept"]

    def numbers(self) -> dict[str, Any]:
        """Aggregates over accepted objects: interactions (mean), seconds (median and
        total), final predicted and true IoU (means), and where the true IoU is known after
        every prompt NoC@85 / NoC@90 (an object never reaching it counts its interactions)
        and NoF@90. Objects found by automatic segmentation (``source``) are counted in
        ``found_automatically`` and left out of the aggregates."""
        acc = [o for o in self.accepted if o.source is None]
        out: dict[str, Any] = {
            "logs": self.logs,
            "images": len({(o.log, o.image) for o in self.objects}),
            "accepted": len(acc),
            "found_automatically": sum(o.source is not None for o in self.accepted),
            "discarded": sum(o.outcome == "discard" for o in self.objects),
            "open": sum(o.outcome == "open" for o in self.objects),
        }
        if not acc:
            return out
        out["interactions_per_object"] = float(np.mean([o.interactions for o in acc]))
        out["points_per_object"] = float(np.mean([o.points for o in acc]))
        out["boxes_per_object"] = float(np.mean([o.boxes for o in acc]))
        out["median_seconds_per_object"] = float(np.median([o.seconds for o in acc]))
        out["total_seconds"] = float(np.sum([o.seconds for o in acc]))
        pred = [o.final_predicted_iou for o in acc if o.final_predicted_iou is not None]
        out["mean_final_predicted_iou"] = float(np.mean(pred)) if pred else None
        true = [o.final_iou for o in acc if o.final_iou is not None]
        out["mean_final_iou"] = float(np.mean(true)) if true else None
        known = [o for o in acc if o.ious and all(v is not None for v in o.ious)]
        out["objects_with_iou"] = len(known)
        if known:
            for thr in (0.85, 0.90):
                out[f"noc{round(100 * thr)}"] = float(
                    np.mean([number_of_clicks(o.ious, thr, len(o.ious)) for o in known])  # type: ignore[arg-type]
                )
            out["nof90"] = int(sum(never_reached(o.ious, 0.90, len(o.ious)) for o in known))  # type: ignore[arg-type]
        return out

    def table(self) -> str:
        """The numbers as a Markdown table."""
        n = self.numbers()
        rows = [
            ("session logs", n["logs"]),
            ("images", n["images"]),
            (
                "objects accepted / discarded / left open",
                f"{n['accepted']} / {n['discarded']} / {n['open']}",
            ),
        ]

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        if n["accepted"]:
            rows += [
                (
                    "interactions per object (points + boxes)",
                    f(n["interactions_per_object"], ".2f"),
                ),
                (
                    "points / boxes per object",
                    f"{n['points_per_object']:.2f} / {n['boxes_per_object']:.2f}",
                ),
                ("seconds per object (median)", f(n["median_seconds_per_object"], ".1f")),
                ("annotation time (s, sum over objects)", f(n["total_seconds"], ".1f")),
                ("final predicted IoU (mean)", f(n["mean_final_predicted_iou"], ".3f")),
                ("final true IoU (mean, where known)", f(n["mean_final_iou"], ".3f")),
            ]
            if n.get("objects_with_iou"):
                rows += [
                    (
                        f"NoC@85 / NoC@90 ({n['objects_with_iou']} objects with true IoU)",
                        f"{n['noc85']:.2f} / {n['noc90']:.2f}",
                    ),
                    ("NoF@90", n["nof90"]),
                ]
        lines = ["| session | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)


def summarize_sessions(paths: Iterable[str | Path]) -> SessionSummary:
    """Objects and aggregates of the given logs (:class:`SessionSummary`)."""
    objects: list[ObjectSession] = []
    paths = list(paths)
    for path in paths:
        current: dict[tuple[str, int], ObjectSession] = {}
        for rec in read_session_log(path):
            ev = rec["event"]
            if ev == "session":
                continue
            key = (str(rec["image"]), int(rec["object"]))
            obj = current.get(key)
            if obj is None:
                obj = ObjectSession(str(path), key[0], key[1], first_t=float(rec["t"]))
                current[key] = obj
                objects.append(obj)
            if ev == "prompt":
                if rec["kind"] == "point":
                    obj.points += 1
                else:
                    obj.boxes += 1
                obj.predicted_ious.append(_num(rec.get("predicted_iou")))
                obj.ious.append(_num(rec.get("iou")))
                obj.end_t = float(rec["t"])
                continue
            obj.outcome = ev
            obj.end_t = float(rec["t"])
            obj.source = rec.get("source")
            last_pred = obj.predicted_ious[-1] if obj.predicted_ious else None
            last_iou = obj.ious[-1] if obj.ious else None
            pred, true = _num(rec.get("predicted_iou")), _num(rec.get("iou"))
            obj.final_predicted_iou = last_pred if pred is None else pred
            obj.final_iou = last_iou if true is None else true
            del current[key]
        for obj in current.values():  # prompts the log never closed
            obj.final_predicted_iou = obj.predicted_ious[-1] if obj.predicted_ious else None
            obj.final_iou = obj.ious[-1] if obj.ious else None
    return SessionSummary(logs=len(paths), objects=objects)
