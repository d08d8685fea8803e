"""One of several processes hammering one disk embedding cache (not a test module).

``python cache_worker.py DIR GO SECONDS SEED``: waits for the file GO, then for SECONDS
writes and reads the same few keys as the other workers through its own
:class:`EmbeddingCache` on DIR (no memory tier: every read is a disk read) and prints one
JSON line of counts. Each key's entry is fixed (as a real key fixes the image and the
model), so any read that returns something else is a wrong entry.
"""

import json
import sys
import time
from pathlib import Path

import torch

from pasam_plugins.cache import CacheEntry, EmbeddingCache

KEYS = [f"{i:040x}" for i in range(1, 4)]


def entry_of(key: str) -> CacheEntry:
    g = torch.Generator().manual_seed(int(key, 16))
    return CacheEntry(
        torch.randn(1, 256, 64, 64, generator=g),
        torch.randn(1, 256, 64, 64, generator=g),
        (300 + int(key, 16), 400),
        (768, 1024),
    )


def main(directory: Path, go: Path, seconds: float, seed: int) -> dict:
    expected = {k: entry_of(k) for k in KEYS}
    cache = EmbeddingCache(max_bytes=0, disk_dir=directory)  # max_bytes 0: disk only
    counts = {"writes": 0, "hits": 0, "misses": 0, "wrong": 0}
    while not go.exists():
        time.sleep(0.01)
    end = time.monotonic() + seconds
    i = seed
    while time.monotonic() < end:
        key = KEYS[i % len(KEYS)]
        cache.put(key, expected[key])
        counts["writes"] += 1
        other = KEYS[(i + 1) % len(KEYS)]
        got = cache.get(other)
        if got is None:
            counts["misses"] += 1
        else:
            want = expected[other]
            same = (
                torch.equal(got.embedding, want.embedding)
                and got.guide is not None
                and torch.equal(got.guide, want.guide)
                and got.original_size == want.original_size
                and got.input_size == want.input_size
            )
            counts["hits" if same else "wrong"] += 1
        i += 1
    counts["rejected"] = cache.disk_rejected
    counts["disk_writable"] = cache.disk_writable
    return counts


if __name__ == "__main__":
    d, go, seconds, seed = sys.argv[1:5]
    print(json.dumps(main(Path(d), Path(go), float(seconds), int(seed))))
