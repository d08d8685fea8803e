"""Large images: tiled prediction measured (issue 16), all parts in one run.

Parts (``--parts``, comma-separated; default all):

- ``latency``: a 4096x4096 EM mosaic (ISBI 2012 sections 0-29 as 512-px blocks, written as a
  tiled TIFF and read lazily), time to the first mask after a click, cold (empty embedding
  store) vs with the clicked tiles' embeddings precomputed on disk (the ``pasam embed`` core
  calls: ``Segmenter.windows`` / ``embed_window``), for ViT-B-sized random weights (1024-px
  input, tiles 768 + 2 x 128) and for the shipped small base run tiled (256-px input, tiles
  192 + 2 x 32; every tile of the image precomputed).
- ``memory``: peak RSS (``resource.getrusage`` high-water mark of a fresh subprocess) of
  tiled prediction on a 16384x16384 uint16 image stored as a tiled TIFF (written tile by
  tile in a temporary folder), a box at 4 places, ViT-B-sized weights.
- ``shrunk``: the DSB 2018 nuclei TEST split (files with index 4 mod 5) cut into 256-px
  blocks and mosaicked into a 2048x2048 image; one box per nucleus; mIoU of the shipped
  ``pasam_micro`` run tiled (native 256-px tiles) vs shrunk (the whole mosaic resized to its
  256-px input), and zoomed (its own mode) for reference, by nucleus area.
- ``defaults``: the halo (tile = input - 2 halo) chosen on VALIDATION data (nuclei files
  with index 3 mod 5 mosaicked as above, EM sections 16-19 as a 2x2 mosaic): box mIoU, the
  share of boxes a grid tile holds (answered from a precomputed tile), and the tiles a
  4096x4096 image needs, per halo.

    OMP_NUM_THREADS=1 python benchmarks/large_images.py [--parts latency,memory,shrunk,defaults]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _splits import EM, NUCLEI  # noqa: E402

SHIPPED = ROOT / "model" / "weights" / "pasam_micro.safetensors"
SMALL_BASE = ROOT / "model" / "weights" / "pasam_micro_sam.safetensors"


# ------------------------------------------------------------------ images
def em_sections(indices) -> list[np.ndarray]:
    return [np.asarray(Image.open(EM / "image" / f"{i}.png").convert("L")) for i in indices]


def em_block(sections: list[np.ndarray], k: int) -> np.ndarray:
    """Block k of an endless EM mosaic: the sections in turn, mirrored differently each
    round (so neighbouring blocks are not copies)."""
    s = sections[k % len(sections)]
    r = (k // len(sections)) % 4
    return s[::-1] if r == 1 else s[:, ::-1] if r == 2 else s.T if r == 3 else s


def write_em_tiff(path: Path, side: int, *, uint16: bool, block: int = 512) -> None:
    """A side x side EM mosaic written as a tiled (BigTIFF) file block by block: never more
    than one block in memory."""
    import tifffile

    sections = em_sections(range(30))
    n = side // block

    def tiles():
        for k in range(n * n):
            b = em_block(sections, k)
            yield (b.astype(np.uint16) * 200 + 1000) if uint16 else b

    tifffile.imwrite(
        path,
        tiles(),
        shape=(side, side),
        dtype=np.uint16 if uint16 else np.uint8,
        tile=(block, block),
        bigtiff=True,
    )


def nuclei_files(rest: int) -> list[tuple[Path, Path]]:
    images = sorted((NUCLEI / "image").glob("*.png"))
    return [(p, NUCLEI / "label" / p.name) for i, p in enumerate(images) if i % 5 == rest]


def nuclei_mosaic(
    rest: int, cells: int, block: int = 256, upscale: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """cells x cells blocks of ``block`` px cut from the nuclei files with index ``rest``
    mod 5 (round robin over the files, each file's blocks in raster order), as one RGB
    image and one instance label map; nuclei cut by a block's border are dropped (0)."""
    per_file = []
    for img_p, lab_p in nuclei_files(rest):
        img = np.asarray(Image.open(img_p).convert("RGB"))
        lab = np.asarray(Image.open(lab_p)).astype(np.int64)
        h, w = lab.shape
        per_file.append(
            [
                (img[r : r + block, c : c + block], lab[r : r + block, c : c + block])
                for r in range(0, h - block + 1, block)
                for c in range(0, w - block + 1, block)
            ]
        )
    blocks = []
    k = 0
    while len(blocks) < cells * cells:
        file_blocks = per_file[k % len(per_file)]
        j = k // len(per_file)
        if j < len(file_blocks):
            blocks.append(file_blocks[j])
        elif all(k // len(per_file) >= len(f) for f in per_file):
            k = -1  # every block used: start over (mirrored below)
            per_file = [[(b[0][:, ::-1], b[1][:, ::-1]) for b in f] for f in per_file]
        k += 1
    side = cells * block
    image = np.zeros((side, side, 3), np.uint8)
    labels = np.zeros((side, side), np.int64)
    next_id = 1
    for n, (img, lab) in enumerate(blocks):
        r, c = (n // cells) * block, (n % cells) * block
        image[r : r + block, c : c + block] = img
        cut = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
        for v in np.unique(lab):
            if v == 0 or v in cut:
                continue
            labels[r : r + block, c : c + block][lab == v] = next_id
            next_id += 1
    if upscale > 1:  # nuclei at the scale the zoom-trained model saw them in training
        import cv2

        big = (side * upscale, side * upscale)
        image = cv2.resize(image, big, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels.astype(np.int32), big, interpolation=cv2.INTER_NEAREST)
    return image, labels.astype(np.int64)


def objects(labels: np.ndarray, *, min_area: int, max_objects: int, seed: int = 0):
    """(id, tight box, area) of up to ``max_objects`` objects (a seeded random sample)."""
    from scipy import ndimage

    found = ndimage.find_objects(labels)
    out = []
    for i, sl in enumerate(found, start=1):
        if sl is None:
            continue
        area = int((labels[sl] == i).sum())
        if area < min_area:
            continue
        box = np.array([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1], float)
        out.append((i, box, area, sl))
    rng = np.random.default_rng(seed)
    if len(out) > max_objects:
        keep = sorted(rng.choice(len(out), max_objects, replace=False))
        out = [out[k] for k in keep]
    return out


def iou_of(mask: np.ndarray, labels: np.ndarray, i: int) -> float:
    gt = labels == i
    inter = np.logical_and(mask, gt).sum()
    union = np.logical_or(mask, gt).sum()
    return float(inter / union) if union else 1.0


# ------------------------------------------------------------------ models
def vit_b():
    from pasam_plugins.testing import make_test_model

    return make_test_model(seed=0, variant="vit_b")


def predictor(model, cache):
    from pasam_plugins.predictor import PASamPredictor

    # as the front ends run it
    return PASamPredictor(model, device="cpu", cache=cache, precision="auto", fast_encoder=True)


# ------------------------------------------------------------------ a. latency
def first_mask_times(model, tif: Path, clicks, store: Path, *, view: str) -> list[float]:
    """Seconds from opening the image to the mask of each click, each click in a fresh
    session (new predictor and memory cache; the disk store ``store`` as it is)."""
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.segment import Segmenter
    from pasam_plugins.tiling import open_image

    times = []
    for x, y in clicks:
        seg = Segmenter(
            predictor(model, EmbeddingCache(max_bytes=256 << 20, disk_dir=store)), view=view
        )
        t0 = time.perf_counter()
        seg.set_image(open_image(tif))
        assert seg.mode == "tiled"
        obj = seg.segment(points=[[x, y]], labels=[1])
        times.append(time.perf_counter() - t0)
        assert obj.mask.shape == (4096, 4096)
    return times


def precompute(model, tif: Path, store: Path, *, view: str, clicks=None) -> tuple[int, float]:
    """The ``pasam embed`` core calls: every tile (or the tiles the clicks fall on) into
    ``store``. Returns (tiles embedded, seconds)."""
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.segment import Segmenter
    from pasam_plugins.tiling import open_image

    seg = Segmenter(
        predictor(model, EmbeddingCache(max_bytes=256 << 20, disk_dir=store)), view=view
    )
    t0 = time.perf_counter()
    seg.set_image(open_image(tif))
    windows = seg.windows()
    if clicks is not None:
        assert seg.grid is not None
        lo = [np.array([x, y], float) for x, y in clicks]
        windows = [seg.grid.best_window(p, p)[0] for p in lo]
    ran = sum(seg.embed_window(w) for w in windows)
    return ran, time.perf_counter() - t0


def part_latency(tmp: Path) -> None:
    from pasam_plugins.checkpoint import load_model

    tif = tmp / "em4096.tif"
    write_em_tiff(tif, 4096, uint16=False)
    clicks = [(700, 900), (2300, 1500), (3900, 3700)]
    print("\n## a. time to the first mask after a click, 4096x4096 EM mosaic (tiled TIFF)")
    for name, model, view, only_clicked in (
        ("ViT-B-sized random weights (1024-px input)", vit_b(), "auto", True),
        (
            "small base pasam_micro_sam, view=tiled (256-px input)",
            load_model(SMALL_BASE),
            "tiled",
            False,
        ),
    ):
        cold_store, warm_store = tmp / f"cold-{view}", tmp / f"warm-{view}"
        cold = first_mask_times(model, tif, clicks, cold_store, view=view)
        ran, secs = precompute(
            model, tif, warm_store, view=view, clicks=clicks if only_clicked else None
        )
        warm = first_mask_times(model, tif, clicks, warm_store, view=view)
        what = "the clicked tiles" if only_clicked else "every tile"
        print(f"{name}:")
        print(
            f"  precomputed {what}: {ran} tile embeddings in {secs:.1f} s ({secs / ran:.3f} s/tile)"
        )
        print(
            f"  cold store:   first mask {statistics.median(cold):.3f} s (median of {len(cold)}: "
            + ", ".join(f"{t:.3f}" for t in cold)
            + ")"
        )
        print(
            f"  precomputed:  first mask {statistics.median(warm):.3f} s (median of {len(warm)}: "
            + ", ".join(f"{t:.3f}" for t in warm)
            + ")"
        )
        print(f"  cold / precomputed = {statistics.median(cold) / statistics.median(warm):.1f}x")


# ------------------------------------------------------------------ b. memory
def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(tif: str) -> None:
    """Runs in a fresh process: prints one JSON line of RSS figures."""
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.segment import Segmenter
    from pasam_plugins.tiling import open_image

    model = vit_b()
    seg = Segmenter(predictor(model, EmbeddingCache(max_bytes=256 << 20)))
    seg.set_image(np.zeros((64, 64, 3), np.uint8))  # warm up the encoder's buffers
    stages = {"model loaded": (rss_now_mb(), rss_peak_mb())}
    seg.set_image(open_image(tif))
    stages["image opened (levels sampled)"] = (rss_now_mb(), rss_peak_mb())
    results = []
    boxes = [
        (1000, 1200, 1060, 1270),
        (8000, 8100, 8050, 8180),
        (15000, 3000, 15080, 3050),
        (4000, 15500, 4100, 15600),
    ]
    t0 = time.perf_counter()
    for k, b in enumerate(boxes, 1):
        results.append(seg.segment(box=b))
        stages[f"after box {k} (results kept)"] = (rss_now_mb(), rss_peak_mb())
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "stages": stages,
                "encoder_runs": seg.predictor.encoder_runs,
                "cache_mb": seg.predictor.cache.nbytes / 2**20,
                "cache_entries": len(seg.predictor.cache),
                "grid": [seg.grid.rows, seg.grid.cols, seg.grid.window_size],
                "seconds": secs,
                "mask_bytes": int(results[0].mask.nbytes),
                "uncertainty_bytes": int(results[0].uncertainty.nbytes),
            }
        )
    )


def part_memory(tmp: Path) -> None:
    side = 16384
    tif = tmp / "em16k_uint16.tif"
    t0 = time.perf_counter()
    write_em_tiff(tif, side, uint16=True)
    print(
        f"\n## b. peak memory, {side}x{side} uint16 tiled TIFF "
        f"({tif.stat().st_size / 2**20:.0f} MiB on disk, written in {time.perf_counter() - t0:.0f} s)"
    )
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(tif)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    rep = json.loads(out.strip().splitlines()[-1])
    whole_u16 = side * side * 2 / 2**20
    whole_rgb = side * side * 3 / 2**20
    print(
        f"whole image: {whole_u16:.0f} MiB as uint16, {whole_rgb:.0f} MiB as 8-bit RGB; "
        f"grid {rep['grid'][0]}x{rep['grid'][1]} tiles of {rep['grid'][2]} px"
    )
    print(
        f"4 boxes in {rep['seconds']:.1f} s, {rep['encoder_runs']} encoder runs, embedding cache "
        f"{rep['cache_mb']:.1f} MiB in {rep['cache_entries']} entries"
    )
    print(
        f"each result holds a full-frame mask ({rep['mask_bytes'] / 2**20:.0f} MiB bool) and "
        f"uncertainty ({rep['uncertainty_bytes'] / 2**20:.0f} MiB float32, virtual: "
        "pages outside the tile window are never written)"
    )
    base = rep["stages"]["model loaded"][1]
    for stage, (now, peak) in rep["stages"].items():
        print(
            f"  {stage:32s} RSS {now:7.0f} MiB   peak {peak:7.0f} MiB   peak - model {peak - base:6.0f} MiB"
        )


# ------------------------------------------------------------------ c. tiled vs shrunk
def box_mious(seg, image, labels, objs) -> np.ndarray:
    seg.set_image(image)
    ious = []
    for i, box, _area, _sl in objs:
        ious.append(iou_of(seg.segment(box=box).mask, labels, i))
    return np.array(ious)


def by_area(ious: np.ndarray, areas: np.ndarray, bins) -> str:
    parts = []
    for lo, hi in bins:
        sel = (areas >= lo) & (areas < hi)
        if sel.any():
            parts.append(
                f"{lo}-{hi if hi < 10**9 else ''} px: {100 * ious[sel].mean():5.1f} (n={sel.sum()})"
            )
    return "; ".join(parts)


def part_shrunk(max_objects: int) -> None:
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.segment import Segmenter

    model = load_model(SHIPPED)
    for cells, upscale in ((8, 1), (4, 4)):
        image, labels = nuclei_mosaic(4, cells, upscale=upscale)
        objs = objects(labels, min_area=10 * upscale**2, max_objects=max_objects)
        areas = np.array([a for _, _, a, _ in objs]) // upscale**2
        print(
            f"\n## c. tiled vs shrunk, DSB 2018 nuclei TEST split (index 4 mod 5): {cells}x{cells} "
            f"blocks of 256 px, upscaled {upscale}x -> {image.shape[1]}x{image.shape[0]}, "
            f"{len(objs)} nuclei (median area {int(np.median(areas))} px before upscaling), "
            "one box each, pasam_micro"
        )
        bins = ((10, 100), (100, 300), (300, 10**9))
        res = {}
        for view in ("tiled", "whole", "zoom"):
            seg = Segmenter(predictor(model, EmbeddingCache(max_bytes=256 << 20)), view=view)
            t0 = time.perf_counter()
            ious = box_mious(seg, image, labels, objs)
            res[view] = ious
            label = {
                "tiled": "tiled (native 256-px tiles)",
                "whole": "shrunk (whole mosaic -> 256 px)",
                "zoom": "zoomed (the model's own mode)",
            }[view]
            print(
                f"  {label:34s} mIoU {100 * ious.mean():5.1f}  [area before upscaling "
                f"{by_area(ious, areas, bins)}]  ({time.perf_counter() - t0:.0f} s)"
            )
        d = res["tiled"] - res["whole"]
        print(
            f"  tiled - shrunk: {100 * d.mean():+.1f} mIoU points; tiled better on "
            f"{(d > 0).mean() * 100:.0f}% of nuclei"
        )


# ------------------------------------------------------------------ d. defaults
def part_defaults(max_objects: int, halos, wanted) -> None:
    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.segment import Segmenter
    from pasam_plugins.tiling import TileGrid

    model = load_model(SHIPPED)
    n = model.img_size
    nuc_img, nuc_lab = nuclei_mosaic(3, 8)
    up_img, up_lab = nuclei_mosaic(3, 4, upscale=4)
    from pasam_plugins.train.datasets import read_source

    pairs = [sample.load() for ds in read_source(f"components:{EM}@16-19") for sample in ds]
    assert len(pairs) == 4
    em_img = np.zeros((1024, 1024, 3), np.uint8)
    em_lab = np.zeros((1024, 1024), np.int64)
    next_id = 1
    for k, (img, lab) in enumerate(pairs):
        r, c = (k // 2) * 512, (k % 2) * 512
        em_img[r : r + 512, c : c + 512] = img
        for v in np.unique(lab):
            if v == 0:
                continue
            em_lab[r : r + 512, c : c + 512][lab == v] = next_id
            next_id += 1
    sets = {
        "nuclei val (index 3 mod 5, 2048 px mosaic)": (nuc_img, nuc_lab, 10),
        "nuclei val upscaled 4x (4x4 blocks, 4096 px mosaic)": (up_img, up_lab, 160),
        "EM val (sections 16-19, 1024 px mosaic)": (em_img, em_lab, 30),
    }
    print(f"\n## d. halo on VALIDATION data, pasam_micro tiled (tile = {n} - 2 halo), one box each")
    keys = dict(zip(("nuclei", "upscaled", "em"), sets, strict=True))
    for name, (img, lab, min_area) in sets.items():
        if name not in {keys[w] for w in wanted}:
            continue
        objs = objects(lab, min_area=min_area, max_objects=max_objects)
        print(f"{name}: {len(objs)} objects")
        for halo in halos:
            seg = Segmenter(
                predictor(model, EmbeddingCache(max_bytes=256 << 20)),
                view="tiled",
                tile=n - 2 * halo,
                halo=halo,
                tile_above=n,
            )
            seg.set_image(img)
            assert seg.grid is not None
            on_grid = np.mean([seg.grid.best_window(b[:2], b[2:])[1] >= 0 for _, b, _, _ in objs])
            t0 = time.perf_counter()
            ious = np.array([iou_of(seg.segment(box=b).mask, lab, i) for i, b, _, _ in objs])
            tiles = len(TileGrid(4096, 4096, tile=n - 2 * halo, halo=halo))
            print(
                f"  halo {halo:3d} (tile {n - 2 * halo:3d}): mIoU {100 * ious.mean():5.1f}, "
                f"boxes held by a grid tile {100 * on_grid:5.1f}%, encoder runs "
                f"{seg.predictor.encoder_runs:4d}, tiles for 4096x4096: {tiles:4d} "
                f"({time.perf_counter() - t0:.0f} s)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default="latency,memory,shrunk,defaults")
    ap.add_argument("--sets", default="nuclei,upscaled,em", help="validation sets of part d")
    ap.add_argument("--max-objects", type=int, default=400)
    ap.add_argument("--halos", default="0,16,32,48,64")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.memory_child:
        memory_child(args.memory_child)
        return
    parts = args.parts.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    with tempfile.TemporaryDirectory(prefix="pasam-large-") as d:
        tmp = Path(d)
        if "latency" in parts:
            part_latency(tmp)
        if "memory" in parts:
            part_memory(tmp)
    if "shrunk" in parts:
        part_shrunk(args.max_objects)
    if "defaults" in parts:
        part_defaults(
            args.max_objects, [int(h) for h in args.halos.split(",")], args.sets.split(",")
        )


if __name__ == "__main__":
    main()
