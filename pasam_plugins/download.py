"""Download registry checkpoints (``model/registry.json``) into a local cache.

- Cache directory: ``cache_dir`` argument, else ``$PASAM_CACHE_DIR``, else ``~/.cache/pasam``.
- The file is streamed into a temporary file in the cache directory (with a tqdm progress
  bar on stderr), checked, then atomically renamed; an interrupted or failed download never
  leaves a file under the final name.
- SHA-256 verification against the registry; a mismatch deletes the temporary file and
  raises :class:`DownloadError`. Entries without a published digest are downloaded but
  reported as *not verified* (:attr:`DownloadResult.verified` is False).
- A file that is already in the cache is reused when it is verified (a small ``.verified``
  marker records the digest, size and mtime so that multi-GB files are not re-hashed on
  every call); a cached file with the wrong digest is replaced.
- Network problems raise :class:`DownloadError` with a one-line message (no traceback in
  the CLI).
"""

import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_dir
from .registry import RegistryEntry, get_entry

CHUNK_BYTES = 1 << 20
USER_AGENT = "pasam-plugins-download/1"
MARKER_SUFFIX = ".verified"


class DownloadError(RuntimeError):
    """A download that failed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class DownloadResult:
    """Outcome of :func:`fetch`.

    Attributes:
      path: the file in the cache.
      verified: True when its SHA-256 matched the registry's published digest (or its MD5,
        for entries with only a published MD5).
      reused: True when the file was already cached (nothing downloaded).
      sha256: the file's digest when it was computed or recorded, else None.
    """

    path: Path
    verified: bool
    reused: bool
    sha256: str | None


def default_cache_dir() -> Path:
    """``$PASAM_CACHE_DIR`` if set, else ``~/.cache/pasam`` (:func:`pasam_plugins.paths.cache_dir`)."""
    return cache_dir()


def _digests(path: str | Path, *, md5: bool = False) -> tuple[str, str | None]:
    """(hex SHA-256, hex MD5 when asked) of a file, read once in 1 MiB chunks."""
    h = hashlib.sha256()
    h_md5 = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            if h_md5 is not None:
                h_md5.update(chunk)
    return h.hexdigest(), None if h_md5 is None else h_md5.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    return _digests(path)[0]


def _marker(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def _write_marker(path: Path, digest: str, md5: str | None = None) -> None:
    st = path.stat()
    data = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if md5 is not None:
        data["md5"] = md5
    _marker(path).write_text(json.dumps(data), encoding="utf-8")


def _marker_data(path: Path) -> dict:
    """The recorded digests if the marker still describes the file (same size and mtime)."""
    try:
        data = json.loads(_marker(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return {}
    if data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns:
        return {k: v for k, v in data.items() if k in ("sha256", "md5") and isinstance(v, str)}
    return {}


def _marker_digest(path: Path) -> str | None:
    """The recorded SHA-256 if the marker still describes the file."""
    return _marker_data(path).get("sha256")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _check_existing(path: Path, entry: RegistryEntry) -> DownloadResult | None:
    """Reuse ``path`` if it is good; delete it (and its marker) if it is known bad."""
    if not path.is_file():
        return None
    if not entry.verifiable:
        if entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
            path.unlink()
            return None
        return DownloadResult(path=path, verified=False, reused=True, sha256=None)
    if entry.sha256 is None:  # only an MD5 is published
        recorded = _marker_data(path)
        if recorded.get("md5") == entry.md5 and "sha256" in recorded:
            return DownloadResult(
                path=path, verified=True, reused=True, sha256=recorded["sha256"]
            )
        digest, md5 = _digests(path, md5=True)
        if md5 == entry.md5:
            _write_marker(path, digest, entry.md5)
            return DownloadResult(path=path, verified=True, reused=True, sha256=digest)
        path.unlink()
        _marker(path).unlink(missing_ok=True)
        return None
    digest = _marker_digest(path)
    if digest is None:
        digest = sha256_file(path)
    if digest == entry.sha256:
        if _marker_digest(path) != digest:
            _write_marker(path, digest)
        return DownloadResult(path=path, verified=True, reused=True, sha256=digest)
    path.unlink()
    _marker(path).unlink(missing_ok=True)
    return None


def _open(url: str, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - registry URLs
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        raise DownloadError(
            f"cannot reach {host} ({_reason(exc)}): check the network connection, or download "
            f"{url} by other means and pass the file with --checkpoint"
        ) from None


def fetch(
    entry: RegistryEntry,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> DownloadResult:
    """Download ``entry`` into the cache (or reuse the cached copy); see the module docstring.

    Arguments:
      entry: a registry entry (``pasam_plugins.registry.get_entry(name)``).
      cache_dir: target directory; default :func:`default_cache_dir`.
      progress: show a tqdm progress bar on stderr.
      timeout: seconds to wait for the server to connect or send data.

    Raises:
      DownloadError: not downloadable automatically, network failure, HTTP error, truncated
        transfer, size or checksum mismatch, not enough disk space.
    """
    if entry.bundled:  # shipped with the package: nothing to download, the digest is checked
        path = entry.bundled_path
        assert path is not None
        if not path.is_file():
            raise DownloadError(
                f"{entry.name} should be shipped with pasam-plugins at {path}, which is missing: "
                "reinstall the package"
            )
        digest = sha256_file(path)
        if entry.sha256 is not None and digest != entry.sha256:
            raise DownloadError(
                f"{entry.name}: the shipped file {path} does not match the registry's sha256 "
                "(modified or damaged): reinstall the package"
            )
        return DownloadResult(
            path=path, verified=entry.sha256 is not None, reused=True, sha256=digest
        )
    if not entry.direct_download:
        raise DownloadError(
            f"{entry.name} cannot be downloaded automatically: get {entry.filename} from "
            f"{entry.url} in a browser and pass it with --checkpoint"
            + (f" (it needs the {entry.requires} SAM checkpoint too)" if entry.requires else "")
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create cache directory {cache}: {_reason(exc)}") from None
    target = cache / entry.filename
    reused = _check_existing(target, entry)
    if reused is not None:
        return reused

    response = _open(entry.url, timeout)
    with response:
        length_header = response.headers.get("Content-Length")
        total = int(length_header) if length_header and length_header.isdigit() else None
        if entry.size_bytes is not None and total is not None and total != entry.size_bytes:
            raise DownloadError(
                f"{entry.url}: server announces {total} bytes but the registry expects "
                f"{entry.size_bytes}; not downloading"
            )
        expected = total if total is not None else entry.size_bytes
        if expected is not None:
            free = shutil.disk_usage(cache).free
            if free < expected:
                raise DownloadError(
                    f"not enough disk space in {cache}: {entry.filename} needs {expected} bytes, "
                    f"{free} free (set PASAM_CACHE_DIR to another directory)"
                )
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{entry.filename}.", suffix=".part")
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        h_md5 = hashlib.md5(usedforsecurity=False) if entry.sha256 is None and entry.md5 else None
        received = 0
        try:
            from tqdm.auto import tqdm

            with (
                os.fdopen(fd, "wb") as out,
                tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=entry.filename,
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (http.client.HTTPException, OSError) as exc:
                        raise DownloadError(
                            f"download of {entry.url} interrupted after {received} bytes "
                            f"({_reason(exc)}); run the command again"
                        ) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    if h_md5 is not None:
                        h_md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and received != expected:
                raise DownloadError(
                    f"download of {entry.url} incomplete: got {received} of {expected} bytes; "
                    f"run the command again"
                )
            digest = h.hexdigest()
            if entry.sha256 is not None and digest != entry.sha256:
                raise DownloadError(
                    f"checksum mismatch for {entry.filename} from {entry.url}: expected sha256 "
                    f"{entry.sha256}, got {digest}; the file was deleted"
                )
            md5 = h_md5.hexdigest() if h_md5 is not None else None
            if h_md5 is not None and md5 != entry.md5:
                raise DownloadError(
                    f"checksum mismatch for {entry.filename} from {entry.url}: expected md5 "
                    f"{entry.md5}, got {md5}; the file was deleted"
                )
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if entry.verifiable:
        _write_marker(target, digest, md5)
    return DownloadResult(path=target, verified=entry.verifiable, reused=False, sha256=digest)


def local_checkpoint(
    entry: RegistryEntry,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = False,
    timeout: float = 30.0,
) -> Path:
    """The local file of ``entry`` for front ends that load registry models (the napari
    panel): the shipped file of a bundled entry (e.g. the default model); the cached copy;
    for entries that cannot be downloaded automatically, the file the user put into the
    cache by hand; otherwise downloaded with :func:`fetch`.

    Raises:
      DownloadError: see :func:`fetch`; for a manual-download entry missing from the cache
        the message names the folder to put it in.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if entry.bundled:  # shipped with the package: fetch checks its digest, copies nothing
        return fetch(entry, cache, progress=progress, timeout=timeout).path
    if not entry.direct_download:
        placed = cache / entry.filename
        if placed.is_file():
            return placed
        raise DownloadError(
            f"{entry.name} cannot be downloaded automatically: get {entry.filename} from "
            f"{entry.url} in a browser and put it into {cache} (or choose the file itself)"
        )
    return fetch(entry, cache, progress=progress, timeout=timeout).path


def download(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    entry: RegistryEntry | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download the registry checkpoint ``name`` (e.g. ``"vit_b"``) and return its path.

    Arguments:
      name: registry name; ignored when ``entry`` is given.
      cache_dir: target directory; default ``$PASAM_CACHE_DIR`` or ``~/.cache/pasam``.
      entry: use this entry instead of looking ``name`` up (private mirrors, tests).
      progress: show a tqdm progress bar on stderr.
      timeout: network timeout in seconds.

    Raises:
      pasam_plugins.registry.RegistryError: unknown name.
      DownloadError: see :func:`fetch`. Use :func:`fetch` to learn whether the file was
        verified (entries without a published sha256 are not).
    """
    entry = entry if entry is not None else get_entry(name)
    return fetch(entry, cache_dir, progress=progress, timeout=timeout).path
