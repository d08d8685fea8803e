"""Large images: tile geometry, lazy reading with whole-image contrast, tiled prediction."""

import numpy as np
import pytest

from pasam_plugins.imageio import normalize_image
from pasam_plugins.metrics import mask_iou
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import Segmenter
from pasam_plugins.testing import make_test_model
from pasam_plugins.tiling import ImageSource, TileGrid, chunk_sample
from pasam_plugins.zoom import Window


@pytest.mark.parametrize(
    ("h", "w", "tile", "halo"),
    [
        (1000, 1000, 192, 32),
        (701, 333, 192, 32),
        (100, 90, 192, 32),
        (257, 4000, 100, 7),
        (1, 1, 5, 0),
    ],
)
def test_tile_grid_covers_the_image_with_windows_inside_it(h, w, tile, halo):
    grid = TileGrid(h, w, tile=tile, halo=halo)
    covered = np.zeros((h, w), int)
    for i, j in grid:
        win = grid.window(i, j)
        assert win.size == tile + 2 * halo
        # windows stay inside the image where the image is larger than a window
        if w >= win.size:
            assert 0 <= win.x0 and win.x0 + win.size <= w
        else:
            assert win.x0 == 0
        if h >= win.size:
            assert 0 <= win.y0 and win.y0 + win.size <= h
        core = (slice(i * tile, min(h, (i + 1) * tile)), slice(j * tile, min(w, (j + 1) * tile)))
        covered[core] += 1
        # the core lies inside its window with the halo around it (where the image allows)
        r0, r1, c0, c1 = win.pixel_bounds(h, w)
        assert (
            r0 <= core[0].start
            and core[0].stop <= r1
            and c0 <= core[1].start
            and core[1].stop <= c1
        )
    assert (covered == 1).all()  # every pixel belongs to exactly one core
    assert len(grid) == grid.rows * grid.cols == -(-h // tile) * -(-w // tile)


def test_best_window_holds_a_box_across_a_core_border():
    grid = TileGrid(1000, 1000, tile=192, halo=32)
    window, margin = grid.best_window(np.array([180.0, 50.0]), np.array([210.0, 80.0]))
    assert margin >= 0 and window.contains(np.array([[180, 50], [210, 80]]))
    _, margin = grid.best_window(np.array([0.0, 0.0]), np.array([400.0, 400.0]))
    assert margin < 0  # larger than any window


class CountingArray:
    """An array-like that records how many pixels were read (lazy sources must read little)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.pixels_read = 0

    def __getitem__(self, key):
        out = self.data[key]
        self.pixels_read += int(np.prod(out.shape[:2]))
        return out


def test_image_source_matches_normalize_image_and_reads_lazily():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (600, 500, 2), dtype=np.uint16)
    img[100:200, 100:300, 1] = 60000
    src = ImageSource(img, channel=1)
    full = normalize_image(img, channel=1)
    np.testing.assert_array_equal(src.read(0, 600, 0, 500), full)  # exact levels when small
    np.testing.assert_array_equal(src.read(50, 120, 400, 499), full[50:120, 400:499])
    big = CountingArray(rng.integers(0, 65535, (6000, 7000), dtype=np.uint16))
    lazy = ImageSource(big)
    levels_read = big.pixels_read
    assert levels_read <= 4_100_000  # the contrast comes from a subsample, not all 42 Mpx
    crop = lazy.crop(Window(3000.0, 2000.0, 256.0), 256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    assert big.pixels_read - levels_read <= 258 * 258  # the window (and a 1-px margin) only


def test_chunk_sample_reads_few_chunks_and_gives_the_image_levels():
    """A strided subsample of a chunked (dask) array reads every chunk; the chunk sample
    reads at most 3 x 3 chunks, and its contrast levels are close to the whole image's."""
    da = pytest.importorskip("dask.array")
    read = []

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        rng = np.random.default_rng(r0 * 7 + c0)
        out = rng.normal(1000 + 0.05 * r0, 150, (r1 - r0, c1 - c0)).clip(0).astype(np.uint16)
        read.append(out.size)
        return out

    lazy = da.map_blocks(block, dtype=np.uint16, chunks=((500,) * 12, (500,) * 12))
    sample = chunk_sample(lazy)
    assert sum(read) <= 9 * 500 * 500 and len(read) <= 9
    assert sample.ndim == 2 and sample.shape[1] == 1 and sample.size == 9 * 500 * 500
    full = np.asarray(lazy)
    src = ImageSource(lazy, sample=sample)
    exact = ImageSource(full, sample=full).levels
    span = exact[0, 1] - exact[0, 0]
    np.testing.assert_allclose(src.levels, exact, atol=0.05 * span)
    # unchunked arrays: 3 x 3 squares of 512 px; a small image is sampled whole
    numpy_sample = chunk_sample(full)
    assert numpy_sample.shape == (9 * 512 * 512, 1)
    assert chunk_sample(full[:300, :200]).size == 300 * 200


def _straddling_image(h=700, w=640):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[150:260, 150:240] = (230, 200, 40)  # crosses the core border at x = 192 and y = 192
    return img


def test_tiled_prediction_of_an_object_across_tiles_equals_the_prediction_on_its_window():
    model = make_test_model(seed=4, variant="vit_tiny256")  # 256-px input: tiles 192 + 2 x 32
    image = _straddling_image()
    seg = Segmenter(PASamPredictor(model, device="cpu"))
    assert (seg.tile, seg.halo, seg.tile_above) == (192, 32, 512)
    seg.set_image(image)
    assert seg.mode == "tiled"
    box = np.array([150, 150, 239, 259])
    obj = seg.segment(box=box)
    win = obj.window
    assert win is not None and win.size == 256 and win.contains(box.reshape(2, 2))
    # the same object segmented by SAM's usual pipeline on that window cut out of the image
    r0, c0 = int(win.y0), int(win.x0)
    ref = PASamPredictor(model, device="cpu")
    ref.set_image(image[r0 : r0 + 256, c0 : c0 + 256])
    pred = ref.predict(box=box - np.array([c0, r0, c0, r0]), multimask_output=False)
    inside = obj.mask[r0 : r0 + 256, c0 : c0 + 256]
    assert mask_iou(inside, pred.masks[0]) >= 0.999  # stated tolerance: 0.1% of the object
    assert not obj.mask[:r0].any() and not obj.mask[:, :c0].any()  # nothing outside the window
    np.testing.assert_allclose(
        obj.uncertainty[r0 : r0 + 256, c0 : c0 + 256], pred.uncertainty, atol=1e-5
    )
    # a second prompt in the same tile reuses the cached tile embedding
    runs = seg.predictor.encoder_runs
    seg.segment(points=[[200, 200]], labels=[1])
    assert seg.predictor.encoder_runs - runs <= 1


def test_small_images_are_not_tiled_and_uint16_multichannel_tiles_work():
    model = make_test_model(seed=4, variant="vit_tiny256")
    seg = Segmenter(PASamPredictor(model, device="cpu"))
    seg.set_image(_straddling_image(300, 400))
    assert seg.mode == "whole"
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 3000, (900, 700, 3), dtype=np.uint16)
    stack[400:480, 300:360, 2] = 50000
    seg.set_image(stack, channel=2)
    assert seg.mode == "tiled" and seg.size == (900, 700)
    obj = seg.segment(box=[300, 400, 359, 479])
    assert obj.mask.shape == (900, 700) and obj.uncertainty.shape == (900, 700)
    assert obj.mined_points is not None and (obj.mined_points[:, 0] < 700).all()


def test_pasam_embed_precomputes_tiles_resumably_and_segmenting_then_runs_no_encoder(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from pasam_plugins.cache import EmbeddingCache
    from pasam_plugins.checkpoint import load_model
    from pasam_plugins.cli import app
    from pasam_plugins.testing import make_test_checkpoint

    ckpt = make_test_checkpoint(tmp_path / "m.safetensors", seed=2, variant="vit_tiny256")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_straddling_image(700, 640)).save(folder / "large.png")  # tiled: 4 x 4
    Image.fromarray(_straddling_image(300, 200)).save(folder / "small.png")  # whole
    store = tmp_path / "store"
    args = ["embed", str(folder), "-c", str(ckpt), "--cache-dir", str(store)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "17 embedding(s) computed, 0 already stored" in res.output
    files = sorted(store.glob("*.safetensors"))
    assert len(files) == 17
    files[0].unlink()  # an interrupted run: one missing
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "1 embedding(s) computed, 16 already stored" in res.output
    # the tools read the same store: no encoder run for a precomputed image (pasam embed and
    # the tools run the fast encoder in the same precision by default: auto)
    seg = Segmenter(
        PASamPredictor(
            load_model(ckpt),
            device="cpu",
            cache=EmbeddingCache(max_bytes=1 << 28, disk_dir=store),
            precision="auto",
            fast_encoder=True,
        )
    )
    seg.set_image(np.asarray(Image.open(folder / "large.png")))
    # an object across a core border that reaches less than the halo beyond it: a grid tile
    seg.segment(box=[170, 175, 215, 220])
    seg.segment(box=[560, 600, 620, 680])  # an edge tile
    seg.set_image(np.asarray(Image.open(folder / "small.png")))
    seg.segment(points=[[100, 100]], labels=[1])
    assert seg.predictor.encoder_runs == 0
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "nothing"), "-c", str(ckpt)])
    assert res.exit_code == 1 and "no such file or folder" in res.output


# ------------------------------------------------------------------ cache keys of tiles
def _key_image(h=700, w=640):
    """uint16, 2 channels, structured everywhere (no two tile windows alike)."""
    rng = np.random.default_rng(11)
    img = rng.integers(200, 3000, (h, w, 2), dtype=np.uint16)
    img[100:400, 150:500, 0] += 20000
    img[300:650, 50:300, 1] += 15000
    return img


def _tile_key(model, cache, image, i=1, j=1, *, channel=0, **options):
    """The embedding cache key of tile (i, j) and whether the encoder ran for it. Keyword
    options go to the predictor (precision, percentiles) or the Segmenter (tile, halo)."""
    pred_opts = {k: options.pop(k) for k in ("precision", "percentiles") if k in options}
    seg = Segmenter(PASamPredictor(model, device="cpu", cache=cache, **pred_opts), **options)
    seg.tile_above = 256  # tile these 700-px test images
    seg.set_image(image, channel=channel)
    assert seg.mode == "tiled" and seg.grid is not None
    ran = seg.embed_window(seg.grid.window(i, j))
    return seg.predictor.image_key, ran


def test_tile_cache_keys_hit_for_the_same_tile_and_differ_for_anything_that_changes_it(tmp_path):
    """Keys are the content hash of the normalized window fed to the encoder plus the model
    and precision signature: what changes the encoder's input or output changes the key."""
    from pasam_plugins.cache import EmbeddingCache

    model = make_test_model(seed=4, variant="vit_tiny256")
    cache = EmbeddingCache(max_bytes=1 << 28, disk_dir=tmp_path / "store")
    image = _key_image()
    key, ran = _tile_key(model, cache, image)
    assert ran and key.endswith(PASamPredictor(model, device="cpu").embedding_signature)
    # the same tile of the same image hits: in memory, in another session, and from disk
    hits = cache.hits
    assert _tile_key(model, cache, image) == (key, False) and cache.hits == hits + 1
    fresh = EmbeddingCache(max_bytes=1 << 28, disk_dir=tmp_path / "store")
    assert _tile_key(model, fresh, image) == (key, False) and fresh.disk_hits == 1
    # ... also when the image arrives as another array type (read lazily, same pixels)
    assert _tile_key(model, cache, CountingArray(image)) == (key, False)

    brighter = image.copy()
    brighter[:50, :50, 0] = 65535  # far from tile (1, 1): its pixels are unchanged,
    brighter[650:, 600:, 0] = 65535  # but the whole-image contrast levels move
    variants = {
        "another tile": _tile_key(model, cache, image, 1, 2),
        "another halo": _tile_key(model, cache, image, tile=192, halo=16),
        "another halo, same window size": _tile_key(model, cache, image, tile=224, halo=16),
        "another tile size": _tile_key(model, cache, image, tile=128, halo=32),
        "another channel": _tile_key(model, cache, image, channel=1),
        "other contrast percentiles": _tile_key(model, cache, image, percentiles=(1.0, 99.0)),
        "other whole-image levels": _tile_key(model, cache, brighter),
        "bf16 encoder": _tile_key(model, cache, image, precision="bf16"),
        "another model": _tile_key(make_test_model(seed=5, variant="vit_tiny256"), cache, image),
    }
    for what, (other, ran) in variants.items():
        assert other != key and ran, what  # a new key, and the encoder ran for it
    assert len({k for k, _ in variants.values()}) == len(variants)

    # a tile key is never a whole-image key: the whole image (shrunk to the input) of the
    # same pixels has its own key, unlike every tile's
    whole = Segmenter(PASamPredictor(model, device="cpu", cache=cache), view="whole")
    whole.set_image(image, channel=0)
    assert whole.mode == "whole"
    tiled = Segmenter(PASamPredictor(model, device="cpu", cache=cache), tile_above=256)
    tiled.set_image(image, channel=0)
    tile_keys = set()
    for window in tiled.windows():
        tiled.embed_window(window)
        tile_keys.add(tiled.predictor.image_key)
    assert len(tile_keys) == len(tiled.grid) == 16
    assert whole.predictor.image_key not in tile_keys | {k for k, _ in variants.values()}


# ------------------------------------------------------------------ view
def test_view_forces_tiled_or_whole_use_of_a_zoomed_model():
    from pasam_plugins.segment import ZoomSettings

    model = make_test_model(seed=4, variant="vit_tiny256")
    model.origin = model.origin.derived(metadata={"zoom": ZoomSettings().to_metadata()})
    image = _straddling_image(700, 640)
    pred = PASamPredictor(model, device="cpu")
    auto = Segmenter(pred)
    auto.set_image(image)
    assert auto.mode == "zoom"
    tiled = Segmenter(pred, view="tiled")
    tiled.set_image(image)
    assert tiled.mode == "tiled" and tiled.zoom is None
    obj = tiled.segment(box=[150, 150, 239, 259])
    assert obj.window is not None and obj.window.size == 256  # a native tile, not a zoom window
    tiled.set_image(image[:300, :400])
    assert tiled.mode == "whole"  # small images stay whole
    whole = Segmenter(pred, view="whole")
    whole.set_image(image)
    assert whole.mode == "whole" and whole.predictor.original_size == (700, 640)
    assert whole.segment(box=[150, 150, 239, 259]).window is None
    # a whole-image model used zoomed on request, with the default zoom settings
    plain = Segmenter(PASamPredictor(make_test_model(seed=4, variant="vit_tiny256"), device="cpu"))
    assert plain.zoom is None
    zoomed = Segmenter(plain.predictor, view="zoom")
    assert zoomed.zoom == ZoomSettings()
    zoomed.set_image(image)
    assert zoomed.mode == "zoom"
    with pytest.raises(ValueError, match="view must be one of"):
        Segmenter(pred, view="shrunk")
