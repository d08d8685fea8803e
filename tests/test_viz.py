"""Overlay rendering: mask, uncertainty heat map, mined points, legend, PNG output."""

import numpy as np
import pytest
from PIL import Image

from pasam_plugins.viz import (
    MASK_COLOR,
    colorize_uncertainty,
    overlay,
    save_overlay_png,
)


@pytest.fixture()
def gray_image() -> np.ndarray:
    return np.full((200, 300, 3), 128, np.uint8)


def test_mask_fill_and_outline_leave_background_untouched(gray_image):
    mask = np.zeros((200, 300), bool)
    mask[50:150, 100:200] = True
    out = overlay(gray_image, mask, legend=False)
    assert out.shape == gray_image.shape and out.dtype == np.uint8
    assert (gray_image == 128).all()  # input not modified
    inside = out[100, 150].astype(int)
    assert inside[2] > 128 and inside[0] < 128  # tinted towards cyan
    assert (out[:40] == 128).all() and (out[:, :90] == 128).all()  # background unchanged
    assert tuple(out[50, 150]) == MASK_COLOR  # outline on the mask boundary


def test_uncertainty_heat_map_scales_with_uncertainty(gray_image):
    u = np.zeros((200, 300), np.float32)
    u[:, 150:] = 1.0
    u[0, 0] = np.nan
    out = overlay(gray_image, None, u, legend=False)
    assert (out[:, :150] == 128).all()  # certain (and NaN) pixels keep the image
    top = colorize_uncertainty(np.ones((1, 1), np.float32))[0, 0].astype(float)
    expected = 128 * 0.25 + top * 0.75
    np.testing.assert_allclose(out[100, 200], expected, atol=1)


def test_colorize_uncertainty_is_magma_and_not_rescaled():
    lut = colorize_uncertainty(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32))[0]
    assert lut.shape == (4, 3) and lut.dtype == np.uint8
    assert lut[0].max() < 10  # magma starts almost black
    assert lut[2].min() > 180  # ... and ends light yellow
    assert (lut[3] == lut[0]).all()
    half = colorize_uncertainty(np.full((2, 2), 0.5, np.float32))
    assert (half == lut[1]).all()  # absolute scale: a constant map is not stretched
    with pytest.raises(ValueError, match="HxW"):
        colorize_uncertainty(np.zeros((2, 2, 2)))


def test_mined_points_are_green_and_red_crosses(gray_image):
    pts = np.array([[60, 60], [240, 140]], np.float32)
    out = overlay(gray_image, None, None, pts, np.array([1, 0]), legend=False, marker_size=20)
    r, g, b = out[60, 60].astype(int)
    assert g > 180 and r < 100 and b < 100
    r, g, b = out[140, 240].astype(int)
    assert r > 180 and g < 100 and b < 100
    # a "+" covers its arms, an "x" its diagonals: the shapes differ as well as the colours
    assert out[60, 66, 1] > 180 and out[66, 66, 1] <= 128
    assert out[145, 245, 0] > 180 and out[140, 246, 0] <= 128
    # points outside the image are skipped without error
    overlay(gray_image, None, None, np.array([[-50, 10], [1000, 1000]]), np.array([1, 0]))


def test_legend_only_on_large_images(gray_image):
    mask = np.zeros((200, 300), bool)
    mask[150:190, 250:290] = True
    with_legend = overlay(gray_image, mask, np.zeros((200, 300)), legend=True)
    without = overlay(gray_image, mask, np.zeros((200, 300)), legend=False)
    assert (with_legend[:30, :60] != without[:30, :60]).any()
    small = np.full((64, 64, 3), 128, np.uint8)
    assert (overlay(small, np.zeros((64, 64), bool), legend=True) == 128).all()


def test_bad_inputs_raise_clear_errors(gray_image):
    with pytest.raises(ValueError, match="mask shape"):
        overlay(gray_image, np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="uncertainty shape"):
        overlay(gray_image, None, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="uint8"):
        overlay(gray_image.astype(np.float32), None)
    with pytest.raises(ValueError, match="2 mined points but 1 labels"):
        overlay(gray_image, None, None, np.zeros((2, 2)), np.zeros(1))


def test_save_overlay_png_on_em_section(tmp_path, isbi_dir):
    img = np.asarray(Image.open(isbi_dir / "image" / "0.png"))
    label = np.asarray(Image.open(isbi_dir / "label" / "0.png")) == 255
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    u = np.exp(-((xx - 256.0) ** 2 + (yy - 256.0) ** 2) / (2 * 60.0**2)).astype(np.float32)
    pts = np.array([[250, 250], [262, 270], [100, 400], [400, 100]], np.float32)
    path = save_overlay_png(tmp_path / "sub" / "ov.png", img, label, u, pts, np.array([1, 1, 0, 0]))
    back = np.asarray(Image.open(path))
    assert back.shape == (512, 512, 3) and back.dtype == np.uint8
    expected = overlay(img, label, u, pts, np.array([1, 1, 0, 0]))
    assert (back == expected).all()


def test_user_prompts_are_drawn(gray_image):
    out = overlay(
        gray_image,
        None,
        box=[50, 40, 250, 160],
        prompt_points=[[150, 100], [200, 120]],
        prompt_labels=[1, 0],
        legend=False,
    )
    assert tuple(out[40, 150]) == (255, 215, 0)  # yellow box edge
    assert tuple(out[100, 150]) == (255, 255, 255)  # foreground point: white dot
    assert tuple(out[120, 200]) == (255, 0, 255)  # background point: magenta dot
    assert (out[100, 100] == 128).all()  # inside the box, away from the dots: unchanged
    with pytest.raises(ValueError, match="box must be 4"):
        overlay(gray_image, None, box=[1, 2, 3])


def test_legend_avoids_hiding_prompts():
    img = np.full((300, 300, 3), 128, np.uint8)
    mask = np.zeros((300, 300), bool)
    mask[200:260, 200:260] = True
    # a foreground click in the top-left corner, where the legend goes by default
    out = overlay(img, mask, prompt_points=[[20, 20]], prompt_labels=[1])
    assert tuple(out[20, 20]) == (255, 255, 255)
    plain = overlay(img, mask, prompt_points=[[20, 20]], prompt_labels=[1], legend=False)
    assert (out != plain).any()  # the legend was drawn elsewhere
