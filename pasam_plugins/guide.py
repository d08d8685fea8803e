"""The guide input of PA-SAM's dense prompt compensation (image + Canny edges, 4x256x256 for
the 1024-px models, a quarter of the input size in general).

Computed once per image by the predictor (never per click); the network's ``guiding_conv``
turns it into the 256x64x64 guide.
"""

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

#: the guide input is a quarter of the model's input size (256 px for the 1024-px models),
#: so that the guiding conv's two stride-2 convolutions land on the embedding grid
GUIDE_FRACTION = 4


def guide_size(input_size: int) -> int:
    """Side of the guide input for a model input of ``input_size`` px."""
    return input_size // GUIDE_FRACTION


def _wrap_to_uint8(x: np.ndarray) -> np.ndarray:
    """Cast floats to uint8 as numpy does on x86-64: truncate toward zero, wrap modulo 256.

    Written out explicitly so the result does not depend on the platform's float->uint8 cast.
    """
    return (np.trunc(x).astype(np.int64) & 0xFF).astype(np.uint8)


def reference_guide_input(x_preprocessed: Tensor) -> Tensor:
    """Guide input exactly as the authors' code builds it (guide mode ``"reference"``).

    Arguments:
      x_preprocessed (Tensor): 1x3xSxS, the output of ``Sam.preprocess`` (S = 1024 for
        the official models).

    Returns:
      Tensor: 1x4x(S/4)x(S/4) float32: the bilinearly downsampled normalized image and the
        Canny edges (/255) of its channels cast straight to uint8.
    """
    g = guide_size(x_preprocessed.shape[-1])
    x256 = F.interpolate(x_preprocessed.float(), (g, g), mode="bilinear", align_corners=False)
    arr = x256[0].permute(1, 2, 0).detach().cpu().numpy()
    edges = cv2.Canny(_wrap_to_uint8(arr), 10, 100)
    edges_t = torch.from_numpy(edges).to(x256.device, torch.float32)[None, None] / 255.0
    return torch.cat([x256, edges_t], dim=1)


def image_guide_input(x_preprocessed: Tensor, image_resized_uint8: np.ndarray) -> Tensor:
    """Guide input following the paper (guide mode ``"image"``): Canny on the 8-bit image.

    Arguments:
      x_preprocessed (Tensor): 1x3xSxS, the output of ``Sam.preprocess``.
      image_resized_uint8 (np.ndarray): hxwx3 uint8 RGB, the image resized so that its longest
        side is S (the same geometry as ``x_preprocessed`` before padding).

    Returns:
      Tensor: 1x4x(S/4)x(S/4) float32.
    """
    size = x_preprocessed.shape[-1]
    g = guide_size(size)
    x256 = F.interpolate(x_preprocessed.float(), (g, g), mode="bilinear", align_corners=False)
    canvas = np.zeros((size, size, 3), np.uint8)
    h, w = image_resized_uint8.shape[:2]
    canvas[:h, :w] = image_resized_uint8
    small = cv2.resize(canvas, (g, g), interpolation=cv2.INTER_AREA)
    edges = cv2.Canny(small, 10, 100)
    edges_t = torch.from_numpy(edges).to(x256.device, torch.float32)[None, None] / 255.0
    return torch.cat([x256, edges_t], dim=1)


def guide_input(
    mode: str, x_preprocessed: Tensor, image_resized_uint8: np.ndarray | None = None
) -> Tensor:
    """Dispatch on the guide mode recorded with the model."""
    if mode == "reference":
        return reference_guide_input(x_preprocessed)
    if mode == "image":
        if image_resized_uint8 is None:
            raise ValueError("guide mode 'image' needs the resized uint8 image")
        return image_guide_input(x_preprocessed, image_resized_uint8)
    raise ValueError(f"unknown guide mode {mode!r}; use 'reference' or 'image'")
