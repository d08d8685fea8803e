"""The ``pasam`` command line: help, test checkpoints, info, predict, download, errors."""

import http.server
import json
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from pasam_plugins import __version__
from pasam_plugins.cli import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    result = runner.invoke(app, list(args), env=env)
    result.text = " ".join(result.output.replace("│", " ").split())  # unwrap rich boxes
    return result


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No user checkpoint, cache or registry leaks into the tests."""
    for var in ("PASAM_CHECKPOINT", "PASAM_SAM_CHECKPOINT", "PASAM_REGISTRY", "PASAM_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture()
def em_image(isbi_dir) -> Path:
    return isbi_dir / "image" / "5.png"


# ---------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command", [[], ["info"], ["download"], ["make-test-checkpoint"], ["predict"], ["serve"]]
)
def test_help_of_every_command(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: pasam" in result.text
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_of_train_and_eval(command):
    import importlib.util

    result = run(command, "--help")
    if importlib.util.find_spec("pasam_plugins.train.cli") is not None:
        assert result.exit_code == 0, result.output
        assert f"Usage: pasam {command}" in result.text
    else:  # not part of this installation: a clear message instead of a traceback
        assert result.exit_code == 1
        assert f"'pasam {command}' is not available in this installation" in result.text
    assert "Traceback" not in result.output


def test_lazy_command_names_a_missing_dependency(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "pasam_plugins.train.cli":  # the module is there, a dependency is not
            raise ModuleNotFoundError("No module named 'skimage'", name="skimage")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    result = run("train")
    assert result.exit_code == 1
    assert "needs a package that is not installed" in result.text
    assert "pip install 'pasam-plugins[train]'" in result.text


def test_lazy_command_forwards_arguments_to_its_module(monkeypatch):
    calls = []

    def train_command(epochs: int = 1, data: str = "x") -> None:
        """Fake trainer."""
        calls.append((epochs, data))

    fake = types.ModuleType("pasam_plugins.train.cli")
    fake.train_command = train_command
    monkeypatch.setitem(sys.modules, "pasam_plugins.train.cli", fake)
    helped = run("train", "--help")
    assert helped.exit_code == 0 and "--epochs" in helped.text and "Fake trainer" in helped.text
    done = run("train", "--epochs", "3", "--data", "em")
    assert done.exit_code == 0, done.output
    assert calls == [(3, "em")]


def test_version_and_fast_import():
    assert run("--version").output.strip() == f"pasam-plugins {__version__}"
    code = "import sys, pasam_plugins.cli; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # --help must not pay for importing torch


# ---------------------------------------------------------------------------- checkpoints
def test_make_test_checkpoint_and_info(tmp_path):
    ckpt = tmp_path / "tiny.safetensors"
    made = run("make-test-checkpoint", str(ckpt), "--seed", "3")
    assert made.exit_code == 0, made.output
    assert ckpt.is_file() and "random untrained weights" in made.text
    again = run("make-test-checkpoint", str(ckpt))
    assert again.exit_code == 1 and "--force" in again.text
    assert run("make-test-checkpoint", str(ckpt), "--force").exit_code == 0

    info = run("info", "--checkpoint", str(ckpt))
    assert info.exit_code == 0, info.output
    for expected in (
        f"pasam-plugins {__version__}",
        "torch",
        "segment-anything",
        "cpu available",
        "variant vit_tiny",
        "adapter yes (PA-SAM)",
        "guide mode reference",
        "UNTRAINED random weights",
    ):
        assert expected in info.text, expected
    assert "vit_b sam_vit_b_01ec64.pth not downloaded" in info.text
    assert "PASAM_CHECKPOINT: not set" in info.text
    from pasam_plugins.precision import resolve_precision

    assert f"encoder precision auto: cpu -> {resolve_precision('auto', 'cpu')}" in info.text


def test_info_rejects_a_file_that_is_not_a_checkpoint(tmp_path, em_image):
    bogus = tmp_path / "weights.pth"
    bogus.write_bytes(b"this is not a checkpoint")
    result = run("info", "--checkpoint", str(bogus))
    assert result.exit_code == 1
    assert result.text.startswith("error:") or "error:" in result.text
    assert str(bogus) in result.text and "Traceback" not in result.output


# ---------------------------------------------------------------------------- predict
def test_predict_writes_mask_uncertainty_and_overlay(tmp_path, em_image, tiny_checkpoint):
    out = tmp_path / "out"
    result = run(
        "predict",
        str(em_image),
        "--checkpoint",
        str(tiny_checkpoint),
        "--box",
        "180,200,330,340",
        "--point",
        "250,270",
        "--point",
        "60,60,0",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "UNTRAINED RANDOM WEIGHTS" in result.text  # the tiny checkpoint is untrained

    mask = np.asarray(Image.open(out / "5_mask.png"))
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    u = tifffile.imread(out / "5_uncertainty.tif")
    assert u.shape == (512, 512) and u.dtype == np.float32
    assert 0.0 <= u.min() and u.max() <= 1.0
    assert np.asarray(Image.open(out / "5_uncertainty.png")).shape == (512, 512, 3)
    overlay = np.asarray(Image.open(out / "5_overlay.png"))
    assert overlay.shape == (512, 512, 3)

    summary = json.loads((out / "5_prediction.json").read_text())
    assert summary["image_size"] == [512, 512] and summary["untrained"] is True
    assert summary["prompts"]["box"] == [180, 200, 330, 340]
    assert summary["prompts"]["points"] == [
        {"x": 250, "y": 270, "label": 1},
        {"x": 60, "y": 60, "label": 0},
    ]
    assert len(summary["mined_points"]) == 8
    assert [p["label"] for p in summary["mined_points"]] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert summary["mask_pixels"] == int((mask == 255).sum())

    # the CLI passes the prompts to the core exactly: same result as the Python API
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor
    from pasam_plugins.segment import Segmenter

    # (the encoder path and precision the CLI chose: bf16 on CPUs with bf16 units)
    assert summary["precision"] in ("float32", "bf16")
    predictor = PASamPredictor(
        load_model(tiny_checkpoint), device="cpu", precision=summary["precision"], fast_encoder=True
    )
    seg = Segmenter(predictor)
    seg.set_image(np.asarray(Image.open(em_image)))
    obj = seg.segment([[250, 270], [60, 60]], [1, 0], [180, 200, 330, 340])
    np.testing.assert_array_equal(mask == 255, obj.mask)
    np.testing.assert_allclose(u, obj.uncertainty, atol=1e-6)
    np.testing.assert_allclose(
        [[p["x"], p["y"]] for p in summary["mined_points"]], obj.mined_points
    )
    assert summary["score"] == pytest.approx(obj.score)
    assert summary["prompts"]["multimask"] is False  # a box: one mask


def test_predict_float32_precision_reproduces_the_reference_encoder(
    tmp_path, em_image, tiny_checkpoint
):
    """``--precision float32`` forces float32 on any CPU: the fast encoder path then gives
    the float32 reference's result (SAM's own modules) up to float32 rounding."""
    out = tmp_path / "out"
    result = run(
        "predict",
        str(em_image),
        "-c",
        str(tiny_checkpoint),
        "--box",
        "180,200,330,340",
        "--precision",
        "float32",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "encoder float32" in result.text
    assert json.loads((out / "5_prediction.json").read_text())["precision"] == "float32"
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.predictor import PASamPredictor
    from pasam_plugins.segment import Segmenter

    reference = PASamPredictor(load_model(tiny_checkpoint), device="cpu")
    assert reference.precision == "float32" and not reference.fast_encoder
    seg = Segmenter(reference)
    seg.set_image(np.asarray(Image.open(em_image)))
    obj = seg.segment(box=[180, 200, 330, 340])
    mask = np.asarray(Image.open(out / "5_mask.png")) == 255
    assert (mask == obj.mask).mean() > 0.999
    u = tifffile.imread(out / "5_uncertainty.tif")
    np.testing.assert_allclose(u, obj.uncertainty, atol=1e-4)


def test_predict_without_checkpoint_uses_the_shipped_model_on_a_held_out_cell(tmp_path, isbi_dir):
    """No --checkpoint: the shipped pasam_micro segments a cell of a held-out EM section
    (test split, never trained on) from one click at its deepest interior point."""
    from scipy import ndimage

    from pasam_plugins.metrics import mask_iou

    image = isbi_dir / "image" / "25.png"
    cells, _ = ndimage.label(np.asarray(Image.open(isbi_dir / "label" / "25.png")) > 127)
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    gt = cells == ids[np.argsort(counts)[len(counts) // 2]]  # a median-sized cell
    depth = ndimage.distance_transform_edt(gt)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    out = tmp_path / "out"
    result = run("predict", str(image), "--point", f"{x},{y}", "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "using the shipped model pasam_micro" in result.text
    assert "UNTRAINED" not in result.text
    summary = json.loads((out / "25_prediction.json").read_text())
    assert summary["untrained"] is False
    mask = np.asarray(Image.open(out / "25_mask.png")) > 0
    assert mask_iou(mask, gt) >= 0.5, mask_iou(mask, gt)


def test_predict_multichannel_uint16_tiff(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, size=(96, 160, 2), dtype=np.uint16)
    stack[30:60, 50:100, 1] = 60000  # a bright object in channel 1 only
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack)
    out = tmp_path / "out"
    result = run(
        "predict", str(path), "-c", str(tiny_checkpoint), "--channel", "1",
        "--box", "45,25,105,65", "--out-dir", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out / "cells_mask.png")).shape == (96, 160)
    assert tifffile.imread(out / "cells_uncertainty.tif").shape == (96, 160)
    overlay = np.asarray(Image.open(out / "cells_overlay.png"))
    assert overlay.shape == (96, 160, 3)
    summary = json.loads((out / "cells_prediction.json").read_text())
    assert summary["prompts"]["channel"] == 1 and summary["prompts"]["multimask"] is False


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--box", "1,2,3"], 2, "is not a box x0,y0,x1,y1"),
        (["--box", "a,b,c,d"], 2, "is not a box x0,y0,x1,y1"),
        (["--box", "300,10,200,50"], 2, "need x0 < x1 and y0 < y1"),
        (["--box", "600,600,700,700"], 2, "lies outside the 512x512 image"),
        (["--point", "10"], 2, "is not a point x,y"),
        (["--point", "10,10,5"], 2, "label must be 1"),
        (["--point", "10,900"], 2, "lies outside the 512x512 image"),
        ([], 2, "give a prompt"),
        (["--point", "10,10", "--device", "banana"], 2, "--device"),
        (["--point", "10,10", "--mask-format", "jpg"], 2, "is not png or tif"),
        (["--point", "10,10", "--channel", "2"], 2, "channel 2 does not exist"),
        (["--point", "10,10", "--precision", "half"], 2, "unknown precision 'half'"),
        (["--point", "10,10", "--precision", "bf16", "--device", "meta"], 2, "--precision"),
    ],
)
def test_predict_usage_errors_are_readable(em_image, args, code, message):
    result = run("predict", str(em_image), *args)
    assert result.exit_code == code, result.output
    assert message in result.text
    assert "Traceback" not in result.output


def test_predict_missing_image_and_bad_checkpoint(tmp_path, em_image):
    missing = run("predict", str(tmp_path / "nope.png"), "--point", "1,1")
    assert missing.exit_code == 2 and "nope.png: no such image file" in missing.text

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    bad_img = run("predict", str(not_an_image), "--point", "1,1")
    assert bad_img.exit_code == 1 and "cannot decode image" in bad_img.text

    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"\x00" * 64)
    bad = run("predict", str(em_image), "--point", "10,10", "--checkpoint", str(bogus))
    assert bad.exit_code == 1, bad.output
    assert "error:" in bad.text and "model.pth" in bad.text and "checkpoint" in bad.text
    no_ckpt = run("predict", str(em_image), "--point", "10,10", "-c", str(tmp_path / "x.pth"))
    assert no_ckpt.exit_code == 2 and "no such checkpoint file" in no_ckpt.text
    for r in (missing, bad_img, bad, no_ckpt):
        assert "Traceback" not in r.output


def test_predict_checkpoint_from_environment(tmp_path, em_image, monkeypatch):
    bogus = tmp_path / "env.pth"
    bogus.write_bytes(b"not weights")
    monkeypatch.setenv("PASAM_CHECKPOINT", str(bogus))
    result = run("predict", str(em_image), "--point", "10,10")
    assert result.exit_code == 1 and "env.pth" in result.text  # the env file was used


# ---------------------------------------------------------------------------- download
PAYLOAD = b"pretend weights " * 1000


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    import hashlib

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    base = {"kind": "sam", "variant": "vit_b", "size_bytes": len(PAYLOAD)}
    doc = {
        "schema_version": 1,
        "models": {
            "local": {
                **base,
                "url": f"http://127.0.0.1:{httpd.server_address[1]}/w.pth",
                "filename": "w.pth",
                "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
            },
            "nohash": {
                **base,
                "url": f"http://127.0.0.1:{httpd.server_address[1]}/n.pth",
                "filename": "n.pth",
                "sha256": None,
            },
            "offline": {
                **base,
                "url": f"http://127.0.0.1:{dead_port}/w.pth",
                "filename": "o.pth",
                "sha256": None,
            },
        },
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("PASAM_REGISTRY", str(path))
    yield path
    httpd.shutdown()
    httpd.server_close()


def test_download_prints_the_verified_path(tmp_path, registry):
    result = run("download", "local", "--no-progress")
    assert result.exit_code == 0, result.output
    target = tmp_path / "cache" / "w.pth"
    assert result.stdout.strip().splitlines()[-1] == str(target)
    assert target.read_bytes() == PAYLOAD
    assert "downloaded, verified" in result.stderr
    again = run("download", "local", "--no-progress")
    assert "already downloaded, verified" in again.stderr


def test_download_without_digest_says_not_verified(registry):
    result = run("download", "nohash", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "NOT verified" in result.stderr


def test_download_errors_are_one_line(registry):
    offline = run("download", "offline", "--no-progress", "--timeout", "5")
    assert offline.exit_code == 1
    lines = offline.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach 127.0.0.1")
    unknown = run("download", "vit_x")
    assert unknown.exit_code == 1 and "unknown model 'vit_x'" in unknown.text
    assert run("download").exit_code == 2


def test_download_list_and_manual_entry():
    listed = run("download", "--list")
    assert listed.exit_code == 0
    for name in ("vit_b", "vit_l", "vit_h", "pa_sam_l"):
        assert name in listed.text
    manual = run("download", "pa_sam_l")
    assert manual.exit_code == 1
    assert "cannot be downloaded automatically" in manual.text and "pan.baidu.com" in manual.text


def test_lazy_command_without_its_module_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "label_studio_backend.cli", None)  # as if not shipped
    result = run("serve", "--help")
    assert result.exit_code == 1
    assert "Usage: pasam serve" in result.text  # the summary is still shown
    assert "'pasam serve' is not available in this installation" in result.text
    assert "Traceback" not in result.output


def test_segment_all_runs_the_fast_encoder_in_the_chosen_precision(tmp_path, tiny_checkpoint):
    """pasam segment-all embeds through the fast encoder in --precision (default auto, as
    the other tools), says which in summary.json, and refuses an unknown precision."""
    from pasam_plugins.precision import resolve_precision

    img = np.zeros((96, 128), dtype=np.uint8)
    img[20:60, 30:90] = 200
    Image.fromarray(img).save(tmp_path / "cells.png")
    common = ["segment-all", str(tmp_path / "cells.png"), "-c", str(tiny_checkpoint)]
    common += ["--points-per-side", "2", "--device", "cpu", "--no-progress"]
    for precision in (None, "bf16", "float32"):
        out = tmp_path / f"out-{precision}"
        extra = [] if precision is None else ["--precision", precision]
        result = run(*common, "--out-dir", str(out), *extra)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        expected = precision or resolve_precision("auto", "cpu")
        assert summary[0]["encoder_precision"] == expected
    bad = run(*common, "--out-dir", str(tmp_path / "bad"), "--precision", "half")
    assert bad.exit_code == 2 and "unknown precision 'half'" in bad.text
    assert "Traceback" not in bad.output


def test_pack_checkpoint_halves_and_sets_zoom_settings(tmp_path, tiny_checkpoint):
    """`pasam pack-checkpoint --half --zoom` (how the shipped model is packed): float16, the
    zoom settings chosen on validation stored with it; bad --zoom values are named."""
    from labelstudio_support import zoomed_test_checkpoint

    from pasam_plugins.checkpoint import load_model, read_metadata

    src = zoomed_test_checkpoint(tmp_path / "zoomed.safetensors")
    out = tmp_path / "packed.safetensors"
    r = run("pack-checkpoint", str(src), str(out), "--half", "--zoom", '{"box_context": 1.75}')
    assert r.exit_code == 0, r.output
    meta = read_metadata(out)
    assert meta["zoom"]["box_context"] == 1.75 and meta["stored_dtype"] == "float16"
    assert meta["provenance"]["packed_from"] == "zoomed.safetensors"
    assert load_model(out).origin.zoom["box_context"] == 1.75
    assert out.stat().st_size < src.stat().st_size

    r = run("pack-checkpoint", str(src), str(tmp_path / "bad.safetensors"), "--zoom", '{"box": 1}')
    assert r.exit_code == 2 and "keys must be among" in r.output
    assert not (tmp_path / "bad.safetensors").exists()
    r = run("pack-checkpoint", str(src), str(tmp_path / "bad.safetensors"), "--zoom", "{1.5")
    assert r.exit_code == 2 and "--zoom" in r.output
    r = run(
        "pack-checkpoint", str(tiny_checkpoint), str(tmp_path / "x.safetensors"), "--zoom", "{}"
    )
    assert r.exit_code == 2 and "is not a zoomed model" in r.output
