"""Image size limits shared by the CLI, napari (through the predictor) and the Label Studio
backend: pixel limits checked from the file header, and aspect ratios the model input
cannot hold refused with a readable message."""

import numpy as np
import pytest
import tifffile
from hostile_support import png_header
from PIL import Image
from typer.testing import CliRunner

from pasam_plugins.cli import app
from pasam_plugins.imageio import ImageError, ImageTooLarge, check_image_size, read_image
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.testing import make_test_model


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    for var in ("PASAM_CHECKPOINT", "PASAM_MAX_IMAGE_PIXELS", "PASAM_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PASAM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "h, w, target, ok",
    [
        (1, 2048, 1024, True),
        (1, 2049, 1024, False),
        (3000, 1, 1024, False),
        (2, 4096, 1024, True),
        (1, 512, 256, True),
        (1, 513, 256, False),
    ],
)
def test_aspect_ratio_limit_follows_the_model_input(h, w, target, ok):
    if ok:
        check_image_size(h, w, target_length=target)
    else:
        with pytest.raises(ImageError, match=f"aspect ratio .*at most {2 * target}:1"):
            check_image_size(h, w, target_length=target)


@pytest.mark.parametrize("variant, width", [("vit_tiny", 3000), ("vit_tiny256", 600)])
def test_predictor_refuses_extreme_aspect_ratios_readably(variant, width):
    p = PASamPredictor(make_test_model(variant=variant), device="cpu")
    with pytest.raises(ImageError) as e:
        p.set_image(np.zeros((1, width), np.uint8))
    assert "aspect ratio" in str(e.value) and "> 0" not in str(e.value)
    assert not p.is_image_set and p.encoder_runs == 0
    p.set_image(np.zeros((2, width), np.uint8))  # the same width, twice as high, works
    assert p.encoder_runs == 1


def write_png_header(path, w, h):
    path.write_bytes(png_header(w, h))
    return path


def test_read_image_checks_pixels_from_the_header(tmp_path, monkeypatch):
    big = write_png_header(tmp_path / "big.png", 9000, 9000)  # 81 Mpixel, a 100-byte file
    with pytest.raises(ImageTooLarge, match="81000000 pixels > 64000000"):
        read_image(big)
    # the limit is configurable (then the truncated pixel data is the problem)
    monkeypatch.setenv("PASAM_MAX_IMAGE_PIXELS", "100000000")
    with pytest.raises(ImageError) as e:
        read_image(big)
    assert not isinstance(e.value, ImageTooLarge) and "cannot decode" in str(e.value)
    # PIL's own decompression-bomb limit is reported the same way
    bomb = write_png_header(tmp_path / "bomb.png", 20000, 20000)
    monkeypatch.setenv("PASAM_MAX_IMAGE_PIXELS", str(10**12))
    with pytest.raises(ImageTooLarge, match="too large"):
        read_image(bomb)
    monkeypatch.setenv("PASAM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageError, match="PASAM_MAX_IMAGE_PIXELS"):
        read_image(big)


def test_read_image_checks_tiff_size_before_reading(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((100, 120), np.uint16))
    with pytest.raises(ImageTooLarge, match="12000 pixels > 5000"):
        read_image(path, max_pixels=5000)
    assert read_image(path, max_pixels=12000).shape == (100, 120)


def run(*args):
    result = CliRunner().invoke(app, list(args))
    result.text = " ".join(result.output.replace("│", " ").split())
    return result


def test_cli_predict_refuses_too_large_images_and_tiles_too_elongated_ones(tmp_path, tiny_checkpoint):
    big = write_png_header(tmp_path / "big.png", 9000, 9000)
    r = run(
        "predict",
        str(big),
        "-c",
        str(tiny_checkpoint),
        "--point",
        "5,5",
        "--out-dir",
        str(tmp_path / "out"),
    )
    assert r.exit_code == 1 and "too large" in r.text and "Traceback" not in r.output

    line = tmp_path / "line.png"
    Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (1, 12))).save(line)  # 3000 x 1
    r = run(
        "predict",
        str(line),
        "-c",
        str(tiny_checkpoint),
        "--point",
        "5,0",
        "--out-dir",
        str(tmp_path / "out"),
    )
    # an image too elongated for the model's resize (3000:1 > 2048:1) is longer than two
    # inputs, so pasam predict tiles it at native resolution instead of refusing it
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    mask = np.asarray(Image.open(tmp_path / "out" / "line_mask.png"))
    assert mask.shape == (1, 3000)


def test_fine_tuning_skips_a_too_elongated_image_as_a_bad_sample():
    """Label Studio and napari fine-tuning prepare images with the same rule: an image the
    model input cannot hold is a bad sample (skipped with a reason), not a crash."""
    from pasam_plugins.train.datasets import SampleError
    from pasam_plugins.train.trainer import prepare_image

    model = make_test_model()
    image = np.zeros((1, 3000, 3), np.uint8)
    labels = np.zeros((1, 3000), np.int32)
    labels[0, 10:50] = 1
    with pytest.raises(SampleError, match="line.png.*aspect ratio 3000:1"):
        prepare_image(model, image, labels, name="line.png")
