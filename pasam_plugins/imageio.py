"""Reading images and normalizing them to the 8-bit RGB that SAM's encoder expects.

Normalization rules (documented for users of both adapters):

- ``uint8`` RGB passes unchanged; ``uint8`` RGBA drops alpha; ``uint8`` grayscale is
  replicated to three channels.
- Any other dtype (``uint16``, ``int``, ``float``, ``bool``) is scaled per channel: the
  ``percentiles`` (default 1 and 99.8) of that channel map to 0 and 255, values outside are
  clipped. A constant channel becomes 0.
- Channel layout is channels-last (``HxW`` or ``HxWxC``). ``channel=k`` picks channel ``k``
  (shown as grayscale). Without it, C=3 is RGB, C=4 is RGBA, C=2 or C>4 uses channel 0.

Limits shared by the CLI, napari and the Label Studio backend (:func:`check_image_size`):
a file with more than ``max_pixels`` pixels (default ``$PASAM_MAX_IMAGE_PIXELS``, else 64
Mpixel, as the server) is refused from its header, before decoding; an image whose short
side would round to 0 pixels when the model resizes its long side (an aspect ratio above
``2 x input size : 1``, 2048:1 for 1024-pixel models) is refused with a message saying so
(:meth:`pasam_plugins.predictor.PASamPredictor.set_image`).
"""

import os
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)
#: default pixel limit of :func:`read_image` (``$PASAM_MAX_IMAGE_PIXELS`` overrides it)
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image that cannot be read or normalized; the message names the problem."""


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed."""


def default_max_pixels() -> int:
    """``$PASAM_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
      ImageError: the variable is not a positive number.
    """
    value = os.environ.get("PASAM_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(float(value))
    except (ValueError, OverflowError):
        n = 0
    if n < 1:
        raise ImageError(f"PASAM_MAX_IMAGE_PIXELS={value!r} is not a positive number")
    return n


def check_image_size(
    height: int,
    width: int,
    *,
    max_pixels: int | None = None,
    target_length: int | None = None,
    name: str = "",
) -> None:
    """Refuse an image size the tools cannot or should not handle, with a readable message.

    Arguments:
      height, width (int): the image size in pixels.
      max_pixels (int or None): refuse more pixels than this (:class:`ImageTooLarge`).
      target_length (int or None): the model's input size (``ResizeLongestSide``): refuse
        an image whose short side would become 0 pixels when its long side is resized to it.
      name (str): how the image is named in the message.

    Raises:
      ImageTooLarge: more than ``max_pixels`` pixels.
      ImageError: an empty image or an impossible aspect ratio.
    """
    height, width = int(height), int(width)
    what = f"image {name}" if name else "the image"
    if height < 1 or width < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLarge(
            f"{what} is too large: {width}x{height} = {height * width} pixels > {max_pixels}"
        )
    if target_length is not None:
        # exactly segment_anything's ResizeLongestSide.get_preprocess_shape
        scale = target_length * 1.0 / max(height, width)
        if int(height * scale + 0.5) < 1 or int(width * scale + 0.5) < 1:
            long, short = max(height, width), min(height, width)
            raise ImageError(
                f"{what} is {width}x{height} pixels: its aspect ratio {long / short:.0f}:1 is "
                f"too extreme for this model (at most {2 * target_length}:1, else the short "
                f"side shrinks below one pixel at the model's {target_length}-pixel input); "
                "crop or pad it"
            )


#: PIL modes converted to RGB (or RGBA with transparency) on decoding
_TO_RGB_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def _pil_array(im: Any, name: str, limit: int) -> np.ndarray:
    """A PIL image -> channels-last array: the size checked from the header before any pixel
    is decoded, EXIF orientation applied (as viewers and browsers show the image), palette /
    CMYK / other colour modes -> RGB(A), 1-bit and LA -> L, 16-bit kept as uint16."""
    from PIL import ImageOps

    check_image_size(im.size[1], im.size[0], max_pixels=limit, name=name)
    im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode in _TO_RGB_MODES:
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "LA":
        im = im.getchannel("L")
    arr = np.asarray(im)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr


def _tiff_array(source: Any, name: str, limit: int) -> np.ndarray:
    """A TIFF (path or file object) through tifffile, its size checked from the header."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        shape = tuple(int(n) for n in tif.series[0].shape) if tif.series else ()
        if len(shape) >= 2:
            check_image_size(shape[0], shape[1], max_pixels=limit, name=name)
            values = float(np.prod(shape, dtype=np.float64))
            if values > 4.0 * limit:
                raise ImageTooLarge(
                    f"image {name} is too large: shape {shape} holds more than {4 * limit} values"
                )
        return tif.asarray()


def decode_image(
    source: "bytes | str | Path",
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    formats: "tuple[str, ...] | None" = None,
) -> np.ndarray:
    """The one image decoder of every tool (the CLI, the Label Studio backend, the training
    and evaluation datasets): image bytes or a file -> channels-last array, any bit depth.

    PNG, JPEG, BMP, GIF, WebP, ... through PIL (:func:`_pil_array`: EXIF orientation, colour
    modes, 16-bit); files named ``.tif``/``.tiff`` through tifffile (stacks and any dtype).
    The size is checked from the header before decoding.

    Arguments:
      source: the encoded bytes, or a file path.
      name: how errors name the image (default: the path, or "image").
      max_pixels: refuse images with more pixels; default :func:`default_max_pixels`.
      formats: PIL formats to accept (default: all PIL can read).

    Raises:
      ImageTooLarge: more than ``max_pixels`` pixels (also PIL's decompression-bomb limit).
      ImageError: it cannot be decoded, or it is not a 2D image.
    """
    import io

    from PIL import Image

    is_path = not isinstance(source, (bytes, bytearray, memoryview))
    label = name or (str(source) if is_path else "image")
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    try:
        if is_path and Path(source).suffix.lower() in (".tif", ".tiff"):
            arr = _tiff_array(source, label, limit)
        else:
            stream = source if is_path else io.BytesIO(bytes(source))
            try:
                im = Image.open(stream, formats=formats)
            except Image.DecompressionBombError as e:
                raise ImageTooLarge(f"image {label} is too large: {e}") from None
            with im:
                arr = _pil_array(im, label, limit)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image {label} is too large: {e}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
        text = str(exc)
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise ImageError(f"{label}: cannot decode image ({reason})") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageError(f"{label}: expected a 2D image (HxW or HxWxC), got shape {arr.shape}")
    return arr


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file (PNG, JPEG, TIFF, ...; any bit depth) as a channels-last array,
    through :func:`decode_image`.

    Raises:
      ImageTooLarge: more than ``max_pixels`` pixels (default :func:`default_max_pixels`).
      ImageError: no such file, or it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    return decode_image(path, max_pixels=max_pixels)


def _select_channels(image: np.ndarray, channel: int | None) -> np.ndarray:
    """The channels normalization works on: HxW (one channel) or HxWx3 (see the module
    docstring's rules); bool becomes 0/255 uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageError(f"expected an image of shape HxW or HxWxC, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ImageError(f"unsupported image dtype {arr.dtype}")
    if arr.ndim == 3:
        c = arr.shape[-1]
        if channel is not None:
            if not -c <= channel < c:
                raise ImageError(f"channel {channel} does not exist: the image has {c} channels")
            arr = arr[..., channel]
        elif c in (3, 4):
            arr = arr[..., :3]
        else:
            arr = arr[..., 0]
    elif channel not in (None, 0, -1):
        raise ImageError(f"channel {channel} does not exist: the image has 1 channel")
    return arr


def image_levels(
    image: np.ndarray,
    *,
    channel: int | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_samples: int | None = None,
) -> np.ndarray | None:
    """The contrast levels :func:`normalize_image` uses: per selected channel, the low and
    high percentiles (a Cx2 float64 array), or None for 8-bit images (passed unchanged).

    ``max_samples``: estimate the percentiles from a regular subsample of at most this many
    pixels (large or lazily read images: the whole image is never loaded); None: exact.
    """
    arr = _select_channels(image, channel)
    if arr.dtype == np.uint8:
        return None
    if max_samples is not None and arr.shape[0] * arr.shape[1] > max_samples:
        step = int(np.ceil(np.sqrt(arr.shape[0] * arr.shape[1] / max_samples)))
        arr = np.asarray(arr[::step, ::step])
    chans = [arr] if arr.ndim == 2 else [arr[..., i] for i in range(arr.shape[-1])]
    levels = []
    for ch in chans:
        ch = np.asarray(ch).astype(np.float32, copy=False)
        finite = np.isfinite(ch)
        if not finite.all():
            ch = np.where(finite, ch, 0.0)
        levels.append(np.percentile(ch, percentiles))
    return np.asarray(levels, dtype=np.float64)


def _scale_channel(ch: np.ndarray, lo: float, hi: float) -> np.ndarray:
    ch = ch.astype(np.float32, copy=False)
    finite = np.isfinite(ch)
    if not finite.all():
        ch = np.where(finite, ch, 0.0)
    if hi <= lo:
        return np.zeros(ch.shape, np.uint8)
    out = (ch - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def apply_levels(
    image: np.ndarray, levels: np.ndarray | None, *, channel: int | None = None
) -> np.ndarray:
    """HxWx3 uint8 RGB of (a window of) an image with the given :func:`image_levels`."""
    arr = _select_channels(image, channel)
    if levels is None:
        if arr.dtype != np.uint8:
            raise ImageError(f"an image of dtype {arr.dtype} needs contrast levels")
        out = arr
    elif arr.ndim == 2:
        out = _scale_channel(arr, *levels[0])
    else:
        out = np.stack([_scale_channel(arr[..., i], *levels[i]) for i in range(3)], axis=-1)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def normalize_image(
    image: np.ndarray,
    *,
    channel: int | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Convert any 2D image array to HxWx3 uint8 RGB (see the module docstring for the rules).

    Arguments:
      image (np.ndarray): HxW or HxWxC, any numeric dtype.
      channel (int or None): pick one channel of a multichannel image.
      percentiles (tuple): low/high percentiles for non-uint8 scaling.

    Returns:
      np.ndarray: HxWx3 uint8, C-contiguous.
    """
    levels = image_levels(image, channel=channel, percentiles=percentiles)
    return apply_levels(image, levels, channel=channel)
