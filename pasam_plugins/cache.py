"""Embedding cache: in-memory LRU bounded in bytes, plus an optional directory on disk.

Keys combine a hash of the image content (the normalized 8-bit image fed to the encoder)
with the model signature (encoder + guide weights and guide mode), so a cached entry is
never served to another model. Disk files are written atomically (temp file + rename).
"""

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@dataclass
class CacheEntry:
    """What the predictor needs to skip the image encoder.

    Attributes:
      embedding: 1xCx64x64 image embedding.
      guide: 1xCx64x64 PA-SAM guide, or None without adapter.
      original_size: (H, W) of the image.
      input_size: (h, w) after ResizeLongestSide.
    """

    embedding: torch.Tensor
    guide: torch.Tensor | None
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        n = self.embedding.numel() * self.embedding.element_size()
        if self.guide is not None:
            n += self.guide.numel() * self.guide.element_size()
        return n

    def to(self, device: torch.device | str) -> "CacheEntry":
        return CacheEntry(
            self.embedding.to(device),
            None if self.guide is None else self.guide.to(device),
            self.original_size,
            self.input_size,
        )


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (dtype, shape and bytes)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of :class:`CacheEntry`, bounded in bytes, with optional disk tier.

    Arguments:
      max_bytes (int): memory budget (default 1 GiB, ~128 ViT embeddings with guides).
      disk_dir (str or Path or None): directory for persistent entries (created if needed).
    """

    def __init__(self, *, max_bytes: int = 1 << 30, disk_dir: str | Path | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}.safetensors"

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        if self.disk_dir is not None:
            entry = self._read_disk(key)
            if entry is not None:
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                self._insert(key, entry)
                return entry
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, entry: CacheEntry) -> None:
        self._insert(key, entry)
        if self.disk_dir is not None:
            self._write_disk(key, entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _insert(self, key: str, entry: CacheEntry) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def _write_disk(self, key: str, entry: CacheEntry) -> None:
        tensors = {"embedding": entry.embedding.detach().cpu().contiguous()}
        if entry.guide is not None:
            tensors["guide"] = entry.guide.detach().cpu().contiguous()
        meta = {
            "original_size": ",".join(map(str, entry.original_size)),
            "input_size": ",".join(map(str, entry.input_size)),
        }
        path = self._path(key)
        fd, tmp = tempfile.mkstemp(dir=self.disk_dir, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read_disk(self, key: str) -> CacheEntry | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            orig = tuple(int(v) for v in meta["original_size"].split(","))
            inp = tuple(int(v) for v in meta["input_size"].split(","))
        except Exception:  # noqa: BLE001 - a corrupt cache file is a miss, not an error
            path.unlink(missing_ok=True)
            return None
        return CacheEntry(tensors["embedding"], tensors.get("guide"), orig, inp)  # type: ignore[arg-type]
