"""napari "Segment all" (napari_pasam._automatic, a mixin and panel of the split annotator)
and the exports (napari_pasam._export, buttons of the Save panel) in a real viewer under
Xvfb, with a stand-in decoder (tests/automatic_support.py)."""

import csv
import time

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from automatic_support import ComponentModel, disc  # noqa: E402
from napari_support import layers_ready, loaded_widget, wait_idle  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

DISCS = [
    [(40, 40, 18), (120, 60, 14)],
    [(60, 100, 20)],
    [(140, 120, 16), (30, 130, 12), (90, 40, 15)],
]


def _stack() -> np.ndarray:
    """3 slices of bright discs; slice z has brightness 110 + 50 z (the fake's uncertainty)."""
    out = np.full((3, 160, 180), 20, np.uint8)
    for z, discs in enumerate(DISCS):
        for cx, cy, r in discs:
            out[z][disc(160, 180, cx, cy, r)] = 110 + 50 * z
    return out


def test_segment_all_fills_the_labels_layer_and_exports(
    make_napari_viewer, qtbot, tiny_checkpoint, tmp_path
):
    viewer = make_napari_viewer()
    stack = _stack()
    image = viewer.add_image(stack, name="discs")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    ComponentModel(widget.predictor)
    events = []
    widget.session_listeners.append(events.append)
    widget.start(image)
    layers_ready(qtbot, widget)
    panel = widget.segment_all_panel
    panel.points_spin.setValue(16)
    # an object painted by hand (a brush stroke's data_setitem) stays as it is
    ys, xs = np.nonzero(disc(160, 180, 140, 120, 16))
    widget.layers.labels.data_setitem((np.full(len(ys), 2), ys, xs), 1)
    viewer.dims.set_point(0, 1)
    widget.segment_all("slice")
    wait_idle(qtbot, widget)
    labels = widget.layers.labels.data
    assert not labels[0].any() and not labels[2][labels[2] != 1].any()  # only the current slice
    assert len(np.unique(labels[1])) == 2 and len(widget.last_segment_all_ids) == 1
    before_stack = labels.copy()
    panel.scope_combo.setCurrentIndex(panel.scope_combo.findData("stack"))
    panel.run_button.click()
    assert widget.runner.task.kind == "segment_all" and not panel.run_button.isEnabled()
    wait_idle(qtbot, widget)
    for z, discs in enumerate(DISCS):
        for cx, cy, r in discs:
            truth = disc(160, 180, cx, cy, r)
            ids, counts = np.unique(labels[z][truth], return_counts=True)
            assert ids[np.argmax(counts)] > 0 and counts.max() > 0.9 * truth.sum()
    assert (labels[2] == 1).sum() == disc(160, 180, 140, 120, 16).sum()  # the accepted object
    feats = widget.layers.labels.features
    last_ids = widget.last_segment_all_ids
    auto = feats[feats["index"].isin(last_ids)]
    assert len(auto) == 2 + 2  # slices 0 and 2 (slice 1's disc and the accepted one are taken)
    assert {"boundary_uncertainty", "review_rank", "needs_review"} <= set(feats.columns)
    assert auto["boundary_uncertainty"].to_numpy() == pytest.approx(
        [110 / 255] * 2 + [210 / 255] * 2, abs=1e-3
    )
    # the objects to review first (the most uncertain of each plane) are ringed
    review = widget.review_layer
    flagged = auto[auto["needs_review"].astype(bool)]
    assert len(flagged) >= 2 and set(review.features["label"]) == set(flagged["index"])
    assert [la for la in viewer.layers if la.metadata.get("pasam_role") == "review"] == [review]
    assert len(feats) == len(np.unique(labels)) - 1  # features match the labels

    # every object found is in the session log, as accepted by "Segment all", on its plane
    found = [e for e in events if e.kind == "accept" and e.source == "segment all"]
    assert sorted(e.object_id for e in found) == sorted(
        [*widget.last_segment_all_ids, last_ids[0] - 1]
    )
    for e in found:
        z = int(e.image.split("=")[1].rstrip("]"))
        assert e.area == int((labels[z] == e.object_id).sum()) > 0

    # the whole run is one undo step, its review rings go with it; redo brings both back
    rings = set(review.features["label"])
    widget.undo()
    np.testing.assert_array_equal(widget.layers.labels.data, before_stack)
    assert set(widget.layers.labels.features["index"]) == {1, last_ids[0] - 1}
    assert len(review.data) == 0 and review in viewer.layers
    widget.redo()
    labels = widget.layers.labels.data
    assert set(widget.layers.labels.features["index"]) == set(np.unique(labels)) - {0}
    assert set(review.features["label"]) == rings and len(review.data) == len(rings)

    # exports: COCO (pycocotools), label TIFF, CSV
    coco_path = widget.export_labels("coco", str(tmp_path / "discs_coco.json"))
    coco = COCO(coco_path)
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == int(
        (np.unique(labels) > 0).sum()
    )
    img2 = next(i for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == "discs[z=2]")
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img2["id"]])):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels[2] == ann["label"])
    tif = widget.export_labels("tiff", str(tmp_path / "discs_labels.tif"))
    np.testing.assert_array_equal(tifffile.imread(tif), labels)
    csv_path = widget.export_labels("csv", str(tmp_path / "discs.csv"))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(coco.getAnnIds())
    assert {"slice", "predicted_iou", "boundary_uncertainty", "review_rank"} <= set(rows[0])
    row = next(r for r in rows if int(r["label"]) == last_ids[0])
    assert float(row["predicted_iou"]) == pytest.approx(0.95)


def test_segment_all_is_cancelled_from_the_dock_and_keeps_what_it_found(
    make_napari_viewer, qtbot, tiny_checkpoint
):
    viewer = make_napari_viewer()
    image = viewer.add_image(_stack(), name="discs")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    ComponentModel(widget.predictor)
    model = widget.predictor.model
    fast = model.decode

    def slow(*args, **kwargs):  # a decoder batch that takes a while, as on a real image
        time.sleep(0.3)
        return fast(*args, **kwargs)

    model.decode = slow
    widget.start(image)
    layers_ready(qtbot, widget)
    widget.segment_all_panel.points_spin.setValue(16)
    tp = widget.task_panel
    widget.segment_all("stack")
    task = widget.runner.task
    assert task.kind == "segment_all" and task.total > 3
    assert tp.cancel_button.isVisibleTo(widget) and tp.progress_bar.maximum() == task.total
    qtbot.waitUntil(lambda: task.done >= 2, timeout=60_000)
    tp.cancel_button.click()
    wait_idle(qtbot, widget)
    assert "(cancelled)" in tp.status_label.full_text()
    assert task.done < task.total, "stopped before the end"
    labels = widget.layers.labels.data
    found = widget.last_segment_all_ids
    assert set(np.unique(labels)) - {0} == set(found)  # what was found is written
    assert len(found) < sum(len(d) for d in DISCS)
    feats = widget.layers.labels.features
    assert sorted(feats["index"]) == sorted(found)
