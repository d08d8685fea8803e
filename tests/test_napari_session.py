"""The annotator's state without a viewer (no Qt, no model): the features table always
matching the labels (overlaps, undo, hand painting), the overlap rule, refinement prompts,
the object line in the panel, the session-log hook, axis inference and the worker plumbing."""

import numpy as np
import pytest

from napari_pasam._workers import TaskRunner
from napari_pasam.axes import SOURCE_ASSUMED, SOURCE_LABELS, SOURCE_METADATA, infer_axes
from napari_pasam.session import (
    AUTOMATIC_COLUMNS,
    FEATURE_COLUMNS,
    OVERLAP_KEEP,
    OVERLAP_REPLACE,
    CurrentObject,
    ObjectTable,
    Prompts,
    SessionEvent,
    log_listener,
    paint_mask,
)


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------- objects
def test_objects_found_by_segment_all_add_their_columns_to_the_features():
    """Objects found by "Segment all": predicted IoU and a mean uncertainty without a map, plus the
    automatic columns; clicked objects get NaN / False there; pixels painted over an
    object change its area but not its attributes."""
    labels = np.zeros((2, 20, 20), np.uint32)
    table = ObjectTable(1)
    assert list(table.features(labels).columns) == list(FEATURE_COLUMNS)
    labels[0][rect((20, 20), 0, 10, 0, 10)] = 1
    table.record(1, (0,), labels[0] == 1, 0.9, np.full((20, 20), 0.2, np.float32), clicks=2)
    labels[1][rect((20, 20), 5, 15, 5, 15)] = 2
    attrs = {"stability_score": 0.97, "boundary_uncertainty": 0.3, "review_rank": 1}
    table.record_found(2, (1,), 0.8, 0.4, {**attrs, "needs_review": True, "point_x": 3})
    table.invalidate()  # as the widget does after writing labels
    feats = table.features(labels).set_index("index")
    assert list(feats.columns) == list(FEATURE_COLUMNS[1:]) + list(AUTOMATIC_COLUMNS)
    assert feats.loc[2, "predicted_iou"] == pytest.approx(0.8)
    assert feats.loc[2, "mean_uncertainty"] == pytest.approx(0.4)
    assert feats.loc[2, "review_rank"] == 1 and bool(feats.loc[2, "needs_review"])
    assert (feats.loc[2, "slice_start"], feats.loc[2, "clicks"]) == (1, 0)
    assert np.isnan(feats.loc[1, "boundary_uncertainty"]) and not feats.loc[1, "needs_review"]
    assert feats.loc[1, "mean_uncertainty"] == pytest.approx(0.2)
    labels[1][5:10] = 0  # painted over by hand
    table.invalidate([(1,)])
    feats = table.features(labels).set_index("index")
    assert feats.loc[2, "area"] == 50 and feats.loc[2, "mean_uncertainty"] == pytest.approx(0.4)


def test_features_follow_the_labels_through_overlap_and_undo():
    labels = np.zeros((40, 50), np.uint32)
    table = ObjectTable(0)
    unc1 = np.full((40, 50), 0.2, np.float32)
    unc1[:, 20:] = 0.6  # object 1's right half is less certain
    m1 = rect((40, 50), 0, 20, 0, 40)  # 800 px: 400 at 0.2, 400 at 0.6
    assert table.next_id(labels) == 1
    labels[m1] = 1
    table.record(1, (), m1, 0.9, unc1, clicks=3)
    assert table.features(labels).empty, "counts are cached until the plane is invalidated"
    table.invalidate([()])
    f = table.features(labels)
    assert list(f.columns) == list(FEATURE_COLUMNS)
    row = f.iloc[0]
    assert (row["index"], row["area"], row["clicks"]) == (1, 800, 3)
    assert row["predicted_iou"] == pytest.approx(0.9)
    assert row["mean_uncertainty"] == pytest.approx(0.4)

    # object 2 covers object 1's right half: keep paints only background
    m2 = rect((40, 50), 0, 30, 20, 50)
    keep = paint_mask(labels, m2, OVERLAP_KEEP)
    assert keep.sum() == m2.sum() - 400 and not (keep & m1).any()
    # ... replace takes object 1's pixels: its area and uncertainty follow the labels
    replace = paint_mask(labels, m2, OVERLAP_REPLACE)
    before = labels.copy()
    labels[replace] = 2
    table.record(2, (), m2, 0.7, np.full((40, 50), 0.1, np.float32), clicks=1)
    table.invalidate([()])
    f = table.features(labels).set_index("index")
    assert f.loc[1, "area"] == 400 and f.loc[2, "area"] == m2.sum()
    assert f.loc[1, "mean_uncertainty"] == pytest.approx(0.2), "only the pixels it kept"
    assert f.loc[2, "mean_uncertainty"] == pytest.approx(0.1)

    # undo (labels restored): object 2 gone, object 1 whole again; a new object gets a
    # fresh id (undone objects keep theirs for a redo)
    labels[:] = before
    table.invalidate()
    f = table.features(labels)
    assert f["index"].tolist() == [1] and f.iloc[0]["area"] == 800
    assert f.iloc[0]["mean_uncertainty"] == pytest.approx(0.4)
    assert table.next_id(labels) == 3

    # painted by hand (no record): a row with its area, NaN predictions, 0 clicks
    labels[35:, 45:] = 7
    table.invalidate([()])
    row = table.features(labels).set_index("index").loc[7]
    assert row["area"] == 25 and row["clicks"] == 0
    assert np.isnan(row["predicted_iou"]) and np.isnan(row["mean_uncertainty"])
    with pytest.raises(ValueError, match="unknown overlap rule"):
        paint_mask(labels, m2, "merge")


def test_features_of_a_stack_keep_slice_ranges_and_cached_counts():
    labels = np.zeros((6, 20, 20), np.uint16)
    table = ObjectTable(1)
    m = rect((20, 20), 5, 10, 5, 10)
    for z, iou in ((2, 0.8), (3, 0.6), (4, 0.7)):
        labels[z][m] = 5
        table.record(5, (z,), m, iou, None)
    f = table.features(labels).iloc[0]
    assert (f["slice_start"], f["slice_stop"], f["area"]) == (2, 4, 75)
    assert f["predicted_iou"] == pytest.approx(0.7)
    assert np.isnan(f["mean_uncertainty"]), "no uncertainty without adapter"
    # counts are cached per plane: a change is seen after invalidating that plane only
    labels[4] = 0
    assert table.features(labels).iloc[0]["slice_stop"] == 4, "plane 4 still cached"
    table.invalidate([(4,)])
    f = table.features(labels).iloc[0]
    assert (f["slice_stop"], f["area"]) == (3, 50)
    assert f["predicted_iou"] == pytest.approx(0.7), "mean IoU over the planes it still has"


# ---------------------------------------------------------------------------- prompts
def test_refinement_prompts_extend_the_previous_ones():
    p1 = Prompts(np.array([[10.0, 20.0]]), np.array([1]))
    p2 = Prompts(np.array([[10.0, 20.0], [30.0, 5.0]]), np.array([1, 0]))
    moved = Prompts(np.array([[11.0, 20.0], [30.0, 5.0]]), np.array([1, 0]))
    box = Prompts(np.zeros((0, 2)), np.zeros(0, int), np.array([0.0, 0, 40, 40]))
    box_click = Prompts(np.array([[10.0, 20.0]]), np.array([1]), np.array([0.0, 0, 40, 40]))
    assert p2.extends(p1) and box_click.extends(box)
    assert not p1.extends(p2), "a removed click starts over"
    assert not moved.extends(p1), "a moved click starts over"
    assert not p1.extends(p1) and not box_click.extends(p1), "new box starts over"
    empty = Prompts(np.zeros((0, 2)), np.zeros(0, int))
    assert empty.empty and not p1.extends(empty) and p2.count == 2 and box_click.count == 2


def test_the_panel_line_shows_clicks_and_predicted_iou():
    class Result:
        mask = rect((8, 8), 0, 4, 0, 4)
        score = 0.8766
        mean_uncertainty = 0.25

    cur = CurrentObject(4, (), None, ("k",), Prompts(np.zeros((0, 2)), np.zeros(0)), Result(), 3)
    assert cur.describe() == (
        "object 4 · 3 clicks · predicted IoU 0.877 · mean uncertainty 0.250 · 16 px"
    )
    Result.mean_uncertainty = None
    cur.clicks = 1
    assert cur.describe() == "object 4 · 1 click · predicted IoU 0.877 · 16 px"


def test_session_events_reach_a_log_writer():
    calls = []

    class FakeLog:  # the methods of pasam_plugins.session.SessionLog
        def point(self, *a, **k):
            calls.append(("point", a, k))

        def box(self, *a, **k):
            calls.append(("box", a, k))

        def accept(self, *a, **k):
            calls.append(("accept", a, k))

        def discard(self, *a, **k):
            calls.append(("discard", a, k))

    listen = log_listener(FakeLog())
    listen(SessionEvent("prompt", "cells[3]", 2, 1.0, point=(5.0, 6.0, 1), predicted_iou=0.5))
    listen(SessionEvent("prompt", "cells[3]", 2, 1.5, box=(0, 0, 9, 9), predicted_iou=0.6))
    listen(SessionEvent("accept", "cells[3]", 2, 2.0, predicted_iou=0.6, area=40))
    listen(SessionEvent("discard", "cells[3]", 3, 3.0))
    assert calls == [
        ("point", ("cells[3]", 2, 5.0, 6.0, 1), {"predicted_iou": 0.5}),
        ("box", ("cells[3]", 2, (0, 0, 9, 9)), {"predicted_iou": 0.6}),
        ("accept", ("cells[3]", 2), {"predicted_iou": 0.6, "area": 40}),
        ("discard", ("cells[3]", 3), {}),
    ]


# ---------------------------------------------------------------------------- axes
def test_axes_come_from_the_layer_and_say_where_from():
    cyx = infer_axes((3, 400, 300), rgb=False, metadata={"axes": "CYX"})
    assert cyx.channel_axis == 0 and cyx.names == ("C", "Y", "X")
    assert cyx.source == SOURCE_METADATA and "channel axis 0" in cyx.describe()
    labelled = infer_axes((2, 5, 64, 64), rgb=False, axis_labels=("c", "z", "y", "x"))
    assert labelled.channel_axis == 0 and labelled.source == SOURCE_LABELS
    assert labelled.names == ("C", "Z", "Y", "X")
    # napari's default labels name nothing: a short first axis is pointed out
    plain = infer_axes((3, 400, 300), rgb=False, axis_labels=("-3", "-2", "-1"))
    assert plain.channel_axis is None and plain.source == SOURCE_ASSUMED
    assert plain.names == ("Z", "Y", "X") and "axis 0 has only 3 entries" in plain.hint
    # channels last: a hint, never "512 channels"
    last = infer_axes((512, 512, 5), rgb=False)
    assert last.channel_axis is None and "channels last" in last.hint
    # a long stack: no hint; RGB as napari says
    assert infer_axes((30, 512, 512), rgb=False).hint is None
    assert infer_axes((64, 64, 3), rgb=True).names == ("Y", "X", "RGB")
    # a channel named at a later axis is reported (the annotator then says how to fix it)
    zc = infer_axes((5, 2, 64, 64), rgb=False, metadata={"axes": "ZCYX"})
    assert zc.channel_axis == 1


# ---------------------------------------------------------------------------- workers
class FakeSignal:
    def __init__(self):
        self.slots = []

    def connect(self, fn):
        self.slots.append(fn)

    def emit(self, *args):
        for fn in self.slots:
            fn(*args)


class FakeWorker:
    def __init__(self, generator=False):
        self.returned, self.finished = FakeSignal(), FakeSignal()
        if generator:
            self.yielded = FakeSignal()
        self.started = False

    def start(self):
        self.started = True


def test_task_runner_runs_one_task_and_cancels_by_kind():
    runner = TaskRunner()
    seen, idle = [], []
    runner.listeners.append(lambda task: seen.append(None if task is None else task.kind))
    runner.idle_callbacks.append(lambda: idle.append(True))
    got = []

    # a load cancelled by discarding: free at once, its late result is dropped
    w = FakeWorker()
    runner.start(w, kind="load", title="Loading", on_return=got.append)
    assert w.started and runner.busy and runner.long_running
    assert runner.cancel() and not runner.busy and idle == [True]
    w.returned.emit("late model")
    w.finished.emit()
    assert got == [] and not runner.busy

    # a click's prediction is not a long task (buttons stay live)
    w = FakeWorker()
    runner.start(w, kind="predict", title="Predicting", on_return=got.append)
    assert runner.busy and not runner.long_running
    w.returned.emit("mask")
    w.finished.emit()
    assert got == ["mask"] and not runner.busy

    # a propagation stops cooperatively: still busy until it ends, steps still arrive
    stops, steps = [], []
    w = FakeWorker(generator=True)
    task = runner.start(
        w,
        kind="propagate",
        title="Propagating",
        total=4,
        stop=lambda: stops.append(1),
        on_yield=steps.append,
    )
    w.yielded.emit("slice 1")
    assert task.done == 1
    assert runner.cancel() and stops == [1] and runner.busy and task.cancelled
    w.yielded.emit("slice 2")
    w.finished.emit()
    assert steps == ["slice 1", "slice 2"] and not runner.busy
    assert not runner.cancel(), "nothing to cancel"
    assert "propagate" in seen and seen[-1] is None
