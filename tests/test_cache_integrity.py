"""The disk tier of the embedding cache is not trusted blindly: corrupted, edited or
mismatched files are deleted and recomputed (the masks stay right), a directory that cannot
be written degrades to memory with one warning, writes are fsynced, and temp files a crash
left behind are removed."""

import errno
import logging
import os
import time

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pasam_plugins import cache as cache_mod
from pasam_plugins.cache import EmbeddingCache
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.testing import make_test_model

POINT = np.array([[200.0, 180.0]])


@pytest.fixture(scope="module")
def model():
    return make_test_model(seed=0)


@pytest.fixture(scope="module")
def reference(model, em_section):
    """Masks and logits of a predictor without any disk cache."""
    p = PASamPredictor(model, device="cpu", cache=EmbeddingCache())
    p.set_image(em_section)
    return p.predict(point_coords=POINT, point_labels=np.array([1]), return_logits=True)


def predictor(model, cache_dir) -> PASamPredictor:
    return PASamPredictor(model, device="cpu", cache=EmbeddingCache(disk_dir=cache_dir))


def only_file(cache_dir):
    files = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    assert len(files) == 1, files
    return files[0]


def rewrite(path, mutate, *, fix_digest=True) -> None:
    """Load a cache file, change its tensors/metadata, recompute its digest (as a careful
    attacker or a buggy writer would) and save it back."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    mutate(tensors, meta)
    if fix_digest:
        meta["digest"] = cache_mod._digest(meta["key"], meta, tensors)
    save_file(tensors, str(path), metadata=meta)


def flip_byte(tensors, meta):  # (raw bytes are flipped in the test itself)
    pass


def nan_embedding(tensors, meta):
    tensors["embedding"][0, 0, 0, 0] = float("nan")


def edited_size(tensors, meta):
    h, w = map(int, meta["original_size"].split(","))
    meta["original_size"] = f"{h},{w + 7}"


def wrong_shape(tensors, meta):
    tensors["embedding"] = tensors["embedding"][:, :, :32, :32].contiguous()


def missing_guide(tensors, meta):
    del tensors["guide"]


def old_format(tensors, meta):
    for k in ("format", "key", "digest"):
        meta.pop(k)


@pytest.mark.parametrize(
    "mutate, fix_digest",
    [
        (flip_byte, False),
        (nan_embedding, False),
        (nan_embedding, True),
        (edited_size, False),
        (edited_size, True),
        (wrong_shape, True),
        (missing_guide, True),
        (old_format, False),
    ],
    ids=[
        "flipped byte",
        "NaN",
        "NaN with a valid digest",
        "edited original_size",
        "edited original_size with a valid digest",
        "wrong-shape embedding",
        "no guide",
        "file of the previous format",
    ],
)
def test_bad_cache_files_are_deleted_and_recomputed(
    model, em_section, reference, tmp_path, mutate, fix_digest
):
    first = predictor(model, tmp_path)
    first.set_image(em_section)
    path = only_file(tmp_path)
    if mutate is flip_byte:
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x10  # inside the tensor data
        path.write_bytes(bytes(data))
    else:
        rewrite(path, mutate, fix_digest=fix_digest)

    second = predictor(model, tmp_path)
    second.set_image(em_section)  # never an exception
    assert second.encoder_runs == 1, "the bad file must not be used"
    assert second.cache.disk_rejected == 1
    pred = second.predict(point_coords=POINT, point_labels=np.array([1]), return_logits=True)
    np.testing.assert_allclose(pred.masks, reference.masks, atol=1e-4)
    # the recomputed entry replaced the bad file: a third process reads it from disk
    third = predictor(model, tmp_path)
    third.set_image(em_section)
    assert third.encoder_runs == 0 and third.cache.disk_hits == 1
    assert third.cache.disk_rejected == 0


def test_a_good_file_is_used(model, em_section, reference, tmp_path):
    predictor(model, tmp_path).set_image(em_section)
    again = predictor(model, tmp_path)
    again.set_image(em_section)
    assert again.encoder_runs == 0 and again.cache.disk_rejected == 0
    pred = again.predict(point_coords=POINT, point_labels=np.array([1]), return_logits=True)
    np.testing.assert_allclose(pred.masks, reference.masks, atol=1e-5)


def test_an_entry_stored_under_another_key_is_refused(model, em_section, tmp_path):
    """A file copied to another image's name (same shapes, valid digest for its own key)."""
    p = predictor(model, tmp_path)
    p.set_image(em_section)
    path = only_file(tmp_path)
    other = em_section.copy()
    other[0, 0] ^= 1
    from pasam_plugins.cache import image_key
    from pasam_plugins.imageio import normalize_image

    other_key = f"{image_key(normalize_image(other))}-{p.model_signature}"
    path.rename(tmp_path / f"{other_key}.safetensors")
    q = predictor(model, tmp_path)
    q.set_image(other)
    assert q.encoder_runs == 1 and q.cache.disk_rejected == 1


# --------------------------------------------------------------------------- unwritable
def test_unwritable_cache_directory_degrades_to_memory_with_one_warning(
    model, em_section, tmp_path, caplog
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    caplog.set_level(logging.WARNING, logger="pasam_plugins.cache")
    cache = EmbeddingCache(disk_dir=blocker / "embeddings")  # cannot be created
    assert not cache.disk_writable
    assert "NOT writable" in cache.describe()
    p = PASamPredictor(model, device="cpu", cache=cache)
    p.set_image(em_section)
    p.set_image(em_section[:300])
    p.set_image(em_section)
    assert p.encoder_runs == 2  # the memory tier still works
    warnings = [r for r in caplog.records if r.name == "pasam_plugins.cache"]
    assert len(warnings) == 1 and "memory only" in warnings[0].getMessage()


def test_full_disk_at_write_time_degrades_to_memory_with_one_warning(
    model, em_section, tmp_path, caplog, monkeypatch
):
    cache = EmbeddingCache(disk_dir=tmp_path)
    assert cache.disk_writable
    calls = []

    def full(fd):
        calls.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "fsync", full)
    caplog.set_level(logging.WARNING, logger="pasam_plugins.cache")
    p = PASamPredictor(model, device="cpu", cache=cache)
    p.set_image(em_section)  # the write fails after the encoder ran: no exception
    p.set_image(em_section[:300])
    assert p.encoder_runs == 2 and not cache.disk_writable
    assert len(calls) == 1, "after the first failure the disk tier is off"
    assert list(tmp_path.iterdir()) == [], "no partial or temp file is left"
    warnings = [r for r in caplog.records if r.name == "pasam_plugins.cache"]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()


def test_writes_are_fsynced_before_the_rename(model, em_section, tmp_path, monkeypatch):
    cache = EmbeddingCache(disk_dir=tmp_path)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        cache_mod.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1]
    )
    monkeypatch.setattr(
        cache_mod.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    PASamPredictor(model, device="cpu", cache=cache).set_image(em_section)
    assert events[:2] == ["fsync", "replace"] and "fsync" in events[2:]  # file, then directory


def test_stale_temp_files_are_removed_at_start_up(tmp_path):
    stale = tmp_path / ".tmp-crashed.safetensors"
    fresh = tmp_path / ".tmp-writing-now.safetensors"
    unrelated = tmp_path / "notes.txt"
    for p in (stale, fresh, unrelated):
        p.write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(unrelated, (hour_ago, hour_ago))
    EmbeddingCache(disk_dir=tmp_path)
    assert not stale.exists()
    assert fresh.exists(), "another process may be writing it"
    assert unrelated.exists()


def test_oversized_cache_file_is_refused(model, em_section, tmp_path, monkeypatch):
    predictor(model, tmp_path).set_image(em_section)
    monkeypatch.setattr(cache_mod, "MAX_FILE_BYTES", 1000)
    p = predictor(model, tmp_path)
    p.set_image(em_section)
    assert p.encoder_runs == 1 and p.cache.disk_rejected == 1


def test_server_starts_with_an_unwritable_cache_and_says_so(
    tiny_checkpoint, tmp_path, monkeypatch, caplog
):
    import uvicorn

    from label_studio_backend.cli import run_server
    from label_studio_backend.config import Settings

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    caplog.set_level(logging.INFO)
    run_server(Settings(checkpoint=tiny_checkpoint, cache_dir=blocker), port=9999)
    assert served, "the server started"
    text = caplog.text
    assert "cannot load the model" not in text
    assert "NOT writable" in text and "memory" in text
