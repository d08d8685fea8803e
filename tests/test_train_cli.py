"""`pasam train` and `pasam eval` from the command line (tiny random-weight model)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pasam_plugins.checkpoint import read_metadata
from pasam_plugins.cli import app


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((64, 80)) * 50).astype(np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        mask[10 + i : 30, 12 : 40 + i] = 255
        mask[40:55, 50:70] = 255
        img[mask > 0] = 200
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{i}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "data" / "images" / "orphan.png")
    return tmp_path / "data"


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_train_then_resume_then_eval(folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    common = [
        "train",
        f"components:{folder}",
        "-c",
        tiny_checkpoint,
        "--out-dir",
        out,
        "--batch-size",
        "1",
        "--no-jitter",
        "--loss-size",
        "256",
        "--save-every",
        "1",
        "--epochs",
        "2",
    ]
    res = _run(*common, "--max-steps", "1")
    assert res.exit_code == 0, res.output
    assert "orphan" in res.output  # the image without mask is reported, not fatal
    assert "UNTRAINED RANDOM WEIGHTS" in res.output  # training on a test model says so
    assert (out / "adapter.safetensors").is_file() and (out / "train_state.pt").is_file()
    res = _run(*common, "--resume", "--max-steps", "2")
    assert res.exit_code == 0, res.output
    assert "resuming at step 1" in res.output
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    meta = read_metadata(out / "adapter.safetensors")
    assert meta["provenance"]["step"] == 2 and meta["untrained"] is True
    assert meta["provenance"]["data"] == [f"components:{folder}"]
    assert meta["base_checkpoint"] == str(tiny_checkpoint.resolve())  # what it loads on

    csv_path = tmp_path / "eval.csv"
    res = _run(
        "eval",
        f"components:{folder}",
        "-c",
        out / "adapter.safetensors",
        "--sam-checkpoint",
        tiny_checkpoint,
        "--csv",
        csv_path,
    )
    assert res.exit_code == 0, res.output
    assert "| SAM |" in res.output and "| PA-SAM |" in res.output
    assert "UNTRAINED" in res.output
    assert len(csv_path.read_text().splitlines()) == 1 + 2 * 4  # 2 images x 2 objects x 2 models


def test_clear_errors(tmp_path, tiny_checkpoint, folder):
    res = _run("eval", tmp_path / "nope", "-c", tiny_checkpoint)
    assert res.exit_code == 1 and "error:" in res.output and "no such folder" in res.output
    assert "Traceback" not in res.output
    res = _run("eval", folder, "-c", tmp_path / "missing.pth")
    assert res.exit_code == 2 and "no such checkpoint" in res.output
    res = _run("train", folder, "-c", tiny_checkpoint, "--prompts", "box,lasso")
    assert res.exit_code == 2 and "lasso" in res.output
    res = _run("train", f"weird:{folder}", "-c", tiny_checkpoint)
    assert res.exit_code == 1 and "unknown data kind" in res.output


@pytest.mark.slow
def test_three_stage_training_from_scratch_with_zoomed_crops(folder, tmp_path):
    """Stage 1 (a small-input SAM from scratch), stage 2 (the adapter on the frozen stage-1
    model) and the control (SAM's mask head alone), as scripts/train_real_weights.sh runs
    them, on zoomed-in crops with corrective clicks."""
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.train.trainer import HEAD_PREFIXES

    crops = ["--crops", "--corrective-clicks", "1", "--batch-size", "2", "--save-every", "0"]
    s1 = tmp_path / "stage1"
    res = _run(
        "train", f"components:{folder}", "--train", "sam", "--variant", "vit_tiny256",
        "--guide-mode", "image", *crops, "--epoch-steps", "2", "--epochs", "1",
        "--optimizer", "adamw", "--schedule", "cosine", "--warmup-steps", "1", "--grad-clip", "1",
        "--out-dir", s1,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    sam_file = s1 / "sam.safetensors"
    meta = read_metadata(sam_file)
    assert meta["contents"] == "full" and meta["has_adapter"] is False
    assert meta["variant"] == "vit_tiny256" and "zoom" in meta  # used zoomed in
    assert "untrained" not in meta  # trained here, not a test model
    sam = load_model(sam_file)
    assert sam.img_size == 256 and sam.origin.zoom is not None

    for part in ("adapter", "head"):
        out = tmp_path / part
        res = _run(
            "train", f"components:{folder}", "-c", sam_file, "--train", part, *crops,
            "--epoch-steps", "2", "--epochs", "1", "--mining-start-epoch", "0", "--out-dir", out,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        path = out / ("adapter.safetensors" if part == "adapter" else "head.safetensors")
        meta = read_metadata(path)
        assert meta["contents"] == "adapter" and meta["base_checkpoint"] == str(sam_file.resolve())
        assert meta["has_adapter"] is (part == "adapter") and "zoom" in meta
        model = load_model(path)
        before, after = sam.state_dict(), model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        # only the trained decoder parts moved; the stage-1 SAM is frozen bit for bit
        assert changed and all(
            k.startswith(tuple(f"mask_decoder.{p}" for p in HEAD_PREFIXES)) for k in changed
        )
        assert model.origin.zoom == sam.origin.zoom
    res = _run("train", f"components:{folder}", "-c", sam_file, "--train", "sam", "--variant", "x")
    assert res.exit_code == 2 and "unknown variant" in res.output
