"""Training and evaluation data: images with object masks, from several layouts.

Every reader returns a :class:`Dataset`: a list of :class:`Sample` (one 2D image and a label
map of its objects; 3D stacks are split into one sample per slice) plus the list of files
that were skipped and why. Bad or mismatched pairs never stop a run: they are reported
(logged as warnings, kept in ``Dataset.skipped``) and left out.

Layouts:

- :func:`read_folder`: a folder of images and a folder of masks matched by file stem
  (``a.png`` <-> ``a.png`` / ``a_mask.png`` / ``a_labels.tif`` ...), or both in one folder.
- :func:`read_hqseg`: the HQSeg-44K layout of SAM-HQ (``DIS5K``, ``thin_object_detection``
  ``COIFT/HRSOD/ThinObject5K``, ``cascade_psp``) with its train and validation splits.
- :func:`read_labelstudio`: a Label Studio JSON export with brush (RLE) regions.
- :func:`read_napari`: napari Labels layers saved as TIFF next to their images
  (``cells.tif`` + ``cells_labels.tif``).

How mask files become objects (``instances``): ``"binary"``: everything > 128 (or > 0 for 0/1
masks) is one object (HQSeg, salient-object masks); ``"labels"``: each nonzero value is one
object (napari Labels, instance maps); ``"components"``: each connected component of the
foreground is one object (e.g. cell profiles); ``"auto"``: ``labels`` when a mask holds other
values than {0, 1} / {0, 255}, else ``binary``.
"""

import base64
import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from .. import lsformat
from ..imageio import normalize_image, read_image

logger = logging.getLogger(__name__)

Instances = Literal["auto", "binary", "labels", "components"]
INSTANCE_MODES = ("auto", "binary", "labels", "components")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: stems of mask files next to (or in another folder than) their image: ``<stem><suffix>``
MASK_SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", ".labels", "_gt", "_seg")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations", "ground_truth")
IMAGE_DIR_NAMES = ("images", "image", "im", "img", "imgs")


class DatasetError(ValueError):
    """A data source that cannot be used at all (missing folder, unreadable export)."""


class SampleError(ValueError):
    """One sample that cannot be used (unreadable file, image/mask size mismatch)."""


@dataclass
class Sample:
    """One 2D image with its objects.

    Attributes:
      name: a readable identifier (``dataset/stem`` or ``stem[z=3]`` for stack slices).
      load: returns ``(image HxWx3 uint8 RGB, labels HxW int32)``; 0 = background, every
        other value one object. Raises :class:`SampleError` for a bad pair.
      dataset: the dataset (subset) name, used to group evaluation results.
    """

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    dataset: str = ""

    @classmethod
    def from_arrays(
        cls,
        name: str,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        instances: Instances = "auto",
        dataset: str = "",
    ) -> "Sample":
        """A sample from in-memory arrays (image: any kind :func:`normalize_image` takes)."""
        rgb, labels = _pair(image, mask, instances=instances, what=name)
        return cls(name=name, load=lambda: (rgb, labels), dataset=dataset)


@dataclass
class Dataset:
    """Samples plus the files that were skipped, with the reason."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def skip(self, what: str, why: str) -> None:
        logger.warning("skipping %s: %s", what, why)
        self.skipped.append((what, why))

    def extend(self, other: "Dataset") -> None:
        self.samples.extend(other.samples)
        self.skipped.extend(other.skipped)

    def report(self) -> str:
        """One line per skipped file, or an empty string."""
        return "\n".join(f"skipped {w}: {y}" for w, y in self.skipped)


# ------------------------------------------------------------------------ masks -> labels
def mask_to_labels(mask: np.ndarray, instances: Instances = "auto") -> np.ndarray:
    """A 2D mask file's content -> HxW int32 label map (0 = background).

    See the module docstring for the ``instances`` modes. Color (HxWx3/4) masks are read from
    their first channel.
    """
    if instances not in INSTANCE_MODES:
        raise ValueError(f"instances must be one of {INSTANCE_MODES}, got {instances!r}")
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., 0]
    if m.ndim != 2:
        raise SampleError(f"expected a 2D mask, got shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if instances == "auto":
        values = np.unique(m)
        binary = set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}
        instances = "binary" if binary else "labels"
    if instances == "labels":
        if np.issubdtype(m.dtype, np.floating):
            m = np.rint(m)
        return m.astype(np.int32)
    fg = m > (128 if m.max() > 1 else 0)
    if instances == "binary":
        return fg.astype(np.int32)
    _, comps = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    return comps.astype(np.int32)


def _pair(
    image: np.ndarray, mask: np.ndarray, *, instances: Instances, what: str
) -> tuple[np.ndarray, np.ndarray]:
    labels = mask_to_labels(mask, instances)
    img = np.asarray(image)
    if img.shape[:2] != labels.shape:
        raise SampleError(
            f"{what}: image is {img.shape[1]}x{img.shape[0]} but mask is "
            f"{labels.shape[1]}x{labels.shape[0]} (width x height)"
        )
    try:
        rgb = normalize_image(img)
    except ValueError as exc:
        raise SampleError(f"{what}: {exc}") from exc
    return rgb, labels


def samples_from_arrays(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    name: str = "image",
    dataset: str = "",
    skip_empty: bool = True,
) -> list[Sample]:
    """Samples from in-memory arrays, e.g. a napari Image layer and its Labels layer.

    2D images (HxW, HxWx3, HxWxC) give one sample; a stack (image ZxHxW or ZxHxWxC with
    labels ZxHxW) gives one sample per slice, named ``name[z=k]``; with ``skip_empty``
    slices without any label are left out. Every nonzero label value is one object.

    Raises:
      SampleError: shapes that do not match.
    """
    img, lab = np.asarray(image), np.asarray(labels)
    if lab.ndim == 2:
        return [Sample.from_arrays(name, img, lab, instances="labels", dataset=dataset)]
    if lab.ndim != 3 or img.shape[:3] != lab.shape:
        raise SampleError(
            f"{name}: labels of shape {lab.shape} do not match the image's shape {img.shape} "
            f"(expected HxW labels, or ZxHxW labels for a ZxHxW[xC] stack)"
        )
    out = []
    for z in range(lab.shape[0]):
        if skip_empty and not lab[z].any():
            continue
        out.append(
            Sample.from_arrays(
                f"{name}[z={z}]", img[z], lab[z], instances="labels", dataset=dataset
            )
        )
    return out


def object_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted nonzero values of a label map."""
    ids = np.unique(labels)
    return ids[ids != 0]


# ------------------------------------------------------------------------ files
def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _read_array(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except ValueError as exc:
        raise SampleError(str(exc)) from exc


def _shape_of(path: Path) -> tuple[int, ...]:
    """Array shape from the file header (cheap; no pixel decoding)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tf:
            return tuple(tf.series[0].shape)
    from PIL import Image

    with Image.open(path) as im:
        bands = len(im.getbands())
        return (im.height, im.width) if bands == 1 else (im.height, im.width, bands)


def _stack_depth(image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> int | None:
    """Number of slices when image and mask are a 3D stack (ZxHxW[xC] / ZxHxW), else None."""
    if len(mask_shape) == 3 and mask_shape[-1] not in (3, 4) and image_shape[:3] == mask_shape:
        return mask_shape[0]
    return None


def _file_pair_samples(
    image_path: Path,
    mask_path: Path,
    *,
    instances: Instances,
    dataset: Dataset,
    name: str,
) -> list[Sample]:
    """Samples of one image file and its mask file (several for a 3D stack)."""
    try:
        ishape, mshape = _shape_of(image_path), _shape_of(mask_path)
    except Exception as exc:  # noqa: BLE001 - any header error is a bad file
        dataset.skip(f"{image_path} + {mask_path}", f"unreadable ({exc})")
        return []
    depth = _stack_depth(ishape, mshape)
    if depth is None and ishape[:2] != mshape[:2]:
        dataset.skip(
            f"{image_path} + {mask_path}",
            f"image shape {ishape} does not match mask shape {mshape}",
        )
        return []
    if depth is None:

        def load() -> tuple[np.ndarray, np.ndarray]:
            return _pair(
                _read_array(image_path), _read_array(mask_path), instances=instances, what=name
            )

        return [Sample(name=name, load=load, dataset=dataset.name)]

    def load_slice(z: int) -> tuple[np.ndarray, np.ndarray]:
        return _pair(
            _read_array(image_path)[z],
            _read_array(mask_path)[z],
            instances=instances,
            what=f"{name}[z={z}]",
        )

    return [
        Sample(name=f"{name}[z={z}]", load=lambda z=z: load_slice(z), dataset=dataset.name)
        for z in range(depth)
    ]


def _mask_stem_index(mask_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(mask_dir.iterdir()) if _is_image_file(p)}


def _find_mask(
    image: Path, masks: dict[str, Path], *, same_dir: bool, suffixes: Sequence[str]
) -> Path | None:
    for suffix in suffixes:
        cand = masks.get(image.stem + suffix)
        if cand is None or cand == image:
            continue
        return cand
    return None


def _looks_like_mask(p: Path, stems: set[str], suffixes: Sequence[str]) -> bool:
    for suffix in suffixes:
        if suffix and p.stem.endswith(suffix) and p.stem[: -len(suffix)] in stems:
            return True
    return False


def read_folder(
    images: str | Path,
    masks: str | Path | None = None,
    *,
    instances: Instances = "auto",
    name: str | None = None,
    suffixes: Sequence[str] = MASK_SUFFIXES,
) -> Dataset:
    """Image/mask pairs matched by file stem.

    Arguments:
      images: the image folder, or a folder holding ``images/`` (``image/``, ``im/``) and
        ``masks/`` (``labels/``, ``label/``, ``gt/``) subfolders.
      masks: the mask folder; default: the sibling subfolder found as above, else
        ``images`` itself (then ``a.jpg`` pairs with ``a.png`` and ``a.tif`` with
        ``a_labels.tif``).
      instances: how masks become objects (module docstring).
      suffixes: mask stems tried for image ``a``: ``a``, ``a_mask``, ``a_labels`` ...
    """
    root = Path(images)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    image_dir = root
    mask_dir = Path(masks) if masks is not None else None
    if mask_dir is None:
        sub_i = next((root / n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), None)
        sub_m = next((root / n for n in MASK_DIR_NAMES if (root / n).is_dir()), None)
        if sub_i is not None and sub_m is not None:
            image_dir, mask_dir = sub_i, sub_m
        elif sub_m is not None:
            mask_dir = sub_m
        else:
            mask_dir = root
    if not mask_dir.is_dir():
        raise DatasetError(f"{mask_dir}: no such mask folder")
    ds = Dataset(name=name or root.name)
    same_dir = image_dir.resolve() == mask_dir.resolve()
    mask_index = _mask_stem_index(mask_dir)
    files = [p for p in sorted(image_dir.iterdir()) if _is_image_file(p)]
    stems = {p.stem for p in files}
    if same_dir:
        # a mask shares its image's stem (a.jpg + a.png) or carries a suffix (a_labels.tif)
        jpg_stems = {p.stem for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
        candidates = []
        for p in files:
            if _looks_like_mask(p, stems, suffixes):
                continue
            if p.suffix.lower() not in (".jpg", ".jpeg") and p.stem in jpg_stems:
                continue  # the mask of a.jpg
            candidates.append(p)
        mask_index = {p.stem: p for p in files if p.suffix.lower() not in (".jpg", ".jpeg")}
        files = candidates
    for img in files:
        mask = _find_mask(img, mask_index, same_dir=same_dir, suffixes=suffixes)
        if mask is None:
            ds.skip(
                str(img),
                f"no mask found in {mask_dir} (tried stems {img.stem}{{{','.join(suffixes)}}})",
            )
            continue
        ds.samples += _file_pair_samples(
            img, mask, instances=instances, dataset=ds, name=f"{ds.name}/{img.stem}"
        )
    if not ds.samples and not ds.skipped:
        raise DatasetError(f"{image_dir}: no images found ({', '.join(IMAGE_EXTS)})")
    return ds


def read_napari(folder: str | Path, *, name: str | None = None) -> Dataset:
    """napari Labels layers saved as TIFF next to their images.

    ``cells.tif`` (2D, RGB or a ZxHxW stack) pairs with ``cells_labels.tif`` (also
    ``cells.labels.tif``, ``cells_label.tif``, ``cells_mask.tif``); every label value is one
    object, stacks are split into slices.
    """
    return read_folder(
        folder,
        folder,
        instances="labels",
        name=name,
        suffixes=("_labels", ".labels", "_label", "_mask", "_masks"),
    )


# ------------------------------------------------------------------------ HQSeg-44K
#: the SAM-HQ training script's dataset dicts (paths relative to its ``data`` folder)
HQSEG_TRAIN: tuple[tuple[str, str, str, str, str], ...] = (
    ("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt", ".jpg", ".png"),
    (
        "ThinObject5k-TR",
        "thin_object_detection/ThinObject5K/images_train",
        "thin_object_detection/ThinObject5K/masks_train",
        ".jpg",
        ".png",
    ),
    ("FSS", "cascade_psp/fss_all", "cascade_psp/fss_all", ".jpg", ".png"),
    ("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR", ".jpg", ".png"),
    ("DUTS-TE", "cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE", ".jpg", ".png"),
    ("ECSSD", "cascade_psp/ecssd", "cascade_psp/ecssd", ".jpg", ".png"),
    ("MSRA10K", "cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K", ".jpg", ".png"),
)
HQSEG_VAL: tuple[tuple[str, str, str, str, str], ...] = (
    ("DIS5K-VD", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt", ".jpg", ".png"),
    (
        "COIFT",
        "thin_object_detection/COIFT/images",
        "thin_object_detection/COIFT/masks",
        ".jpg",
        ".png",
    ),
    (
        "HRSOD",
        "thin_object_detection/HRSOD/images",
        "thin_object_detection/HRSOD/masks_max255",
        ".jpg",
        ".png",
    ),
    (
        "ThinObject5k-TE",
        "thin_object_detection/ThinObject5K/images_test",
        "thin_object_detection/ThinObject5K/masks_test",
        ".jpg",
        ".png",
    ),
)


def read_hqseg(
    root: str | Path,
    split: Literal["train", "val"] = "train",
    *,
    subsets: Iterable[str] | None = None,
) -> list[Dataset]:
    """HQSeg-44K as SAM-HQ lays it out under ``root`` (its ``data`` folder).

    Returns one :class:`Dataset` per subset (train: DIS5K-TR, ThinObject5k-TR, FSS, DUTS-TR,
    DUTS-TE, ECSSD, MSRA10K; val: DIS5K-VD, COIFT, HRSOD, ThinObject5k-TE). Images are
    ``<im_dir>/<stem>.jpg`` with masks ``<gt_dir>/<stem>.png`` (one object per image).
    Missing subsets are reported in the returned datasets' ``skipped`` lists; when none
    exists at all a :class:`DatasetError` names what was expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected the HQSeg-44K data folder)")
    table = {"train": HQSEG_TRAIN, "val": HQSEG_VAL}.get(split)
    if table is None:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    wanted = set(subsets) if subsets is not None else None
    out: list[Dataset] = []
    for name, im_dir, gt_dir, im_ext, gt_ext in table:
        if wanted is not None and name not in wanted:
            continue
        ds = Dataset(name=name)
        idir, gdir = root / im_dir, root / gt_dir
        if not idir.is_dir() or not gdir.is_dir():
            ds.skip(name, f"missing folder {idir if not idir.is_dir() else gdir}")
            out.append(ds)
            continue
        for img in sorted(idir.glob(f"*{im_ext}")):
            gt = gdir / f"{img.stem}{gt_ext}"
            if not gt.is_file():
                ds.skip(str(img), f"no mask {gt}")
                continue
            ds.samples += _file_pair_samples(
                img, gt, instances="binary", dataset=ds, name=f"{name}/{img.stem}"
            )
        out.append(ds)
    if not any(ds.samples for ds in out):
        expected = ", ".join(f"{n}: {i}" for n, i, *_ in table)
        raise DatasetError(f"{root}: no HQSeg-44K {split} images found (expected {expected})")
    return out


# ------------------------------------------------------------------------ Label Studio
def _resolve_ls_path(url: str, *, export_dir: Path, image_root: Path | None) -> Path | None:
    """A local file for a Label Studio task image URL, or None."""
    if url.startswith("data:"):
        return None
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return None
    query = urllib.parse.parse_qs(parsed.query)
    candidates: list[Path] = []
    if "d" in query:  # /data/local-files/?d=relative/path (local storage)
        rel = Path(urllib.parse.unquote(query["d"][0]))
        candidates += [rel] + ([image_root / rel] if image_root else [])
    path = urllib.parse.unquote(parsed.path)
    if path:
        p = Path(path)
        candidates.append(p)
        parts = p.parts
        # /data/upload/<project>/<file>: relative to LS's media folder
        if len(parts) > 2 and parts[1] == "data" and parts[2] == "upload":
            rel = Path(*parts[3:])
            if image_root:
                candidates += [image_root / rel, image_root / "upload" / rel, image_root / p.name]
        if image_root:
            candidates.append(image_root / p.name)
        candidates += [export_dir / p.name, export_dir / Path(*parts[1:]) if len(parts) > 1 else p]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _decode_data_url(url: str) -> np.ndarray:
    try:
        payload = url.split(",", 1)[1]
        buf = np.frombuffer(base64.b64decode(payload), np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # noqa: BLE001
        raise SampleError(f"undecodable data URL ({exc})") from exc
    if img is None:
        raise SampleError("undecodable data URL")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def labelstudio_task_labels(
    task: dict[str, Any], *, labels: Iterable[str] | None = None, use_predictions: bool = False
) -> tuple[np.ndarray | None, list[str], tuple[int, int] | None]:
    """The brush regions of a task's newest non-cancelled annotation as a label map.

    Returns ``(labels HxW int32 or None when the task has no brush region, region label
    names in label order, (height, width))``. Overlapping regions: later ones win.
    ``labels`` keeps only regions with one of these label names.
    """
    keep = set(labels) if labels is not None else None
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns and use_predictions:
        anns = list(task.get("predictions") or [])
    if not anns:
        return None, [], None
    ann = max(
        anns,
        key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
    )
    out: np.ndarray | None = None
    names: list[str] = []
    size: tuple[int, int] | None = None
    for region in ann.get("result") or []:
        if not lsformat.is_brush_region(region):
            continue
        value = region.get("value") or {}
        if value.get("format", "rle") != "rle" or "rle" not in value:
            continue
        names_r = lsformat.region_labels(region)
        if keep is not None and not (set(names_r) & keep):
            continue
        try:
            m = lsformat.region_mask(region)
        except lsformat.FormatError as exc:
            raise SampleError(str(exc)) from None
        h, w = m.shape
        if size is not None and size != (h, w):
            raise SampleError(f"regions of different sizes {size} and {(h, w)}")
        size = (h, w)
        if out is None:
            out = np.zeros((h, w), np.int32)
        names.append(names_r[0] if names_r else "")
        out[m] = len(names)
    return out, names, size


def labelstudio_samples(
    tasks: Sequence[dict[str, Any]],
    load_image: Callable[[dict[str, Any]], np.ndarray],
    *,
    labels: Iterable[str] | None = None,
    name: str = "labelstudio",
    check: Callable[[dict[str, Any]], None] | None = None,
) -> Dataset:
    """Samples from Label Studio task dicts (an export, or tasks a webhook received).

    ``load_image(task)`` returns the task's image array (called when the sample is loaded);
    ``check(task)`` may raise :class:`SampleError` up front (e.g. image not found). Tasks
    without brush regions are left out silently, bad ones are reported.
    """
    ds = Dataset(name=name)
    for task in tasks:
        tid = task.get("id", "?")
        what = f"task {tid}"
        try:
            lab, _, size = labelstudio_task_labels(task, labels=labels)
        except SampleError as exc:
            ds.skip(what, str(exc))
            continue
        if lab is None:
            continue
        if not object_ids(lab).size:
            ds.skip(what, "brush regions are empty")
            continue
        if check is not None:
            try:
                check(task)
            except SampleError as exc:
                ds.skip(what, str(exc))
                continue

        def load(task: dict = task, lab: np.ndarray = lab, what: str = what):
            try:
                img = load_image(task)
            except SampleError:
                raise
            except Exception as exc:  # noqa: BLE001 - any loader failure is a bad sample
                raise SampleError(f"{what}: cannot load image ({exc})") from exc
            return _pair(img, lab, instances="labels", what=what)

        ds.samples.append(Sample(name=f"{name}/task{tid}", load=load, dataset=name))
    return ds


def _task_image_url(task: dict[str, Any], image_key: str | None) -> str:
    data = task.get("data") or {}
    if image_key:
        url = data.get(image_key)
    else:
        url = next(
            (v for k, v in data.items() if isinstance(v, str) and k in ("image", "img")), None
        )
        if url is None:
            url = next((v for v in data.values() if isinstance(v, str)), None)
    if not isinstance(url, str) or not url:
        raise SampleError(f"no image URL in task data (keys {sorted(data)})")
    return url


def read_labelstudio(
    export: str | Path,
    *,
    image_root: str | Path | None = None,
    image_key: str | None = None,
    labels: Iterable[str] | None = None,
) -> Dataset:
    """A Label Studio JSON export (``Export -> JSON``) with brush regions.

    Every brush region of a task's newest annotation is one object. Images are found from
    the task's data URL: ``/data/upload/<project>/<file>`` under ``image_root`` (Label
    Studio's media folder), ``/data/local-files/?d=<path>`` (local storage, relative to
    ``image_root``), absolute paths, or next to the export. Tasks whose image cannot be found
    locally (e.g. cloud URLs) are reported and skipped.
    """
    export = Path(export)
    try:
        tasks = json.loads(export.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{export}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{export}: not a Label Studio JSON export ({exc})") from exc
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DatasetError(f"{export}: expected a JSON list of tasks")
    root = Path(image_root) if image_root is not None else None
    name = re.sub(r"\W+", "_", export.stem)

    def load_image(task: dict[str, Any]) -> np.ndarray:
        url = _task_image_url(task, image_key)
        if url.startswith("data:"):
            return _decode_data_url(url)
        path = _resolve_ls_path(url, export_dir=export.parent, image_root=root)
        if path is None:
            hint = "" if root else " (pass the Label Studio media folder as image root)"
            raise SampleError(f"image {url!r} not found locally{hint}")
        return _read_array(path)

    def check(task: dict[str, Any]) -> None:
        url = _task_image_url(task, image_key)
        if not url.startswith("data:") and (
            _resolve_ls_path(url, export_dir=export.parent, image_root=root) is None
        ):
            hint = "" if root else " (pass the Label Studio media folder as image root)"
            raise SampleError(f"image {url!r} not found locally{hint}")

    ds = labelstudio_samples(tasks, load_image, labels=labels, name=name, check=check)
    if not ds.samples and not ds.skipped:
        raise DatasetError(f"{export}: no task has brush annotations")
    return ds


# ------------------------------------------------------------------------ dispatch
_NUMBER = re.compile(r"^(\d+)")


def parse_selection(text: str) -> Callable[[int], bool]:
    """A file selection by the number a file's stem starts with (``12.png``, ``004_ab.png``).

    ``0-19`` or ``0-15,18``: those numbers; ``%5=4``: numbers that are 4 modulo 5;
    ``%5=0,1,2``: 0, 1 or 2 modulo 5. Raises :class:`DatasetError` for anything else.
    """
    text = text.strip()
    m = re.fullmatch(r"%(\d+)=(\d+(?:,\d+)*)", text)
    if m:
        mod = int(m.group(1))
        if mod < 1:
            raise DatasetError(f"selection {text!r}: the modulus must be at least 1")
        rest = {int(v) for v in m.group(2).split(",")}
        return lambda n: n % mod in rest
    if re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        spans = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            spans.append((int(lo), int(hi or lo)))
        return lambda n: any(lo <= n <= hi for lo, hi in spans)
    raise DatasetError(
        f"selection {text!r}: use number ranges like 0-19 or 0-15,18, or a residue like %5=4 "
        f"or %5=0,1,2 (on the number a file name starts with)"
    )


def select_samples(ds: Dataset, selection: str) -> Dataset:
    """The samples of ``ds`` whose file stem starts with a selected number (see
    :func:`parse_selection`); samples without a leading number are left out."""
    keep = parse_selection(selection)
    out = Dataset(name=f"{ds.name}@{selection}", skipped=list(ds.skipped))
    for sample in ds.samples:
        stem = sample.name.rsplit("/", 1)[-1]
        m = _NUMBER.match(stem)
        if m and keep(int(m.group(1))):
            out.samples.append(
                Sample(name=sample.name, load=sample.load, dataset=sample.dataset or ds.name)
            )
    if not out.samples:
        raise DatasetError(f"{ds.name}: no file matches the selection {selection!r}")
    return out


def read_source(
    spec: str, *, split: Literal["train", "val"] = "train", image_root: str | None = None
) -> list[Dataset]:
    """Datasets from a command-line spec ``[kind:]path[@selection]``.

    Kinds: ``folder`` (default for folders), ``labels`` (a folder whose masks are instance
    label maps, every value one object), ``hqseg``, ``labelstudio`` (default for ``.json``
    files), ``napari``, ``components`` (a folder whose mask foreground's connected
    components are the objects, e.g. ``components:/data/isbi2012-em``).

    ``@selection`` keeps the files whose name starts with a selected number
    (:func:`parse_selection`): ``components:../shared/data/isbi2012-em@0-19`` is the ISBI
    training split, ``labels:../shared/data/dsb2018-nuclei@%5=4`` the nuclei test split.
    """
    kind, _, path = spec.partition(":") if re.match(r"^[a-z]+:", spec) else ("", "", spec)
    path, at, selection = path.rpartition("@") if "@" in path else (path, "", "")
    p = Path(path)
    if not kind:
        kind = "labelstudio" if p.suffix.lower() == ".json" else "folder"
    if kind == "folder":
        out = [read_folder(p)]
    elif kind == "labels":
        out = [read_folder(p, instances="labels")]
    elif kind == "components":
        out = [read_folder(p, instances="components")]
    elif kind == "napari":
        out = [read_napari(p)]
    elif kind == "hqseg":
        out = read_hqseg(p, split)
    elif kind == "labelstudio":
        out = [read_labelstudio(p, image_root=image_root)]
    else:
        raise DatasetError(
            f"unknown data kind {kind!r} in {spec!r}; use folder:, labels:, components:, "
            f"napari:, hqseg: or labelstudio:"
        )
    if at:
        out = [select_samples(ds, selection) for ds in out]
    return out
