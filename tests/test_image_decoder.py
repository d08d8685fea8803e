"""One image decoder (issue 12): the CLI and the datasets (files) and the Label Studio backend
(bytes) decode through pasam_plugins.imageio.decode_image, so an image rotated by its EXIF
orientation, a palette image or a 16-bit PNG reads the same everywhere."""

import io

import numpy as np
from PIL import Image

from label_studio_backend.images import decode_image as backend_decode
from pasam_plugins.imageio import decode_image, normalize_image, read_image
from pasam_plugins.train.datasets import read_source


def _exif_rotated_jpeg(path):
    """A 40 (wide) x 20 (high) JPEG stored with EXIF orientation 6 (shown rotated 90 deg:
    20 wide x 40 high), bright on its stored left half."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 250
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif, quality=95)
    return path.read_bytes()


def test_exif_orientation_is_applied_alike_for_files_and_bytes(tmp_path):
    data = _exif_rotated_jpeg(tmp_path / "rot.jpg")
    from_file = read_image(tmp_path / "rot.jpg")
    from_bytes = decode_image(data)
    assert from_file.shape[:2] == (40, 20)  # as viewers and browsers show it
    np.testing.assert_array_equal(from_file, from_bytes)
    served = backend_decode(data, name="rot.jpg", max_pixels=10_000)
    np.testing.assert_array_equal(served, normalize_image(from_file))


def test_palette_and_16_bit_images_read_the_same_in_every_tool(tmp_path):
    pal = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (8, 8, 3)
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    arr = read_image(tmp_path / "deep.png")
    assert arr.dtype == np.uint16 and arr.max() == 63000
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()), arr)
    # the dataset reader goes through the same decoder
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    Image.fromarray(deep).save(tmp_path / "ds" / "images" / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "ds" / "masks" / "a.png")
    image, _ = read_source(f"components:{tmp_path / 'ds'}")[0].samples[0].load()
    np.testing.assert_array_equal(image, normalize_image(arr))
