"""`pasam eval --clicks`, the uncertainty measures and `--session-log` from the command line."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pasam_plugins.cli import app
from pasam_plugins.session import SessionLog
from pasam_plugins.testing import make_test_checkpoint


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A random-weight model at 256 px (fast decoder), used on the whole image."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny256.safetensors"
    return make_test_checkpoint(path, variant="vit_tiny256")


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.random((64, 80)) * 50).astype(np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        mask[10 + i : 30, 12 : 40 + i] = 255
        mask[40:55, 50:70] = 255
        img[mask > 0] = 200
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{i}.png")
    return tmp_path / "data"


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_eval_with_clicks_writes_tables_targets_and_files(folder, tmp_path, small_checkpoint):
    out = tmp_path / "out" / "em.csv"
    res = _run(
        "eval",
        f"components:{folder}",
        "-c",
        small_checkpoint,
        "--clicks",
        "2",
        "--strategies",
        "oracle,suggested",
        "--csv",
        out,
    )
    assert res.exit_code == 0, res.output
    text = res.output
    assert "| data | SAM | oracle |" in text and "| data | PA-SAM | suggested |" in text
    assert "| band |" not in text  # only the annotators asked for
    assert "| data | PA-SAM |" in text.split("AUROC band")[1]
    assert "targets (issue 13, for the shipped model):" in text
    assert "NoC@85 following suggestions" in text and "UNTRAINED" in text
    for name in ("em.csv", "em-images.csv", "em.json", "em-clicks.csv", "em-clicks.png"):
        assert (out.parent / name).is_file(), name
    summary = json.loads((out.parent / "em.json").read_text())
    clicks = summary["datasets"]["data"]["PA-SAM"]["clicks"]
    assert set(clicks) == {"oracle", "suggested"} and clicks["oracle"]["objects"] == 6
    assert len(clicks["oracle"]["miou"]) == 2

    res = _run("eval", folder, "-c", small_checkpoint, "--clicks", "2", "--strategies", "psychic")
    assert res.exit_code == 2 and "psychic" in res.output


def test_session_logs_are_summarized_alone_or_next_to_an_evaluation(tmp_path):
    log_path = tmp_path / "s.jsonl"
    with SessionLog(log_path, tool="test") as log:
        log.point("a.png", 1, 5, 5, 1, predicted_iou=0.8, iou=0.9)
        log.accept("a.png", 1)
    res = _run("eval", "--session-log", log_path)
    assert res.exit_code == 0, res.output
    assert "| objects accepted / discarded / left open | 1 / 0 / 0 |" in res.output
    assert "| NoC@85 / NoC@90 (1 objects with true IoU) | 1.00 / 1.00 |" in res.output

    log_path.write_text("garbage\n")
    res = _run("eval", "--session-log", log_path)
    assert res.exit_code == 2 and "s.jsonl:1: not JSON" in res.output

    res = _run("eval")
    assert res.exit_code == 2 and "give the data to evaluate" in res.output
    res = _run("eval", tmp_path)
    assert res.exit_code == 2 and "give the weights to evaluate" in res.output
