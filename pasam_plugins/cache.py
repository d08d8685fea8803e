"""Embedding cache: in-memory LRU bounded in bytes, plus an optional directory on disk.

Keys combine a hash of the image content (the normalized 8-bit image fed to the encoder)
with the model signature (encoder + guide weights and guide mode), so a cached entry is
never served to another model.

The disk tier is not trusted blindly:

- a file is written to a temporary file, flushed to disk (``fsync``) and renamed, so a crash
  leaves either the old state or the whole new file; temporary files that a crash left behind
  are removed when a cache opens the directory (those older than ``STALE_TEMP_SECONDS``);
- every file carries its key, the image sizes and a BLAKE2b digest of all of them and of the
  tensor bytes; a file whose digest, key, sizes or values (NaN/inf) do not check out, or that
  the caller's ``validate`` refuses (the predictor checks the tensor shapes its model
  produces and the image size), is deleted and counts as a miss, so the embedding is
  recomputed;
- when the directory cannot be created or written (read-only, full disk), the cache logs one
  warning and keeps new entries in memory only; requests never fail because of the disk.
"""

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

logger = logging.getLogger(__name__)

#: temporary files older than this (seconds) are left over from a crash
STALE_TEMP_SECONDS = 600.0
#: version of the on-disk format; files of other versions are recomputed
DISK_FORMAT = "2"
#: larger files are not read (two float32 1x256x64x64 tensors take 8 MiB)
MAX_FILE_BYTES = 256 << 20

_TEMP_PREFIX = ".tmp-"
_SUFFIX = ".safetensors"


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


#: ``validate(entry) -> None or the reason it is unusable`` (e.g. wrong shape for the model)
Validator = Callable[[CacheEntry], str | None]


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (dtype, shape and bytes)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _digest(key: str, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(f"pasam-embedding-v{DISK_FORMAT}\0{key}\0".encode())
    for k in sorted(meta):
        if k != "digest":
            h.update(f"{k}={meta[k]}\0".encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def _size(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.isascii() and p.isdecimal() and len(p) <= 9 for p in parts):
        raise ValueError(f"bad size {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h < 1 or w < 1:
        raise ValueError(f"bad size {text!r}")
    return h, w


class EmbeddingCache:
    """Thread-safe LRU of :class:`CacheEntry`, bounded in bytes, with optional disk tier.

    Arguments:
      max_bytes (int): memory budget (default 1 GiB, ~128 ViT embeddings with guides).
      disk_dir (str or Path or None): directory for persistent entries (created if needed;
        when it cannot be, the cache warns once and works in memory only).

    Attributes:
      disk_writable (bool): False once writing to ``disk_dir`` failed (memory only since).
      disk_rejected (int): disk files refused by verification (deleted, recomputed).
    """

    def __init__(self, *, max_bytes: int = 1 << 30, disk_dir: str | Path | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.disk_writable = self.disk_dir is not None
        self._disk_warned = False
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        self.disk_rejected = 0
        if self.disk_dir is not None:
            try:
                self.disk_dir.mkdir(parents=True, exist_ok=True)
                self._probe_write()
            except OSError as e:
                self._disable_disk(f"cannot write there ({e})")
            else:
                self.remove_stale_temp_files()

    def _probe_write(self) -> None:
        """Create, fsync and delete a temporary file: finds a read-only directory or
        file system at start-up rather than at the first request."""
        assert self.disk_dir is not None
        fd, tmp = tempfile.mkstemp(dir=self.disk_dir, prefix=_TEMP_PREFIX, suffix=_SUFFIX)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            self._unlink(Path(tmp))

    def describe(self) -> str:
        """One line for start-up logs: the memory budget and the disk tier's state."""
        text = f"embedding cache: {self.max_bytes >> 20} MiB in memory"
        if self.disk_dir is None:
            return text + ", no disk tier (PASAM_CACHE_DIR not set)"
        if not self.disk_writable:
            return text + f"; disk tier {self.disk_dir} NOT writable: new embeddings stay in memory"
        try:
            n = sum(1 for _ in self.disk_dir.glob(f"[!.]*{_SUFFIX}"))
        except OSError:
            n = 0
        return text + f"; disk tier {self.disk_dir} ({n} entries, verified when read)"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}{_SUFFIX}"

    def get(self, key: str, *, validate: Validator | None = None) -> CacheEntry | None:
        """The entry for ``key`` from memory, else from disk (verified, then checked with
        ``validate``), else None (a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        if self.disk_dir is not None:
            entry = self._read_disk(key, validate)
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
        """Keep ``entry`` in memory and, when possible, on disk (a failed disk write only
        logs a warning, once, and turns the disk tier off)."""
        self._insert(key, entry)
        if self.disk_dir is not None and self.disk_writable:
            self._write_disk(key, entry)

    def discard(self, key: str) -> None:
        """Forget ``key`` in memory and on disk."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
        if self.disk_dir is not None:
            self._unlink(self._path(key))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def remove_stale_temp_files(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files a crashed writer left in ``disk_dir`` (those older than
        ``older_than`` seconds: another process may be writing the younger ones). Returns
        how many were removed."""
        if self.disk_dir is None:
            return 0
        now = time.time()
        removed = 0
        try:
            candidates = list(self.disk_dir.glob(f"{_TEMP_PREFIX}*{_SUFFIX}"))
        except OSError:
            return 0
        for p in candidates:
            try:
                if now - p.stat().st_mtime > older_than:
                    p.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            logger.info("removed %d stale temporary file(s) from %s", removed, self.disk_dir)
        return removed

    # ------------------------------------------------------------------ internals
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

    def _disable_disk(self, why: str) -> None:
        with self._lock:
            first = not self._disk_warned
            self._disk_warned = True
            self.disk_writable = False
        if first:
            logger.warning(
                "embedding cache %s: %s; new embeddings are kept in memory only",
                self.disk_dir,
                why,
            )

    def _write_disk(self, key: str, entry: CacheEntry) -> None:
        tensors = {"embedding": entry.embedding.detach().float().cpu().contiguous()}
        if entry.guide is not None:
            tensors["guide"] = entry.guide.detach().float().cpu().contiguous()
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            logger.warning("not writing embedding %s to disk: it holds NaN or inf values", key)
            return
        meta = {
            "format": DISK_FORMAT,
            "key": key,
            "original_size": ",".join(map(str, entry.original_size)),
            "input_size": ",".join(map(str, entry.input_size)),
        }
        meta["digest"] = _digest(key, meta, tensors)
        assert self.disk_dir is not None
        tmp = None
        try:
            data = save_bytes(tensors, metadata=meta)
            fd, tmp = tempfile.mkstemp(dir=self.disk_dir, prefix=_TEMP_PREFIX, suffix=_SUFFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(key))
            tmp = None
            self._fsync_dir()
        except OSError as e:
            self._disable_disk(f"cannot write {self._path(key).name}: {e}")
        finally:
            if tmp is not None:
                self._unlink(Path(tmp))

    def _fsync_dir(self) -> None:
        """Make the rename durable (best effort: not every platform can open a directory)."""
        try:
            fd = os.open(self.disk_dir, os.O_RDONLY)  # type: ignore[arg-type]
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    def _reject(self, path: Path, why: str) -> None:
        with self._lock:
            self.disk_rejected += 1
        logger.warning(
            "embedding cache file %s is unusable (%s): deleted, recomputing", path.name, why
        )
        self._unlink(path)

    def _read_disk(self, key: str, validate: Validator | None) -> CacheEntry | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if size > MAX_FILE_BYTES:
            self._reject(path, f"{size} bytes")
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            entry = self._parse(key, data)
        except Exception as e:  # noqa: BLE001 - any malformed file is a miss, never an error
            self._reject(path, str(e) or type(e).__name__)
            return None
        if validate is not None:
            why = validate(entry)
            if why:
                self._reject(path, why)
                return None
        return entry

    @staticmethod
    def _parse(key: str, data: bytes) -> CacheEntry:
        import json

        if len(data) < 8:
            raise ValueError("truncated file")
        header_len = int.from_bytes(data[:8], "little")
        if header_len > len(data) - 8:
            raise ValueError("truncated header")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        if meta.get("format") != DISK_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {DISK_FORMAT!r}")
        if meta.get("key") != key:
            raise ValueError("the file belongs to another key")
        tensors = load_bytes(data)
        if set(tensors) - {"embedding", "guide"} or "embedding" not in tensors:
            raise ValueError(f"unexpected tensors {sorted(tensors)}")
        if meta.get("digest") != _digest(key, meta, tensors):
            raise ValueError("digest mismatch (corrupted or edited)")
        for name, t in tensors.items():
            if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: not finite float32 values")
        return CacheEntry(
            tensors["embedding"],
            tensors.get("guide"),
            _size(meta.get("original_size", "")),
            _size(meta.get("input_size", "")),
        )
