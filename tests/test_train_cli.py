"""`pasam train` and `pasam eval` from the command line (tiny random-weight model)."""

import json

import numpy as np
import pytest
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
