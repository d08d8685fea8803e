"""Fetch and decode task images, safely.

Task image URLs come from Label Studio tasks, i.e. from users: the loader only ever

- reads ``/data/local-files/?d=<path>`` files from ``LOCAL_FILES_DOCUMENT_ROOT`` (paths that
  escape it are refused), or
- downloads from ``LABEL_STUDIO_URL`` (uploads, local-files storage, storage proxy and
  cloud-storage presign URLs, or absolute URLs on that same origin) with label-studio-sdk's
  ``get_local_path``, authenticated with a personal access token (a JWT refresh token,
  exchanged by label-studio-sdk at ``/api/token/refresh``) or a legacy token.

URL policy (:func:`url_origin`, one function for the task URL, every request and every
redirect hop): an absolute URL is refused before any parsing when it holds a backslash, a
control character, user info (``user@``), a non-ASCII or percent-encoded host or a port
outside 1..65535; what is left is parsed with urllib3's ``parse_url`` (the parser requests
connects with) and must agree with a plain split of the authority. Scheme, host and port
must then equal those of ``LABEL_STUDIO_URL`` exactly. Redirects are followed by hand (at
most 5), each hop checked the same way, so the ``Authorization`` header only ever goes to
that origin; proxies and ``.netrc`` from the environment are ignored, and the token
refresh follows no redirects either.

Limits: ``timeout`` is a total deadline per image (connect, headers, body, redirects and
the SDK's legacy-path retry together; a watchdog closes the connection when it passes),
``max_image_bytes`` stops the body, images larger than ``max_image_pixels`` are refused from
their header before decoding (also PIL's decompression-bomb limit, as 413), and only common
raster formats are decoded. 8/16-bit, grayscale, RGBA, palette and float images are
normalized to HxWx3 uint8 with :func:`pasam_plugins.imageio.normalize_image`.
"""

import errno
import logging
import os
import posixpath
import re
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import numpy as np
import requests
import urllib3
from requests.adapters import HTTPAdapter

from pasam_plugins.imageio import ImageError as CoreImageError
from pasam_plugins.imageio import ImageTooLarge, normalize_image
from pasam_plugins.imageio import decode_image as core_decode_image

from .errors import ImageError

logger = logging.getLogger(__name__)

_LS_PATH_PREFIXES = ("/data/", "data/", "/upload", "upload/", "/storage-data/", "storage-data/")
_CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
_MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: raster formats a task image may have (PIL would also open EPS through Ghostscript, ...)
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP", "PPM", "JPEG2000")

_SCHEME_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_HOST_PORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeURL(ValueError):
    """A URL the policy refuses; the message says why."""


@dataclass(frozen=True)
class Origin:
    """(scheme, host, port) of an http(s) URL, normalized (lower case, default port)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def url_origin(url: object) -> Origin:
    """The origin of an absolute http(s) URL, under the strict policy of this module.

    Raises:
      UnsafeURL: not a string, not http(s), a backslash or control character anywhere, user
        info, a host that is not plain ASCII letters/digits/dots/hyphens (or a bracketed
        IPv6 address), a port that is not 1..65535, or urllib3 (what requests connects
        with) reading another scheme, host or port than the plain split.
    """
    if not isinstance(url, str):
        raise UnsafeURL(f"not a string: {type(url).__name__}")
    if "\\" in url:
        raise UnsafeURL("it contains a backslash")
    if _CONTROL.search(url):
        raise UnsafeURL("it contains a control character")
    m = _SCHEME_AUTHORITY.match(url)
    if m is None:
        raise UnsafeURL("not an absolute http(s) URL")
    scheme, authority = m.group(1).lower(), m.group(2)
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURL(f"scheme {scheme!r} is not http or https")
    if "@" in authority:
        raise UnsafeURL("it carries user info ('user@host')")
    if not authority.isascii():
        raise UnsafeURL("its host is not ASCII")
    hp = _HOST_PORT.fullmatch(authority)
    if hp is None:
        raise UnsafeURL(f"invalid host or port {authority!r}")
    port = int(hp.group("port")) if hp.group("port") else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise UnsafeURL(f"port {port} is outside 1..65535")
    origin = Origin(scheme, hp.group("host").lower(), port)
    try:
        parsed = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError as e:
        raise UnsafeURL(f"cannot be parsed: {e}") from None
    seen = Origin(
        (parsed.scheme or "").lower(),
        (parsed.host or "").lower(),
        parsed.port or _DEFAULT_PORTS.get((parsed.scheme or "").lower(), 0),
    )
    if seen != origin or parsed.auth:
        raise UnsafeURL(f"parsers disagree about its host ({seen} vs {origin})")
    return origin


def _refused(url: str, reason: str, allowed: object) -> ImageError:
    return ImageError(
        f"refusing to fetch {url!r}: {reason}; images are only downloaded from "
        f"LABEL_STUDIO_URL ({allowed or 'not set'})",
        status_code=403,
    )


class _Deadline:
    """A total time limit for one image: a timer shuts down every socket opened for it
    when the time is up (a server dripping bytes cannot hold a worker longer; socket
    timeouts only bound the wait for each byte)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_active = threading.local()  # the _Deadline of the download running in this thread


def _register_socket(sock: socket.socket | None) -> None:
    deadline = getattr(_active, "deadline", None)
    if deadline is not None:
        deadline.add(sock)


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register_socket(self.sock)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register_socket(self.sock)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests adapter whose connections register their sockets with the active deadline."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _GuardedSession(requests.Session):
    """``requests.Session`` for label-studio-sdk's downloader: the configured origin only
    (every redirect hop checked with :func:`url_origin`), one total deadline, a byte limit.

    ``attempts`` records the outcome of every ``get`` (an HTTP status or the ImageError it
    raised), so that an error the SDK hides (its legacy-path retry re-raises the first
    error) can still be reported.
    """

    def __init__(
        self, *, origin: Origin, label_studio_url: str, timeout: float, max_bytes: int
    ) -> None:
        super().__init__()
        self.origin = origin
        self.label_studio_url = label_studio_url
        self.max_bytes = max_bytes
        self.deadline = _Deadline(timeout)
        self.trust_env = False  # never route through proxies or use .netrc from the environment
        adapter = _DeadlineAdapter(max_retries=0)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.attempts: list[int | ImageError] = []

    def close(self) -> None:
        self.deadline.cancel()
        super().close()

    def resolve_redirects(self, *args, **kwargs):  # type: ignore[override]
        """Nothing: redirects are followed by :meth:`get`, each hop checked (requests would
        otherwise prepare ``Response.next`` with its own URL parser)."""
        return iter(())

    def _check(self, url: str) -> None:
        try:
            origin = url_origin(url)
        except UnsafeURL as e:
            raise _refused(url, str(e), self.label_studio_url) from None
        if origin != self.origin:
            raise _refused(url, f"{origin} is another origin", self.label_studio_url)

    def _timed_out(self, url: str) -> ImageError:
        return ImageError(
            f"timed out downloading {url!r} (PASAM_DOWNLOAD_TIMEOUT={self.deadline.seconds:g} s)",
            status_code=504,
        )

    def get(self, url, **kwargs):  # type: ignore[override]
        try:
            r = self._get(url, **kwargs)
        except ImageError as e:
            self.attempts.append(e)
            raise
        self.attempts.append(r.status_code)
        return r

    def _get(self, url, **kwargs):
        for key in ("stream", "timeout", "allow_redirects", "proxies", "auth", "cert"):
            kwargs.pop(key, None)
        _active.deadline = self.deadline
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                self._check(url)  # before anything is sent, on every hop
                left = self.deadline.remaining()
                if left <= 0 or self.deadline.expired:
                    raise self._timed_out(url)
                try:
                    r = super().get(
                        url,
                        stream=True,
                        timeout=(min(5.0, left), left),
                        allow_redirects=False,
                        **kwargs,
                    )
                except requests.RequestException as e:
                    if self.deadline.expired or isinstance(e, requests.Timeout):
                        raise self._timed_out(url) from None
                    raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
                if r.is_redirect:
                    location = r.headers["location"]
                    r.close()
                    url = urljoin(url, location)
                    continue
                break
            else:
                raise ImageError(
                    f"too many redirects downloading the image {url!r}", status_code=502
                )
            return self._read(url, r)
        finally:
            _active.deadline = None

    def _read(self, url: str, r: requests.Response) -> requests.Response:
        if r.status_code >= 400:
            # the SDK's raise_for_status() turns this into HTTPError (and may retry the
            # legacy upload path); the body is not needed
            r.close()
            r._content = b""
            r._content_consumed = True
            return r
        length = r.headers.get("content-length")
        if length and length.isdigit() and len(length) < 20 and int(length) > self.max_bytes:
            r.close()
            raise _too_large(url, int(length), self.max_bytes)
        buf = bytearray()
        try:
            for chunk in r.iter_content(1 << 16):
                buf += chunk
                if len(buf) > self.max_bytes:
                    raise _too_large(url, len(buf), self.max_bytes)
                if self.deadline.expired:
                    raise self._timed_out(url)
        except requests.RequestException as e:
            if self.deadline.expired:
                raise self._timed_out(url) from None
            raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
        finally:
            r.close()
        if self.deadline.expired:  # the watchdog cut the body short
            raise self._timed_out(url)
        r._content = bytes(buf)
        r._content_consumed = True
        return r


def _too_large(what: str, size: int, limit: int) -> ImageError:
    return ImageError(
        f"image {what!r} is too large: {size} bytes > {limit} (PASAM_MAX_IMAGE_BYTES)",
        status_code=413,
    )


def decode_image(data: bytes, *, name: str, max_pixels: int) -> np.ndarray:
    """Decode image bytes to HxWx3 uint8 through the core's one decoder
    (:func:`pasam_plugins.imageio.decode_image`: EXIF orientation applied, as browsers show
    it; the size checked from the header before any pixel is decoded), then normalized.

    Raises:
      ImageError: not an image of a supported format (422) or more than ``max_pixels``
        pixels (413, also for PIL's decompression-bomb limit).
    """
    try:
        arr = core_decode_image(data, name=repr(name), max_pixels=max_pixels, formats=IMAGE_FORMATS)
    except ImageTooLarge as e:
        raise ImageError(f"{e} (PASAM_MAX_IMAGE_PIXELS is {max_pixels})", status_code=413) from None
    except CoreImageError as e:
        raise ImageError(str(e)) from None
    return _normalize(arr, name)


def _describe(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _normalize(arr: np.ndarray, name: str) -> np.ndarray:
    try:
        return normalize_image(arr)
    except Exception as e:
        raise ImageError(f"unsupported image {name!r}: {e}") from None


class ImageLoader:
    """Fetches task images from Label Studio or the local-files root; decoded images are kept
    in a small in-memory LRU (bounded in bytes), so repeated clicks on a task skip the
    download and decode.

    Arguments:
      label_studio_url (str or None): the only origin images are downloaded from.
      api_key (str or None): personal access token or legacy token.
      local_files_root (Path or None): ``LOCAL_FILES_DOCUMENT_ROOT``.
      max_bytes (int), max_pixels (int), timeout (float): limits.
      cache_bytes (int): budget of the decoded-image LRU.
    """

    def __init__(
        self,
        *,
        label_studio_url: str | None = None,
        api_key: str | None = None,
        local_files_root: str | Path | None = None,
        max_bytes: int = 128 << 20,
        max_pixels: int = 64_000_000,
        timeout: float = 30.0,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.origin: Origin | None = None
        if label_studio_url:
            label_studio_url = label_studio_url.strip().rstrip("/")
            try:
                self.origin = url_origin(label_studio_url)
            except UnsafeURL as e:
                raise ValueError(
                    f"LABEL_STUDIO_URL={label_studio_url!r} is not usable: {e} (expected "
                    "http(s)://host[:port], e.g. http://192.168.1.5:8080)"
                ) from None
        self.label_studio_url = label_studio_url or None
        self.api_key = api_key or None
        root = Path(local_files_root).resolve() if local_files_root else None
        self.local_files_root = root if root is not None and root != Path(root.anchor) else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_nbytes = 0
        self._lock = threading.Lock()
        self._client = None
        self._client_lock = threading.Lock()
        self.downloads = 0
        self.local_reads = 0

    # ------------------------------------------------------------------ public
    def load(
        self, url: object, *, task_id: int | None = None, fallback_token: str | None = None
    ) -> np.ndarray:
        """The image at a task's URL as HxWx3 uint8.

        Arguments:
          url: the task data value (``/data/local-files/?d=...``, ``/data/upload/...``,
            ``s3://...``, or an absolute URL on LABEL_STUDIO_URL).
          task_id (int or None): needed for cloud-storage URLs (presigned by Label Studio).
          fallback_token (str or None): token to use when no API key is configured (the one
            Label Studio sends in ``/setup``).

        Raises:
          ImageError: refused (403), not found (404), too large (413), undecodable (422),
            Label Studio errors (502) or timeouts (504).
        """
        if not isinstance(url, str) or not url.strip():
            raise ImageError(
                f"the task's image URL is empty or not a string: {url!r}", status_code=400
            )
        url = url.strip()
        local = self._local_path(url)
        if local is not None:
            try:
                st = local.stat()
                key = ("file", str(local), st.st_mtime_ns, st.st_size)
                cached = self._get(key)
                if cached is not None:
                    return cached
                if st.st_size > self.max_bytes:
                    raise _too_large(url, st.st_size, self.max_bytes)
                data = local.read_bytes()
            except OSError as e:
                raise _file_error(url, e) from None
            self.local_reads += 1
            img = decode_image(data, name=url, max_pixels=self.max_pixels)
            self._put(key, img)
            return img
        key = ("url", url)
        cached = self._get(key)
        if cached is not None:
            return cached
        data = self._download(url, task_id=task_id, fallback_token=fallback_token)
        img = decode_image(data, name=url, max_pixels=self.max_pixels)
        self._put(key, img)
        return img

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_nbytes = 0

    # ------------------------------------------------------------------ helpers
    def _get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            img = self._cache.get(key)
            if img is not None:
                self._cache.move_to_end(key)
            return img

    def _put(self, key: tuple, img: np.ndarray) -> None:
        if img.nbytes > self.cache_bytes:
            return
        img.setflags(write=False)
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cache_nbytes -= old.nbytes
            self._cache[key] = img
            self._cache_nbytes += img.nbytes
            while self._cache_nbytes > self.cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cache_nbytes -= dropped.nbytes

    def _local_path(self, url: str) -> Path | None:
        """The file for a ``/data/local-files/?d=`` URL under the local-files root, or None
        when the URL is not a local-files URL, no root is set, or the file is not there
        (then it is downloaded from Label Studio)."""
        parsed = _urlparse(url)
        if parsed.scheme or not parsed.path.rstrip("/").endswith("/data/local-files"):
            return None
        values = parse_qs(parsed.query, keep_blank_values=True).get("d")
        rel = values[-1] if values else ""
        if not rel:
            raise ImageError(f"local-files URL without a ?d= path: {url!r}", status_code=400)
        if _CONTROL.search(rel):
            raise ImageError(
                f"refusing {url!r}: the ?d= path contains a NUL or control character",
                status_code=400,
            )
        if self.local_files_root is None:
            return None
        norm = posixpath.normpath("/" + rel.replace("\\", "/")).lstrip("/")
        too_long = [part for part in norm.split("/") if len(os.fsencode(part)) > 255]
        if too_long or len(norm) > 4000:
            raise ImageError(
                f"refusing {url!r}: the ?d= path or one of its names is too long", status_code=400
            )
        try:
            path = (self.local_files_root / norm).resolve()
            if not path.is_relative_to(self.local_files_root):
                raise ImageError(
                    f"refusing {url!r}: the path leaves LOCAL_FILES_DOCUMENT_ROOT", status_code=403
                )
            if path.is_file():
                return path
        except OSError as e:
            raise _file_error(url, e) from None
        if self.label_studio_url is None:
            raise ImageError(
                f"image not found: {rel!r} is not under LOCAL_FILES_DOCUMENT_ROOT "
                f"({self.local_files_root}) and LABEL_STUDIO_URL is not set",
                status_code=404,
            )
        return None

    def _classify(self, url: str) -> None:
        """Refuse URLs that would make the backend contact anything but Label Studio (the
        same :func:`url_origin` check runs again on every request and redirect hop)."""
        if _CONTROL.search(url):
            raise ImageError(f"refusing {url!r}: it contains a control character", status_code=403)
        m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
        scheme = m.group(1).lower() if m else ""
        if scheme in ("http", "https"):
            try:
                origin = url_origin(url)
            except UnsafeURL as e:
                raise _refused(url, str(e), self.label_studio_url) from None
            if self.origin is None or origin != self.origin:
                raise _refused(url, f"{origin} is another origin", self.label_studio_url)
            return
        if scheme in _CLOUD_SCHEMES:
            if "\\" in url:
                raise ImageError(f"refusing {url!r}: it contains a backslash", status_code=403)
            _urlparse(url)
            return
        if not scheme and url.startswith(_LS_PATH_PREFIXES):
            parsed = _urlparse(url)
            if ".." in posixpath.normpath(parsed.path).split("/") or "\\" in url:
                raise ImageError(
                    f"refusing {url!r}: a backslash or path traversal", status_code=403
                )
            return
        raise ImageError(
            f"unsupported image URL {url!r}: expected a Label Studio URL (/data/upload/..., "
            "/data/local-files/?d=..., s3://...) or an http(s) URL on LABEL_STUDIO_URL",
            status_code=400 if not scheme else 403,
        )

    def auth_header(self, fallback_token: str | None = None) -> str:
        """The ``Authorization`` header value for LABEL_STUDIO_URL's API (``Bearer <access
        token>`` for personal access tokens, ``Token <token>`` for legacy tokens), as
        label-studio-sdk builds it.

        Raises:
          ImageError: no token, or the personal access token was refused (502).
        """
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            is_jwt_well_formed,
        )

        token = self._token(fallback_token)
        return f"Bearer {token}" if is_jwt_well_formed(token) else f"Token {token}"

    def _token(self, fallback: str | None) -> str:
        """An access token for LABEL_STUDIO_URL: the personal access token exchanged for a
        Bearer access token by label-studio-sdk (cached until it expires), a legacy token
        as is, or the token Label Studio sent in ``/setup``."""
        if self.api_key:
            from label_studio_sdk.client import LabelStudio  # heavy import, only when needed

            with self._client_lock:
                try:
                    if self._client is None:
                        import httpx

                        # the refresh token goes to LABEL_STUDIO_URL only: no redirects, no
                        # proxies from the environment
                        http = httpx.Client(
                            timeout=self.timeout, follow_redirects=False, trust_env=False
                        )
                        self._client = LabelStudio(
                            base_url=self.label_studio_url,
                            api_key=self.api_key,
                            timeout=self.timeout,
                            httpx_client=http,
                            follow_redirects=False,
                        )
                    auth = self._client._client_wrapper.get_headers()["Authorization"]
                except ImageError:
                    raise
                except Exception as e:
                    self._client = None
                    raise ImageError(
                        f"cannot authenticate to LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY: {e}",
                        status_code=502,
                    ) from None
            return auth.split(" ", 1)[1]
        if fallback:
            return fallback
        raise ImageError(
            "cannot download task images: set LABEL_STUDIO_API_KEY (a personal access token or "
            "legacy token) or LOCAL_FILES_DOCUMENT_ROOT",
            status_code=502,
        )

    def _download(self, url: str, *, task_id: int | None, fallback_token: str | None) -> bytes:
        self._classify(url)
        if self.label_studio_url is None:
            raise ImageError(
                f"cannot download {url!r}: LABEL_STUDIO_URL is not set (and the file is not "
                "under LOCAL_FILES_DOCUMENT_ROOT)",
                status_code=502,
            )
        if _urlparse(url).scheme.lower() in _CLOUD_SCHEMES and task_id is None:
            raise ImageError(f"cloud storage URL {url!r} needs the task id", status_code=400)
        from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

        token = self._token(fallback_token)
        assert self.origin is not None
        session = _GuardedSession(
            origin=self.origin,
            label_studio_url=self.label_studio_url,
            timeout=self.timeout,
            max_bytes=self.max_bytes,
        )
        with tempfile.TemporaryDirectory(prefix="pasam-ls-") as tmp:
            try:
                # local files were handled above: make the SDK download, never read the disk
                with ls_io.local_files_resolver(lambda _rel: ""), ls_io.http_session(session):
                    path = ls_io.get_local_path(
                        url,
                        cache_dir=tmp,
                        project_dir=tmp,
                        image_dir=os.path.join(tmp, "none"),
                        hostname=self.label_studio_url,
                        access_token=token,
                        task_id=task_id,
                    )
            except ImageError:
                raise
            except requests.HTTPError as e:
                raise _http_error(url, e, session.attempts) from None
            except Exception as e:  # the SDK raises FileNotFoundError/ValueError/Exception
                raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
            finally:
                session.close()
            p = Path(path)
            if not p.resolve().is_relative_to(Path(tmp).resolve()):
                raise ImageError(
                    f"refusing {url!r}: not downloaded from Label Studio", status_code=403
                )
            data = p.read_bytes()
        self.downloads += 1
        logger.debug("downloaded %s (%d bytes)", url, len(data))
        return data


def _http_error(url: str, error: requests.HTTPError, attempts: list) -> ImageError:
    """The error to report when the SDK raised ``error``: for uploads it tries the storage
    proxy and then the legacy ``/data/upload`` path, and re-raises the FIRST error even when
    the retry failed differently. "Not found" only when every attempt said 404; otherwise
    the last other failure (an auth error, a 5xx, a timeout, a refused redirect)."""
    others = [a for a in attempts if a != 404 and not (isinstance(a, int) and a < 400)]
    if not others:
        if 404 in attempts or (error.response is not None and error.response.status_code == 404):
            return ImageError(
                f"Label Studio answered HTTP 404 for the image {url!r}", status_code=404
            )
        code = error.response.status_code if error.response is not None else 0
        others = [code]
    last = others[-1]
    if isinstance(last, ImageError):
        return last
    hint = " (check LABEL_STUDIO_API_KEY)" if last in (401, 403) else ""
    tried = " (after the storage proxy and the legacy upload path)" if len(attempts) > 1 else ""
    return ImageError(
        f"Label Studio answered HTTP {last} for the image {url!r}{tried}{hint}", status_code=502
    )


def _urlparse(url: str):
    try:
        return urlparse(url)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise ImageError(f"malformed image URL {url!r}: {e}", status_code=400) from None


def _file_error(url: str, e: OSError) -> ImageError:
    """A local-files read that failed: a clear 4xx, never a 500."""
    if e.errno == errno.ENAMETOOLONG:
        return ImageError(f"refusing {url!r}: the file name is too long", status_code=400)
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return ImageError(f"image not found: {url!r}", status_code=404)
    if e.errno in (errno.EACCES, errno.EPERM):
        return ImageError(f"cannot read {url!r}: permission denied", status_code=403)
    return ImageError(f"cannot read {url!r}: {e.strerror or e}", status_code=422)
