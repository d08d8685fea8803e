"""napari "Segment all" (napari_pasam._automatic) and the exports (napari_pasam._export) in a
real viewer under Xvfb, with a stand-in decoder (tests/automatic_support.py)."""

import csv

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from automatic_support import ComponentModel, disc  # noqa: E402
from napari_support import loaded_widget, wait_idle  # noqa: E402
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
    widget.start(image)
    panel = widget.segment_all_panel
    panel.points_spin.setValue(16)
    # an object accepted by hand stays as it is
    widget.labels_layer.data[2][disc(160, 180, 140, 120, 16)] = 1
    widget.labels_layer.features = widget.labels_layer.features.iloc[:0]
    viewer.dims.set_point(0, 1)
    panel.segment_all("slice")
    wait_idle(qtbot, widget)
    labels = widget.labels_layer.data
    assert not labels[0].any() and not labels[2][labels[2] != 1].any()  # only the current slice
    assert len(np.unique(labels[1])) == 2 and len(panel.last_ids) == 1
    panel.segment_all("stack")
    wait_idle(qtbot, widget)
    for z, discs in enumerate(DISCS):
        for cx, cy, r in discs:
            truth = disc(160, 180, cx, cy, r)
            ids, counts = np.unique(labels[z][truth], return_counts=True)
            assert ids[np.argmax(counts)] > 0 and counts.max() > 0.9 * truth.sum()
    assert (labels[2] == 1).sum() == disc(160, 180, 140, 120, 16).sum()  # the accepted object
    feats = widget.labels_layer.features
    auto = feats[feats["index"].isin(panel.last_ids)]
    assert len(auto) == 2 + 2  # slices 0 and 2 (slice 1's disc and the accepted one are taken)
    assert {"boundary_uncertainty", "review_rank", "needs_review"} <= set(feats.columns)
    assert auto["boundary_uncertainty"].to_numpy() == pytest.approx(
        [110 / 255] * 2 + [210 / 255] * 2, abs=1e-3
    )
    # the objects to review first (the most uncertain of each plane) are ringed
    review = panel.review_layer
    flagged = auto[auto["needs_review"].astype(bool)]
    assert len(flagged) >= 2 and set(review.features["label"]) == set(flagged["index"])

    # exports: COCO (pycocotools), label TIFF, CSV
    coco_path = panel.export("coco", str(tmp_path / "discs_coco.json"))
    coco = COCO(coco_path)
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == int(
        (np.unique(labels) > 0).sum()
    )
    img2 = next(i for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == "discs[z=2]")
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img2["id"]])):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels[2] == ann["label"])
    tif = panel.export("tiff", str(tmp_path / "discs_labels.tif"))
    np.testing.assert_array_equal(tifffile.imread(tif), labels)
    csv_path = panel.export("csv", str(tmp_path / "discs.csv"))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(coco.getAnnIds())
    assert {"slice", "predicted_iou", "boundary_uncertainty", "review_rank"} <= set(rows[0])
    row = next(r for r in rows if int(r["label"]) == panel.last_ids[0])
    assert float(row["predicted_iou"]) == pytest.approx(0.95)
