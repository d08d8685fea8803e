"""Fine-tuning the adapter from the napari annotator, in a real viewer (pytest-qt
``make_napari_viewer`` under Xvfb) with a `make-test-checkpoint` vit_tiny model and a few
steps on real EM sections. Saved files go to a temporary ``PASAM_MODEL_DIR``."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils import progress as napari_progress  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from napari_support import WAIT_MS, click, dock, load, messages_since, wait_idle  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture()
def model_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "models"
    monkeypatch.setenv("PASAM_MODEL_DIR", str(d))
    return d


def test_finetune_uses_accepted_objects_and_swaps_in_the_saved_model(
    make_napari_viewer, qtbot, tiny_checkpoint, em_section, model_dir
):
    from pasam_plugins.checkpoint import load_model, read_metadata
    from pasam_plugins.predictor import model_signature

    viewer = make_napari_viewer()
    image = viewer.add_image(em_section, name="em section")
    widget = dock(viewer)
    load(widget, qtbot, tiny_checkpoint)
    widget.start(image)
    click(qtbot, widget, (200, 300))
    assert widget.accept() == 1
    # the same prompt again: the prediction of the model before fine-tuning
    click(qtbot, widget, (200, 300))
    before = widget.current
    unc_before = widget.uncertainty_layer.data.copy()
    old_predictor = widget.predictor

    n = len(notification_manager.records)
    assert widget.finetune_steps_spin.value() == 100, "a small default"
    widget.finetune_steps_spin.setValue(3)
    widget.finetune_button.click()
    assert widget.busy
    wait_idle(qtbot, widget)
    assert not messages_since(n, NotificationSeverity.ERROR)

    # progress: every step reported, with its loss
    progress = widget.last_finetune_progress
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(np.isfinite(p.loss) for p in progress)

    # the saved file: timestamped name in PASAM_MODEL_DIR, adapter only, naming its base
    files = sorted(model_dir.glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith("napari-em_section-")
    assert not list(model_dir.glob(".*.tmp")), "atomic save leaves no temporary file"
    meta = read_metadata(files[0])
    assert meta["contents"] == "adapter"
    assert Path(meta["base_checkpoint"]) == tiny_checkpoint.resolve()
    assert meta["provenance"]["steps"] == 3 and meta["provenance"]["objects"] == 1
    assert meta["napari"] == {"image": "em section", "planes": 1, "objects": 1}

    # the widget now uses the fine-tuned model, exactly the one in the file
    result = widget.last_finetune
    assert result.path == files[0] and result.steps == 3 and not result.stopped_early
    assert widget.predictor is not old_predictor
    assert widget.predictor.model_signature != old_predictor.model_signature
    assert model_signature(load_model(files[0])) == widget.predictor.model_signature
    panel = widget.model_label.text()
    assert "fine-tuned adapter, 3 steps, loss" in panel and str(files[0]) in panel
    assert f"{progress[0].loss:.3f}→{progress[-1].loss:.3f}" in panel
    infos = messages_since(n, NotificationSeverity.INFO)
    assert any(str(files[0]) in m for m in infos)

    # the current prompt was re-predicted with the new model: the image was embedded again
    # (the changed guiding conv changes the cache key), and the prediction changed
    after = widget.current
    assert after is not None and after is not before
    assert widget.predictor.encoder_runs == 1
    unc_after = widget.uncertainty_layer.data
    assert np.abs(unc_after - unc_before).max() > 1e-3, "the adapter's uncertainty map changed"
    assert after.iou != before.iou or not np.array_equal(after.mask, before.mask)

    # a second round starts from the fine-tuned model and still names the original base
    widget.finetune(steps=2)
    wait_idle(qtbot, widget)
    files2 = sorted(model_dir.glob("*.safetensors"))
    assert len(files2) == 2
    newest = widget.last_finetune.path
    assert Path(read_metadata(newest)["base_checkpoint"]) == tiny_checkpoint.resolve()
    assert Path(read_metadata(newest)["provenance"]["base"]) == files[0]
    assert model_signature(load_model(newest)) == widget.predictor.model_signature


def test_finetune_errors_stop_and_stacks(
    make_napari_viewer, qtbot, tiny_checkpoint, isbi_dir, model_dir
):
    viewer = make_napari_viewer()
    sections = [np.asarray(PILImage.open(isbi_dir / "image" / f"{i}.png")) for i in range(3)]
    stack = np.stack(sections)[:, :256, :256]
    layer = viewer.add_image(stack, name="em stack")
    widget = dock(viewer)

    # no model, then no accepted objects: an error notification, nothing starts
    n = len(notification_manager.records)
    widget.finetune_button.click()
    assert not widget.busy
    assert "load a model first" in messages_since(n, NotificationSeverity.ERROR)[-1]
    load(widget, qtbot, tiny_checkpoint)
    loaded = widget.predictor
    widget.finetune_button.click()
    assert not widget.busy
    assert "no accepted objects to train on" in messages_since(n, NotificationSeverity.ERROR)[-1]
    widget.start(layer)
    widget.finetune_button.click()
    assert not widget.busy
    errors = messages_since(n, NotificationSeverity.ERROR)
    assert len(errors) == 3 and "no accepted objects to train on" in errors[-1]
    assert widget.predictor is loaded
    assert not model_dir.exists() or not list(model_dir.iterdir())

    # an object too small to train on (painted by hand): the worker's error is a notification
    widget.labels_layer.data[1, 5, 5] = 9
    widget.finetune(steps=5)
    wait_idle(qtbot, widget)
    errors = messages_since(n, NotificationSeverity.ERROR)
    assert len(errors) == 4 and errors[-1].startswith("PA-SAM: fine-tuning failed: no usable")
    assert "too small" in errors[-1] and "Traceback" not in errors[-1]
    assert widget.predictor is loaded and widget.last_finetune is None
    assert not list(model_dir.glob("*.safetensors"))
    widget.labels_layer.data[1, 5, 5] = 0

    # objects accepted on planes 0 and 2 of the stack
    for z in (0, 2):
        viewer.dims.set_current_step(0, z)
        click(qtbot, widget, (128, 128))
        assert widget.current is not None and widget.current.mask.any()
        widget.accept()
    assert sorted(np.nonzero(widget.labels_layer.data.any(axis=(1, 2)))[0]) == [0, 2]

    # stopped at once (before the first step): the model is unchanged, nothing is saved
    widget.finetune(steps=50)
    widget.finetune_cancel_button.click()
    wait_idle(qtbot, widget)
    assert widget.predictor is loaded and widget.last_finetune is None
    assert widget.last_finetune_progress == []
    assert not list(model_dir.glob("*.safetensors"))
    assert "tiny.safetensors" in widget.model_label.text()

    # stopped after the first step: ends early, the adapter trained so far is used and saved
    widget.finetune(steps=200)
    qtbot.waitUntil(lambda: len(widget.last_finetune_progress) >= 1, timeout=WAIT_MS)
    bars = [p for p in napari_progress._all_instances if p.total == 200]
    assert bars and "fine-tuning" in bars[0].desc, "napari's progress bar counts the steps"
    widget.cancel()
    wait_idle(qtbot, widget)
    result = widget.last_finetune
    assert result.stopped_early and 1 <= result.steps <= 3
    assert len(widget.last_finetune_progress) == result.steps
    assert result.planes == 2 and result.objects == 2
    assert widget.predictor is result.predictor and widget.predictor is not loaded
    assert "stopped early of 200" in widget.model_label.text()
    from pasam_plugins.checkpoint import read_metadata

    meta = read_metadata(result.path)
    assert meta["provenance"]["steps"] == result.steps
    assert meta["provenance"]["stopped_early"] is True
    assert meta["napari"]["planes"] == 2


def test_finetune_adds_an_adapter_to_sam_and_saves_random_models_whole(
    make_napari_viewer, qtbot, tmp_path, em_section, model_dir
):
    from pasam_plugins.checkpoint import load_model, read_metadata
    from pasam_plugins.predictor import model_signature
    from pasam_plugins.testing import make_test_checkpoint

    viewer = make_napari_viewer()
    image = viewer.add_image(em_section[:192, :192], name="crop")
    widget = dock(viewer)

    # a SAM-only checkpoint: fine-tuning gives it a new adapter (guide mode "image"); the
    # adapter file names the SAM file as its base
    sam_only = make_test_checkpoint(tmp_path / "sam_only.safetensors", seed=1, adapter=False)
    load(widget, qtbot, sam_only)
    assert "SAM only" in widget.model_label.text()
    widget.start(image)
    click(qtbot, widget, (96, 96))
    assert widget.accept() == 1
    widget.finetune(steps=2)
    wait_idle(qtbot, widget)
    result = widget.last_finetune
    assert result is not None and result.steps == 2, widget.status_label.text()
    panel = widget.model_label.text()
    assert "SAM + PA-SAM adapter" in panel and "guide mode: image" in panel
    meta = read_metadata(result.path)
    assert meta["contents"] == "adapter" and meta["guide_mode"] == "image"
    assert Path(meta["base_checkpoint"]) == sam_only.resolve()
    assert model_signature(load_model(result.path)) == widget.predictor.model_signature

    # random weights without a file: the whole model is saved, so the file loads on its own
    widget.load_model("random:vit_tiny")
    wait_idle(qtbot, widget)
    assert widget.model_info.source.startswith("vit_tiny with random weights")
    widget.finetune(steps=2)
    wait_idle(qtbot, widget)
    path = widget.last_finetune.path
    assert path != result.path and path.parent == model_dir
    meta = read_metadata(path)
    assert meta["contents"] == "full" and meta["untrained"] is True
    assert meta["provenance"]["steps"] == 2
    assert model_signature(load_model(path)) == widget.predictor.model_signature


def test_adapt_choice_trains_a_prompt_learning_module_and_hq_sam_says_what_it_lacks(
    make_napari_viewer, qtbot, em_section, model_dir, tmp_path
):
    """Issue 18: the panel offers what to adapt; a PLM run on a SAM file saves a small file
    naming its base that loads with its PLM; an HQ-SAM model says it has no uncertainty map
    or mined points, predicts without them, and is not offered the PA-SAM adapter."""
    from pasam_plugins.checkpoint import load_model, read_metadata, save_checkpoint
    from pasam_plugins.predictor import model_signature
    from pasam_plugins.testing import make_test_checkpoint, make_test_hq_model

    viewer = make_napari_viewer()
    image = viewer.add_image(em_section[:192, :192], name="crop")
    widget = dock(viewer)
    sam_only = make_test_checkpoint(tmp_path / "sam_only.safetensors", seed=1, adapter=False)
    load(widget, qtbot, sam_only)
    values = [widget.adapt_combo.itemData(i) for i in range(widget.adapt_combo.count())]
    assert values == ["adapter", "plm", "plm,pmm", "adapter,plm", "hq"]
    widget.adapt_combo.setCurrentIndex(values.index("plm,pmm"))
    widget.start(image)
    click(qtbot, widget, (96, 96))
    assert widget.accept() == 1
    widget.finetune(steps=2)
    wait_idle(qtbot, widget)
    result = widget.last_finetune
    assert result is not None and result.steps == 2, widget.status_label.text()
    panel = widget.model_label.text()
    assert "prompt learning module" in panel and "fine-tuned plm + pmm, 2 steps" in panel
    assert not widget.predictor.model.has_adapter and widget.predictor.model.plm is not None
    meta = read_metadata(result.path)
    assert meta["contents"] == "adapter" and meta["plm"] is True
    assert meta["provenance"]["train"] == "plm,pmm"
    assert Path(meta["base_checkpoint"]) == sam_only.resolve()
    loaded = load_model(result.path)
    assert loaded.plm is not None and not any("pmm" in k for k in loaded.state_dict())
    assert model_signature(loaded) == widget.predictor.model_signature

    hq_path = save_checkpoint(make_test_hq_model(seed=2), tmp_path / "hq.safetensors")
    load(widget, qtbot, hq_path)
    panel = widget.model_label.text()
    assert "HQ-SAM" in panel and "no uncertainty map or mined points" in panel
    values = [widget.adapt_combo.itemData(i) for i in range(widget.adapt_combo.count())]
    assert values == ["plm", "plm,pmm", "hq"]
    widget.start(image)
    click(qtbot, widget, (96, 96))
    assert widget.current is not None and widget.current.mask.shape == (192, 192)
    assert widget.current.uncertainty is None
