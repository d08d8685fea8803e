"""Reading images and normalizing them to the 8-bit RGB that SAM's encoder expects.

Normalization rules (documented for users of both adapters):

- ``uint8`` RGB passes unchanged; ``uint8`` RGBA drops alpha; ``uint8`` grayscale is
  replicated to three channels.
- Any other dtype (``uint16``, ``int``, ``float``, ``bool``) is scaled per channel: the
  ``percentiles`` (default 1 and 99.8) of that channel map to 0 and 255, values outside are
  clipped. A constant channel becomes 0.
- Channel layout is channels-last (``HxW`` or ``HxWxC``). ``channel=k`` picks channel ``k``
  (shown as grayscale). Without it, C=3 is RGB, C=4 is RGBA, C=2 or C>4 uses channel 0.
"""

from pathlib import Path

import numpy as np

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)


class ImageError(ValueError):
    """An image that cannot be read or normalized; the message names the problem."""


def read_image(path: str | Path) -> np.ndarray:
    """Read PNG/JPEG/TIFF (any bit depth) as a numpy array in channels-last layout."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = arr.astype(np.uint16)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
        raise ImageError(f"{path}: cannot decode image ({exc})") from exc
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageError(f"{path}: expected a 2D image (HxW or HxWxC), got shape {arr.shape}")
    return arr


def _scale_channel(ch: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    ch = ch.astype(np.float32, copy=False)
    finite = np.isfinite(ch)
    if not finite.all():
        ch = np.where(finite, ch, 0.0)
    lo, hi = np.percentile(ch, percentiles)
    if hi <= lo:
        return np.zeros(ch.shape, np.uint8)
    out = (ch - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).round().astype(np.uint8)


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

    if arr.dtype == np.uint8:
        out = arr
    elif arr.ndim == 2:
        out = _scale_channel(arr, percentiles)
    else:
        out = np.stack([_scale_channel(arr[..., i], percentiles) for i in range(3)], axis=-1)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)
