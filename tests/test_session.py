"""Session logs: what the writer writes is what the reader reads, the summary's numbers by
hand, readable errors for broken logs."""

import json

import pytest

from pasam_plugins.session import (
    SessionLog,
    SessionLogError,
    read_session_log,
    summarize_sessions,
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _session(path):
    clock = Clock()
    with SessionLog(path, tool="test", model="m1", clock=clock) as log:
        # object 1: box, then two clicks; the true IoU is known (0.70, 0.88, 0.93)
        clock.now = 101.0
        log.box("a.png", 1, [10, 20, 30, 40], predicted_iou=0.8, iou=0.70)
        clock.now = 103.0
        log.point("a.png", 1, 15, 25, 1, predicted_iou=0.85, iou=0.88)
        clock.now = 104.5
        log.point("a.png", 1, 12, 22, 0, predicted_iou=0.9, iou=0.93)
        clock.now = 106.0
        log.accept("a.png", 1, predicted_iou=0.9, iou=0.93, area=300)
        # object 2: two clicks, never 90 %, accepted after 2 s
        clock.now = 110.0
        log.point("a.png", 2, 50, 50, 1, predicted_iou=0.6, iou=0.5)
        clock.now = 111.0
        log.point("a.png", 2, 55, 50, 1, predicted_iou=0.7, iou=0.86)
        clock.now = 112.0
        log.accept("a.png", 2)
        # object 1 of another image, thrown away; then a click never closed
        clock.now = 120.0
        log.point("b.png", 1, 5, 5, 1, predicted_iou=0.2)
        clock.now = 121.0
        log.discard("b.png", 1)
        clock.now = 130.0
        log.point("b.png", 1, 6, 6, 1, predicted_iou=0.4)


def test_written_events_are_read_back(tmp_path):
    path = tmp_path / "logs" / "s.jsonl"
    _session(path)
    events = read_session_log(path)
    assert [e["event"] for e in events] == ["session"] + ["prompt"] * 3 + ["accept"] + [
        "prompt"
    ] * 2 + ["accept", "prompt", "discard", "prompt"]
    assert events[0]["version"] == 1 and events[0]["tool"] == "test" and events[0]["model"] == "m1"
    assert events[1] == {
        "event": "prompt",
        "t": 1.0,
        "image": "a.png",
        "object": 1,
        "kind": "box",
        "box": [10.0, 20.0, 30.0, 40.0],
        "predicted_iou": 0.8,
        "iou": 0.7,
    }
    assert events[3]["kind"] == "point" and events[3]["label"] == 0 and events[3]["x"] == 12.0
    assert events[4]["area"] == 300 and events[4]["t"] == 6.0
    # every line is flushed as it happens: a second session appends to the same file
    _session(path)
    assert len(read_session_log(path)) == 2 * len(events)


def test_summary_counts_clicks_seconds_and_ious(tmp_path):
    path = tmp_path / "s.jsonl"
    _session(path)
    s = summarize_sessions([path])
    n = s.numbers()
    assert (n["logs"], n["images"], n["accepted"], n["discarded"], n["open"]) == (1, 2, 2, 1, 1)
    assert n["interactions_per_object"] == 2.5  # 3 and 2
    assert (n["points_per_object"], n["boxes_per_object"]) == (2.0, 0.5)
    assert n["median_seconds_per_object"] == pytest.approx(3.5)  # 5 s and 2 s
    assert n["total_seconds"] == pytest.approx(7.0)
    # object 2's accept carries no IoU: its last prompt's count
    assert n["mean_final_predicted_iou"] == pytest.approx((0.9 + 0.7) / 2)
    assert n["mean_final_iou"] == pytest.approx((0.93 + 0.86) / 2)
    # NoC@85: 2 and 2; NoC@90: 3 and never (its 2 interactions); NoF@90: 1
    assert n["objects_with_iou"] == 2
    assert (n["noc85"], n["noc90"], n["nof90"]) == (2.0, 2.5, 1)
    table = s.table()
    assert "| objects accepted / discarded / left open | 2 / 1 / 1 |" in table
    assert "| NoC@85 / NoC@90 (2 objects with true IoU) | 2.00 / 2.50 |" in table
    # the second b.png object starts after the discard: a new object, left open
    opened = [o for o in s.objects if o.outcome == "open"]
    assert len(opened) == 1 and opened[0].first_t == 30.0 and opened[0].final_predicted_iou == 0.4


def test_without_true_iou_there_is_no_noc(tmp_path):
    path = tmp_path / "s.jsonl"
    with SessionLog(path, clock=Clock()) as log:
        log.point("a", 1, 1, 1, 1, predicted_iou=0.9)
        log.accept("a", 1)
    n = summarize_sessions([path]).numbers()
    assert n["accepted"] == 1 and n["objects_with_iou"] == 0 and "noc85" not in n
    assert n["mean_final_iou"] is None and n["mean_final_predicted_iou"] == 0.9


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "s.jsonl:2: not JSON"),
        ('{"event": "click"}', "s.jsonl:2: expected an event"),
        ('{"event": "prompt", "t": 1, "image": "a"}', "prompt event without object, kind"),
        (
            '{"event": "prompt", "t": 1, "image": "a", "object": 1, "kind": "point"}',
            "point prompt without x, y and label",
        ),
        (
            '{"event": "prompt", "t": 1, "image": "a", "object": 1, "kind": "box", "box": [1]}',
            "box prompt without 4 box numbers",
        ),
        ('{"event": "session", "version": 2}', "format version 2; this pasam reads up to 1"),
    ],
)
def test_broken_logs_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"event": "session", "version": 1}) + "\n" + line + "\n")
    with pytest.raises(SessionLogError, match=message):
        read_session_log(path)
    with pytest.raises(SessionLogError, match="cannot read"):
        read_session_log(tmp_path / "missing.jsonl")


def test_objects_found_by_segment_all_are_counted_apart(tmp_path):
    """An object accepted from "Segment all" has no prompts: it is logged with its source
    and kept out of the clicks and seconds per object (0 clicks would flatter them)."""
    path = tmp_path / "s.jsonl"
    _session(path)
    with SessionLog(path, clock=Clock()) as log:
        log.accept("c.png", 7, predicted_iou=0.8, area=120, source="segment all")
    events = read_session_log(path)
    assert events[-1]["source"] == "segment all" and events[-1]["area"] == 120
    assert "source" not in events[4]  # a prompted accept carries none
    n = summarize_sessions([path]).numbers()
    assert (n["accepted"], n["found_automatically"]) == (2, 1)
    assert n["interactions_per_object"] == 2.5 and n["total_seconds"] == pytest.approx(7.0)
