"""napari samples: real nuclei images (2018 Data Science Bowl, CC0; see ``samples/README.md``),
synthetic fluorescence images and scikit-image's IHC slide. No download.

Each function returns napari ``LayerData`` tuples ``(data, metadata, layer_type)``.
"""

from pathlib import Path

import numpy as np

FullLayerData = tuple[np.ndarray, dict, str]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
#: the shipped nuclei images: sample key -> (file, display name)
NUCLEI = {
    "nuclei_fluorescence": ("dsb2018_000_06c779330d6d.png", "nuclei fluorescence 360px"),
    "nuclei_fluorescence_small": ("dsb2018_007_1b6044e4858a.png", "nuclei fluorescence 256px"),
    "nuclei_tissue": ("dsb2018_010_2e2d29fc4444.png", "nuclei H&E-like tissue"),
    "nuclei_fluorescence_wide": ("dsb2018_033_a5e695fce80d.png", "nuclei fluorescence 640px"),
}


def read_nucleus_image(filename: str) -> tuple[np.ndarray, bool]:
    """A shipped nuclei PNG: grayscale HxW when its colour channels are equal (fluorescence),
    else RGB HxWx3; the alpha channel is dropped. Returns (data, is_rgb)."""
    from PIL import Image

    with Image.open(SAMPLES_DIR / filename) as im:
        rgb = np.asarray(im.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0]), False
    return rgb, True


def _nuclei(key: str) -> list[FullLayerData]:
    filename, name = NUCLEI[key]
    data, rgb = read_nucleus_image(filename)
    meta = {"name": name, "rgb": rgb, "metadata": {"source": f"DSB 2018 (CC0): {filename}"}}
    if not rgb:
        meta["colormap"] = "gray"
    return [(data, meta, "image")]


def nuclei_fluorescence() -> list[FullLayerData]:
    return _nuclei("nuclei_fluorescence")


def nuclei_fluorescence_small() -> list[FullLayerData]:
    return _nuclei("nuclei_fluorescence_small")


def nuclei_tissue() -> list[FullLayerData]:
    return _nuclei("nuclei_tissue")


def nuclei_fluorescence_wide() -> list[FullLayerData]:
    return _nuclei("nuclei_fluorescence_wide")


def _blobs(
    shape: tuple[int, ...], centers: np.ndarray, radii: np.ndarray, brightness: np.ndarray
) -> np.ndarray:
    """Sum of soft-edged ellipsoidal blobs (nuclei-like) on a grid of ``shape``."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    out = np.zeros(shape, np.float32)
    for c, r, b in zip(centers, radii, brightness, strict=True):
        d2 = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r, strict=True))
        out += b / (1.0 + np.exp((np.sqrt(d2) - 1.0) * 8.0))
    return out


def _to_uint16_camera(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background offset + Poisson shot noise + read noise, clipped to uint16."""
    photons = rng.poisson(np.clip(signal, 0, None) + 20.0).astype(np.float32)
    counts = 100.0 + 2.0 * photons + rng.normal(0.0, 6.0, signal.shape).astype(np.float32)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def make_fluorescence_2d(*, size: int = 512, n_cells: int = 40, seed: int = 0) -> np.ndarray:
    """A 2D widefield-like nuclei image, ``size x size`` uint16."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, size - 20, (n_cells, 2))
    radii = rng.uniform(9, 22, (n_cells, 1)) * rng.uniform(0.7, 1.3, (n_cells, 2))
    brightness = rng.uniform(150, 900, n_cells)
    return _to_uint16_camera(_blobs((size, size), centers, radii, brightness), rng)


def make_stack_3d(
    *, depth: int = 24, size: int = 192, n_cells: int = 14, seed: int = 1
) -> np.ndarray:
    """A 3D nuclei stack, ``depth x size x size`` uint16 (objects span several slices)."""
    rng = np.random.default_rng(seed)
    centers = np.column_stack(
        [rng.uniform(4, depth - 4, n_cells), rng.uniform(20, size - 20, (n_cells, 2))]
    )
    radii = np.column_stack([rng.uniform(3, 7, n_cells), rng.uniform(10, 20, (n_cells, 2))])
    brightness = rng.uniform(200, 900, n_cells)
    return _to_uint16_camera(_blobs((depth, size, size), centers, radii, brightness), rng)


def fluorescence_2d() -> list[FullLayerData]:
    """napari sample: synthetic 2D fluorescence nuclei (uint16)."""
    data = make_fluorescence_2d()
    return [(data, {"name": "synthetic nuclei 2D", "colormap": "gray"}, "image")]


def stack_3d() -> list[FullLayerData]:
    """napari sample: synthetic 3D fluorescence stack (uint16)."""
    data = make_stack_3d()
    return [(data, {"name": "synthetic nuclei 3D", "colormap": "gray"}, "image")]


def ihc_slide() -> list[FullLayerData]:
    """napari sample: scikit-image's bundled immunohistochemistry slide (RGB uint8)."""
    from skimage import data as skdata

    return [(skdata.immunohistochemistry(), {"name": "IHC slide", "rgb": True}, "image")]
