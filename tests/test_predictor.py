"""PASamPredictor on the image kinds users have, the embedding cache and device selection."""

import numpy as np
import pytest
import torch

from pasam_plugins.cache import CacheEntry, EmbeddingCache
from pasam_plugins.imageio import ImageError, normalize_image, read_image
from pasam_plugins.predictor import PASamPredictor, select_device
from pasam_plugins.testing import make_test_model


@pytest.fixture(scope="module")
def predictor():
    return PASamPredictor(make_test_model(seed=0), device="cpu")


def _check(pred, h, w):
    assert pred.masks.shape == (1, h, w) and pred.masks.dtype == bool
    assert pred.uncertainty.shape == (h, w) and pred.uncertainty.dtype == np.float32
    assert 0.0 <= pred.uncertainty.min() and pred.uncertainty.max() <= 1.0
    assert pred.mined_points.shape == (8, 2)
    assert (pred.mined_points[:, 0] >= 0).all() and (pred.mined_points[:, 0] <= w - 1).all()
    assert (pred.mined_points[:, 1] >= 0).all() and (pred.mined_points[:, 1] <= h - 1).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.integers(0, 256, (200, 333, 3), dtype=np.uint8),  # 8-bit RGB, non-square
        lambda rng: rng.integers(0, 65535, (301, 150), dtype=np.uint16),  # 16-bit grayscale, tall
        lambda rng: rng.integers(0, 256, (128, 128), dtype=np.uint8),  # 8-bit grayscale
        lambda rng: rng.integers(0, 4000, (160, 240, 4), dtype=np.uint16),  # 4-channel
        lambda rng: rng.normal(size=(90, 1100)).astype(np.float32),  # float, very wide
    ],
    ids=["rgb8", "gray16", "gray8", "4ch16", "float"],
)
def test_mask_and_uncertainty_have_the_image_shape(predictor, make):
    img = make(np.random.default_rng(0))
    h, w = img.shape[:2]
    predictor.set_image(img)
    assert predictor.original_size == (h, w)
    # prompts at the image borders
    _check(predictor.predict(point_coords=[[0, 0], [w - 1, h - 1]], point_labels=[1, 0], multimask_output=False), h, w)
    _check(predictor.predict(box=[0, 0, w - 1, h - 1], multimask_output=True), h, w)


def test_em_section_prediction_has_image_shape(predictor, em_section):
    predictor.set_image(em_section)
    pred = predictor.predict(point_coords=[[256, 256]], point_labels=[1], box=[200, 200, 320, 330])
    _check(pred, 512, 512)
    masks, scores, logits = pred  # unpacks like SamPredictor.predict
    assert logits.shape == (1, 256, 256) and scores.shape == (1,)


def test_mined_points_map_back_to_image_pixels(predictor):
    predictor.set_image(np.zeros((512, 256, 3), np.uint8))  # input 1024x512, scale 2
    idx = torch.tensor([[0, 63, 64 * 63, 64 * 64 - 1, 65, 66, 67, 68]])
    pts, labels = predictor._mined_to_pixels(idx)
    assert labels.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    np.testing.assert_allclose(pts[0, 0].numpy(), [4.0, 4.0])  # cell (0,0) centre = 8 px input
    np.testing.assert_allclose(pts[0, 1].numpy(), [255.0, 4.0])  # cell (0,63) lies in the padding: clipped
    np.testing.assert_allclose(pts[0, 2].numpy(), [4.0, 508.0])


def test_cache_hit_does_not_run_the_encoder(em_section):
    model = make_test_model(seed=0)
    calls = []
    model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    cache = EmbeddingCache()
    pred = PASamPredictor(model, device="cpu", cache=cache)
    pred.set_image(em_section)
    first = pred.predict(box=[100, 100, 300, 300])
    pred.set_image(em_section[::-1].copy())
    pred.set_image(em_section)
    assert len(calls) == 2 and pred.encoder_runs == 2 and cache.hits == 1
    again = pred.predict(box=[100, 100, 300, 300])
    np.testing.assert_array_equal(first.low_res_logits, again.low_res_logits)
    # another predictor with other weights sharing the cache must not get these entries
    other = PASamPredictor(make_test_model(seed=1), device="cpu", cache=cache)
    assert other.model_signature != pred.model_signature
    other.set_image(em_section)
    assert other.encoder_runs == 1


def test_disk_cache_survives_a_restart(tmp_path, em_section):
    cache_dir = tmp_path / "emb"
    p1 = PASamPredictor(make_test_model(seed=0), device="cpu", cache=EmbeddingCache(disk_dir=cache_dir))
    p1.set_image(em_section)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".tmp")
    p2 = PASamPredictor(make_test_model(seed=0), device="cpu", cache=EmbeddingCache(disk_dir=cache_dir))
    p2.set_image(em_section)
    assert p2.encoder_runs == 0 and p2.cache.disk_hits == 1
    torch.testing.assert_close(p1.features, p2.features)
    torch.testing.assert_close(p1.guide, p2.guide)
    files[0].write_bytes(b"garbage")  # a corrupt file is a miss, not a crash
    p3 = PASamPredictor(make_test_model(seed=0), device="cpu", cache=EmbeddingCache(disk_dir=cache_dir))
    p3.set_image(em_section)
    assert p3.encoder_runs == 1


def test_cache_is_bounded_in_bytes():
    def entry():
        return CacheEntry(torch.zeros(1, 256, 64, 64), torch.zeros(1, 256, 64, 64), (10, 10), (1024, 1024))

    size = entry().nbytes
    cache = EmbeddingCache(max_bytes=3 * size)
    for k in "abcd":
        cache.put(k, entry())
    assert len(cache) == 3 and cache.nbytes <= 3 * size
    assert cache.get("a") is None and cache.get("d") is not None
    cache.get("b")  # b becomes most recent; c is evicted next
    cache.put("e", entry())
    assert cache.get("c") is None and cache.get("b") is not None


def test_bgr_input_is_flipped(predictor):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor.set_image(img)
    a = predictor.get_image_embedding().clone()
    predictor.set_image(img[..., ::-1].copy(), image_format="BGR")
    torch.testing.assert_close(predictor.get_image_embedding(), a)


def test_predict_without_image_and_bad_prompts(predictor):
    fresh = PASamPredictor(predictor.model, device="cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=[0, 0, 5, 5])
    predictor.set_image(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict(point_coords=[[1, 1]])
    with pytest.raises(ValueError, match="2 point coordinates but 1 labels"):
        predictor.predict(point_coords=[[1, 1], [2, 2]], point_labels=[1])


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_device_auto_selection_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device(None) == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")  # an explicit choice wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device(None) == torch.device("cpu")


def test_bf16_autocast_runs_the_decoder_and_keeps_output_contracts():
    """bf16 autocast (the CUDA option, exercised here through CPU autocast) goes through every
    decoder branch (token-space attention, mining, banded mask head); outputs keep their
    float32 contracts and agree with float32 up to bf16 rounding. The embedding signature,
    part of every cache key, differs from float32's, so a shared cache keeps their embeddings
    apart. (The encoder is segment_anything's; bf16 on a CPU without bf16 units takes ~30 s
    for it, so the float32 embedding is handed over instead.)"""
    model = make_test_model(seed=0)
    fp32 = PASamPredictor(model, device="cpu")
    bf16 = PASamPredictor(model, device="cpu", autocast_bf16=True)
    assert bf16.autocast_bf16 and bf16.embedding_signature != fp32.embedding_signature
    img = np.random.default_rng(3).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    img[40:150, 60:200] = 230
    fp32.set_image(img)
    bf16.set_embedding(fp32.features, img.shape[:2], guide=fp32.guide)
    prompts = dict(point_coords=[[120, 90], [30, 30]], point_labels=[1, 0], box=[50, 30, 210, 160])
    ref = fp32.predict(**prompts, multimask_output=False)
    out = bf16.predict(**prompts, multimask_output=False)
    _check(out, 200, 260)
    assert out.low_res_logits.dtype == np.float32
    scale = np.abs(ref.low_res_logits).max()
    assert np.abs(out.low_res_logits - ref.low_res_logits).max() < 0.1 * scale
    assert np.abs(out.uncertainty - ref.uncertainty).max() < 0.1
    assert (out.masks == ref.masks).mean() > 0.9
    boxes = torch.tensor([[10.0, 20.0, 500.0, 600.0]]).repeat(5, 1)
    batch = bf16.predict_torch(None, None, boxes, None, True)
    assert batch.decoder.masks.dtype == torch.bfloat16  # autocast was in effect
    assert batch.masks.shape == (5, 1, 200, 260) and batch.uncertainty.dtype == torch.float32


# ---------------------------------------------------------------- normalization


def test_uint8_rgb_passes_unchanged_and_gray_is_replicated():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(normalize_image(rgb), rgb)
    gray = rgb[..., 0]
    out = normalize_image(gray)
    assert out.shape == (5, 7, 3) and (out == gray[..., None]).all()
    np.testing.assert_array_equal(normalize_image(np.dstack([rgb, np.full((5, 7), 9, np.uint8)])), rgb)


def test_16bit_percentile_scaling_per_channel():
    ramp = np.arange(1000, dtype=np.uint16).reshape(10, 100) * 60
    out = normalize_image(ramp, percentiles=(0, 100))
    assert out.dtype == np.uint8 and out[..., 0].min() == 0 and out[..., 0].max() == 255
    lo, hi = np.percentile(ramp, (1, 99.8))
    mid = normalize_image(ramp)[..., 0]
    assert mid[0, 0] == 0 and mid[-1, -1] == 255
    v = ramp[5, 50]
    assert abs(int(mid[5, 50]) - round((v - lo) * 255 / (hi - lo))) <= 1
    assert (normalize_image(np.full((4, 4), 7.5)) == 0).all()  # constant image: no division by 0


def test_channel_selection():
    img = np.zeros((4, 4, 5), np.uint16)
    img[..., 3] = np.arange(16).reshape(4, 4)
    out = normalize_image(img, channel=3, percentiles=(0, 100))
    assert out[..., 0].max() == 255 and (out[..., 0] == out[..., 2]).all()
    with pytest.raises(ImageError, match="channel 7 does not exist: the image has 5 channels"):
        normalize_image(img, channel=7)
    with pytest.raises(ImageError, match="HxW or HxWxC"):
        normalize_image(np.zeros((2, 3, 4, 5)))


def test_read_image_16bit_tiff_and_errors(tmp_path):
    import tifffile

    arr = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), arr)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(tmp_path / "b.png")
    with pytest.raises(ImageError, match="no such image"):
        read_image(tmp_path / "c.png")
