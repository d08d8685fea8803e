"""Zoomed-in training examples: one object per crop, with microscopy augmentation and
interactive prompt simulation (box, clicks, noisy mask, corrective clicks).

The crops use the geometry of :mod:`pasam_plugins.zoom`, exactly what
:class:`pasam_plugins.segment.Segmenter` shows a zoomed model at inference:

- **tight** crops (box prompts and refinement clicks): a window ``U(1.5, 2.5)`` x the
  object's longer side around the object's box, its centre jittered by up to 10% of the
  window;
- **wide** crops (the first clicks without a box, before the model zooms in): a window
  ``logU(1.5, 12)`` x the object's size centred on a random pixel of the object.

Augmentation suited to microscopy (applied to the image before cropping, so percentile
normalization sees the whole image as at inference): flips and 90-degree rotations of the
crop; brightness, contrast and gamma jitter; random grayscale; hue/saturation jitter (stains);
inversion (bright-field vs fluorescence); a 16-bit round trip (the image spread over a random
16-bit range plus noise, then normalized by :func:`pasam_plugins.imageio.normalize_image` as
16-bit inputs are at inference); mild blur and noise.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..imageio import normalize_image
from ..metrics import mask_box
from ..zoom import Window, crop
from .datasets import Sample, SampleError

#: how tight crops relate to the object (window side / object side)
TIGHT_CONTEXT = (1.5, 2.5)
#: how wide crops relate to the object (log-uniform)
WIDE_CONTEXT = (1.5, 12.0)


@dataclass
class ObjectRecord:
    label: int
    box: np.ndarray  # x0, y0, x1, y1 pixel indices
    area: int


@dataclass
class LoadedSample:
    name: str
    dataset: str
    image: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW int32
    objects: list[ObjectRecord]


@dataclass
class CropExample:
    """One training example in the model's input frame (``out`` x ``out``)."""

    image: np.ndarray  # out x out x 3 uint8
    target: np.ndarray  # out x out bool (the object)
    box: np.ndarray  # 4 float, the object's box in the input frame
    wide: bool
    name: str


def load_samples(
    samples: Sequence[Sample], *, min_area: int = 9
) -> tuple[list[LoadedSample], dict[str, str]]:
    """Load every sample into memory with its objects (area >= ``min_area``); returns the
    loaded samples and the ones skipped (name -> why)."""
    loaded, skipped = [], {}
    for s in samples:
        try:
            image, labels = s.load()
        except (SampleError, ValueError, OSError) as exc:
            skipped[s.name] = str(exc)
            continue
        labels = np.asarray(labels).astype(np.int32)
        objects = []
        ids, counts = np.unique(labels, return_counts=True)
        for i, c in zip(ids, counts, strict=True):
            if i == 0 or c < min_area:
                continue
            box = mask_box(labels == i)
            objects.append(ObjectRecord(int(i), box, int(c)))
        if objects:
            loaded.append(
                LoadedSample(s.name, s.dataset or "data", normalize_image(image), labels, objects)
            )
        else:
            skipped[s.name] = "no object large enough"
    return loaded, skipped


# ---------------------------------------------------------------------------- augmentation
def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-image intensity augmentation of an HxWx3 uint8 image (see module docstring)."""
    x = image.astype(np.float32) / 255.0
    if rng.random() < 0.2:
        x = 1.0 - x  # inversion: bright-field vs fluorescence look
    if rng.random() < 0.3:  # stain / colour jitter in HSV
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-25, 25)) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 1)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.25:
        g = x.mean(axis=2, keepdims=True)
        x = np.repeat(g, 3, axis=2)
    if rng.random() < 0.8:
        contrast = rng.uniform(0.6, 1.5)
        bright = rng.uniform(-0.15, 0.15)
        x = (x - 0.5) * contrast + 0.5 + bright
    if rng.random() < 0.4:
        x = np.clip(x, 0, 1) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.2:
        s = rng.uniform(0.4, 1.2)
        x = cv2.GaussianBlur(x, (0, 0), s)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape).astype(np.float32)
    x = np.clip(x, 0, 1)
    if rng.random() < 0.25:
        # a 16-bit acquisition: the signal spread over part of the 16-bit range with an
        # offset, normalized the way 16-bit inputs are (per-channel percentiles)
        lo = rng.uniform(0, 2000)
        span = rng.uniform(500, 60000 - lo)
        x16 = (
            (lo + x * span + rng.normal(0, span * 0.003, x.shape)).clip(0, 65535).astype(np.uint16)
        )
        return normalize_image(x16)
    return (x * 255.0 + 0.5).astype(np.uint8)


def _geometric(image: np.ndarray, target: np.ndarray, box: np.ndarray, rng: np.random.Generator):
    """Random flips and 90-degree rotations of a square crop and its target; the box follows."""
    n = image.shape[0]
    corners = np.array([[box[0], box[1]], [box[2], box[3]]], dtype=np.float64)
    k = int(rng.integers(4))
    if k:
        image = np.rot90(image, k)
        target = np.rot90(target, k)
        for _ in range(k):  # rot90 (counter-clockwise): (x, y) -> (y, n - 1 - x)
            corners = np.stack([corners[:, 1], n - 1 - corners[:, 0]], axis=1)
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
        corners[:, 0] = n - 1 - corners[:, 0]
    lo, hi = corners.min(0), corners.max(0)
    return (
        np.ascontiguousarray(image),
        np.ascontiguousarray(target),
        np.array([lo[0], lo[1], hi[0], hi[1]], np.float32),
    )


# ---------------------------------------------------------------------------- sampling
class CropSampler:
    """Draws zoomed-in examples from in-memory samples.

    Datasets are drawn with equal probability (so a small dataset is not drowned by a big
    one), then an image of it, then an object of the image.
    """

    def __init__(
        self,
        samples: Sequence[LoadedSample],
        *,
        out: int,
        wide_fraction: float = 0.35,
        augment: bool = True,
    ) -> None:
        if not samples:
            raise ValueError("no samples with objects to train on")
        self.samples = list(samples)
        self.out = out
        self.wide_fraction = wide_fraction
        self.augment = augment
        by_ds: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_ds.setdefault(s.dataset, []).append(i)
        self.by_dataset = list(by_ds.values())

    def draw(self, rng: np.random.Generator) -> CropExample:
        group = self.by_dataset[int(rng.integers(len(self.by_dataset)))]
        s = self.samples[group[int(rng.integers(len(group)))]]
        obj = s.objects[int(rng.integers(len(s.objects)))]
        x0, y0, x1, y1 = obj.box.astype(np.float64)
        side = max(x1 - x0 + 1, y1 - y0 + 1)
        wide = rng.random() < self.wide_fraction
        if wide:
            c = float(np.exp(rng.uniform(*np.log(WIDE_CONTEXT))))
            ys, xs = np.nonzero(s.labels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] == obj.label)
            j = int(rng.integers(len(ys)))
            cx, cy = x0 + xs[j] + 0.5, y0 + ys[j] + 0.5
        else:
            c = float(rng.uniform(*TIGHT_CONTEXT))
            cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
        size = max(8.0, c * side)
        if not wide:
            cx += rng.uniform(-0.1, 0.1) * size
            cy += rng.uniform(-0.1, 0.1) * size
        window = Window(cx - size / 2, cy - size / 2, size)
        image = augment_intensity(s.image, rng) if self.augment else s.image
        img = crop(image, window, self.out)
        target = crop((s.labels == obj.label).astype(np.uint8), window, self.out, nearest=True) > 0
        box = window.box_to_input(obj.box, self.out).astype(np.float32)
        if not target.any():  # a sliver lost in resampling: fall back to a tight crop
            return self.draw(rng)
        if self.augment:
            img, target, box = _geometric(img, target, box, rng)
            # the box of the (resampled) target is the truth after rotation
            tb = mask_box(target)
            box = tb if tb is not None else box
        else:
            tb = mask_box(target)
            box = tb if tb is not None else box
        return CropExample(img, target, box.astype(np.float32), wide, s.name)


# ---------------------------------------------------------------------------- prompts
def jitter_box(
    box: np.ndarray, rng: np.random.Generator, *, limit: float, std: float = 0.05
) -> np.ndarray:
    """Box noise as SAM trains with (each coordinate moved by N(0, std x side), here at most
    15% of the side), clipped to the ``limit``-px frame."""
    x0, y0, x1, y1 = box.astype(np.float64)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    scale = np.array([w, h, w, h])
    noise = np.clip(rng.normal(0, std, 4), -0.15, 0.15) * scale
    out = np.clip(np.array([x0, y0, x1, y1]) + noise, 0, limit - 1)
    if out[2] < out[0]:
        out[[0, 2]] = out[[2, 0]]
    if out[3] < out[1]:
        out[[1, 3]] = out[[3, 1]]
    return out.astype(np.float32)


def sample_in(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n (x, y) pixels drawn uniformly from a bool mask (with replacement when small)."""
    ys, xs = np.nonzero(mask)
    idx = rng.choice(ys.size, size=n, replace=ys.size < n)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float32)


def corrective_click(
    pred: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int] | None:
    """A click drawn uniformly from the error region (SAM's and micro-sam's training
    protocol): positive in a false negative, negative in a false positive. None when the
    prediction is perfect."""
    fn = target & ~pred
    fp = pred & ~target
    nfn, nfp = int(fn.sum()), int(fp.sum())
    if nfn + nfp == 0:
        return None
    positive = rng.random() < nfn / (nfn + nfp)
    return sample_in(fn if positive else fp, 1, rng)[0], int(positive)
