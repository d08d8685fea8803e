"""Several backend workers (or ranks of ``pasam embed``) share one disk embedding cache:
two processes that write and read the same keys at the same time never see a torn or
wrong entry, and leave only whole files behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pasam_plugins.cache import EmbeddingCache

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("cache_worker.py")


def test_two_processes_writing_the_same_keys_never_tear_an_entry(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from cache_worker import KEYS, entry_of
    finally:
        sys.path.pop(0)
    store, go = tmp_path / "embeddings", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(store), str(go), "6", str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    go.touch()  # both start together
    counts = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        counts.append(json.loads(out.strip().splitlines()[-1]))
    for c in counts:
        assert c["disk_writable"], c
        assert c["writes"] >= 3, c  # both really wrote, and read each other's keys
        assert c["wrong"] == 0 and c["rejected"] == 0, c  # no torn or wrong entry, ever
        assert c["hits"] >= 1, c
    # only the three whole entries are left (no temporary files), each the right one
    names = sorted(p.name for p in store.iterdir())
    assert names == sorted(f"{k}.safetensors" for k in KEYS), names
    fresh = EmbeddingCache(max_bytes=0, disk_dir=store)
    for k in KEYS:
        got, want = fresh.get(k), entry_of(k)
        assert got is not None and torch.equal(got.embedding, want.embedding)
        assert torch.equal(got.guide, want.guide) and got.original_size == want.original_size
    assert fresh.disk_rejected == 0
