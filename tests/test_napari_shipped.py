"""The dock's default model is the shipped one (registry entry pasam_micro, bundled in
model/weights): a user who opens the dock and presses "Load model" gets real weights, with
no network; prompts on held-out real objects (ISBI 2012 EM section 25, each white
connected component of its label one cell) give masks overlapping their ground truth.
Real viewer under Xvfb."""

import socket

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_support import click, dock, layers_ready, wait_idle  # noqa: E402

from pasam_plugins.metrics import mask_box, mask_iou  # noqa: E402
from pasam_plugins.registry import DEFAULT_MODEL  # noqa: E402

SECTION = 25  # held out: the shipped model was trained on sections 0-19


@pytest.fixture
def no_network(monkeypatch):
    """Any TCP/UDP connection fails (the X server's Unix socket still works)."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network disabled in this test: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def _load_default(viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "cache"))
    widget = dock(viewer)
    panel = widget.model_panel
    assert panel.source_combo.currentData() == f"registry:{DEFAULT_MODEL}"
    panel.load_button.click()  # what a user does first: nothing else chosen
    wait_idle(qtbot, widget)
    assert widget.slot is not None, widget.task_panel.status_label.full_text()
    return widget


def test_the_dock_defaults_to_the_shipped_model_and_loads_it_offline(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, no_network
):
    viewer = make_napari_viewer()
    widget = _load_default(viewer, qtbot, tmp_path, monkeypatch)
    info = widget.model_info
    assert not info.untrained and info.has_adapter and info.zoomed
    assert info.variant == "vit_s256"
    text = widget.model_panel.model_label.full_text()
    assert f"registry entry {DEFAULT_MODEL}" in text and "random weights" not in text
    assert "model/weights/pasam_micro.safetensors" in text.replace("\\", "/")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.s*"))
    # random weights stay available, as an explicit choice only
    combo = widget.model_panel.source_combo
    data = [combo.itemData(i) for i in range(combo.count())]
    assert data[0] == f"registry:{DEFAULT_MODEL}"
    assert "random:vit_tiny" in data and "file" in data
    widget.load_model("random:vit_tiny")
    wait_idle(qtbot, widget)
    assert widget.model_info.untrained


def _cells(shared_data):
    root = shared_data / "isbi2012-em"
    image = np.asarray(PILImage.open(root / "image" / f"{SECTION}.png"))
    label = np.asarray(PILImage.open(root / "label" / f"{SECTION}.png"))
    _, comps = cv2.connectedComponents((label > 127).astype(np.uint8), connectivity=4)
    return image, comps


def test_a_box_and_a_click_on_held_out_em_cells_match_their_ground_truth(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, shared_data
):
    image, comps = _cells(shared_data)
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name=f"em{SECTION}")
    widget = _load_default(viewer, qtbot, tmp_path, monkeypatch)
    widget.start(layer)
    layers_ready(qtbot, widget)

    # a box around the largest cell that does not touch the image border
    ids, counts = np.unique(comps, return_counts=True)
    h, w = comps.shape
    interior = []
    for i, c in zip(ids, counts, strict=True):
        ys, xs = np.nonzero(comps == i)
        if i and ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1:
            interior.append((int(c), int(i)))
    _, big = max(interior)
    gt = comps == big
    x0, y0, x1, y1 = mask_box(gt)
    widget.layers.boxes.add_rectangles(np.array([[y0, x0], [y1, x1]]))
    wait_idle(qtbot, widget)
    assert widget.current is not None
    box_iou = mask_iou(widget.current.mask, gt)
    assert box_iou >= 0.5, box_iou
    label_id = widget.accept()
    assert mask_iou(widget.layers.labels.data == label_id, gt) >= 0.5

    # a click inside another cell (the one under pixel y=136, x=150)
    gt = comps == comps[136, 150]
    assert comps[136, 150] and 2000 < gt.sum() < 20000
    click(qtbot, widget, (136, 150))
    assert widget.current is not None
    click_iou = mask_iou(widget.current.mask, gt)
    assert click_iou >= 0.5, click_iou
