"""The annotator's session-log hook (issue 13 on main, issue 15's listeners): with
PASAM_SESSION_LOG set, a real annotation in a real viewer is written by the core's
pasam_plugins.session.SessionLog and read back by the core's reader and summary (what
``pasam eval --session-log`` reports)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_support import click, layers_ready, loaded_widget  # noqa: E402

from pasam_plugins.session import read_session_log, summarize_sessions  # noqa: E402


@pytest.fixture(scope="module")
def em_stack(isbi_dir: Path) -> np.ndarray:
    """Four EM sections (256 x 256 crops) as a small stack."""
    files = [isbi_dir / "image" / f"{i}.png" for i in range(4)]
    return np.stack([np.asarray(PILImage.open(f))[:256, :256] for f in files])


def test_session_log_of_a_real_annotation_is_read_by_the_core(
    make_napari_viewer, qtbot, tiny_checkpoint, em_stack, tmp_path, monkeypatch
):
    log = tmp_path / "logs" / "session.jsonl"
    monkeypatch.setenv("PASAM_SESSION_LOG", str(log))
    viewer = make_napari_viewer()
    stack = viewer.add_image(em_stack, name="em stack")
    widget = loaded_widget(viewer, qtbot, tiny_checkpoint)
    widget.start(stack)
    layers_ready(qtbot, widget)
    viewer.dims.set_current_step(0, 2)
    click(qtbot, widget, (128, 128))
    click(qtbot, widget, (40, 200), positive=False)
    label_id = widget.accept()
    assert label_id == 1
    area = int((widget.layers.labels.data == label_id).sum())
    click(qtbot, widget, (60, 60))
    widget.clear_prompts()  # discards the second object

    events = read_session_log(log)
    assert [e["event"] for e in events] == [
        "session",
        "prompt",
        "prompt",
        "accept",
        "prompt",
        "discard",
    ]
    assert events[0]["tool"] == "napari"
    first = events[1]
    assert first["image"] == "em stack[z=2]" and first["object"] == 1
    assert (first["x"], first["y"], first["label"]) == (128.0, 128.0, 1)
    assert events[2]["label"] == 0 and events[3]["area"] == area
    assert np.isfinite(events[3]["predicted_iou"])
    numbers = summarize_sessions([log]).numbers()
    assert numbers["accepted"] == 1 and numbers["discarded"] == 1
    assert numbers["points_per_object"] == 2.0
