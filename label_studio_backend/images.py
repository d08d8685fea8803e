"""Fetch and decode task images, safely.

Task image URLs come from Label Studio tasks, i.e. from users: the loader only ever

- reads ``/data/local-files/?d=<path>`` files from ``LOCAL_FILES_DOCUMENT_ROOT`` (paths that
  escape it are refused), or
- downloads from ``LABEL_STUDIO_URL`` (uploads, local-files storage, storage proxy and
  cloud-storage presign URLs, or absolute URLs on that same origin) with label-studio-sdk's
  ``get_local_path``, authenticated with a personal access token (a JWT refresh token,
  exchanged by label-studio-sdk at ``/api/token/refresh``) or a legacy token.

Any other host, scheme or path is refused (no SSRF). Downloads have a timeout, follow
redirects only within the same origin and stop at ``max_image_bytes``; images larger than
``max_image_pixels`` are refused before decoding. 8/16-bit, grayscale, RGBA, palette and
float images are normalized to HxWx3 uint8 with :func:`pasam_plugins.imageio.normalize_image`.
"""

import io
import logging
import os
import posixpath
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from pasam_plugins.imageio import normalize_image

from .errors import ImageError

logger = logging.getLogger(__name__)

_LS_PATH_PREFIXES = ("/data/", "data/", "/upload", "upload/", "/storage-data/", "storage-data/")
_CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
_MAX_REDIRECTS = 5


def _origin(url: str) -> tuple[str, str]:
    p = urlparse(url)
    scheme = p.scheme.lower()
    port = p.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, f"{(p.hostname or '').lower()}:{port}"


class _GuardedSession(requests.Session):
    """``requests.Session`` for label-studio-sdk's downloader: same origin only, timeouts,
    a byte limit, and redirects followed only within the origin."""

    def __init__(self, *, origin: str, timeout: float, max_bytes: int) -> None:
        super().__init__()
        self.origin = _origin(origin)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.trust_env = False  # never route through proxies from the environment

    def _check(self, url: str) -> None:
        if _origin(url) != self.origin:
            raise ImageError(
                f"refusing to fetch {url!r}: images are only downloaded from LABEL_STUDIO_URL",
                status_code=403,
            )

    def get(self, url, **kwargs):  # type: ignore[override]
        kwargs.pop("stream", None)
        kwargs.pop("timeout", None)
        kwargs["allow_redirects"] = False
        deadline = time.monotonic() + self.timeout
        for _ in range(_MAX_REDIRECTS + 1):
            self._check(url)
            try:
                r = super().get(url, stream=True, timeout=(min(5.0, self.timeout), self.timeout), **kwargs)
            except requests.Timeout:
                raise ImageError(f"timed out downloading {url!r}", status_code=504) from None
            except requests.RequestException as e:
                raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
            if r.is_redirect and "location" in r.headers:
                url = urljoin(url, r.headers["location"])
                r.close()
                continue
            break
        else:
            raise ImageError(f"too many redirects downloading the image {url!r}", status_code=502)
        if r.status_code >= 400:
            # the SDK's raise_for_status() turns this into HTTPError (and may retry the
            # legacy upload path); the body is not needed
            r.close()
            r._content = b""
            r._content_consumed = True
            return r
        length = r.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            r.close()
            raise _too_large(url, int(length), self.max_bytes)
        buf = bytearray()
        try:
            for chunk in r.iter_content(1 << 16):
                buf += chunk
                if len(buf) > self.max_bytes:
                    raise _too_large(url, len(buf), self.max_bytes)
                if time.monotonic() > deadline:
                    raise ImageError(f"timed out downloading {url!r}", status_code=504)
        except requests.RequestException as e:
            raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
        finally:
            r.close()
        r._content = bytes(buf)
        r._content_consumed = True
        return r


def _too_large(what: str, size: int, limit: int) -> ImageError:
    return ImageError(
        f"image {what!r} is too large: {size} bytes > {limit} (PASAM_MAX_IMAGE_BYTES)",
        status_code=413,
    )


def decode_image(data: bytes, *, name: str, max_pixels: int) -> np.ndarray:
    """Decode image bytes to HxWx3 uint8 (EXIF orientation applied, as browsers show it).

    Raises:
      ImageError: not an image (422) or more than ``max_pixels`` pixels (413).
    """
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot decode the image {name!r}: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            f"image {name!r} is too large: {w}x{h} = {w * h} pixels > {max_pixels} "
            "(PASAM_MAX_IMAGE_PIXELS)",
            status_code=413,
        )
    try:
        img = ImageOps.exif_transpose(img) or img
        mode = img.mode
        if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            img = img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")
        elif mode == "1":
            img = img.convert("L")
        elif mode == "LA":
            img = img.getchannel("L")
        elif mode.startswith("I;16"):
            arr = np.asarray(img).astype(np.uint16)
            return _normalize(arr, name)
        arr = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode the image {name!r}: {e}") from None
    return _normalize(arr, name)


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
        if label_studio_url:
            label_studio_url = label_studio_url.rstrip("/")
            if urlparse(label_studio_url).scheme not in ("http", "https"):
                raise ValueError(
                    f"LABEL_STUDIO_URL must start with http:// or https://, got {label_studio_url!r}"
                )
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
    def load(self, url: object, *, task_id: int | None = None, fallback_token: str | None = None) -> np.ndarray:
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
            raise ImageError(f"the task's image URL is empty or not a string: {url!r}", status_code=400)
        url = url.strip()
        local = self._local_path(url)
        if local is not None:
            st = local.stat()
            key = ("file", str(local), st.st_mtime_ns, st.st_size)
            cached = self._get(key)
            if cached is not None:
                return cached
            if st.st_size > self.max_bytes:
                raise _too_large(url, st.st_size, self.max_bytes)
            data = local.read_bytes()
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
        parsed = urlparse(url)
        if parsed.scheme or not parsed.path.rstrip("/").endswith("/data/local-files"):
            return None
        values = parse_qs(parsed.query, keep_blank_values=True).get("d")
        rel = values[-1] if values else ""
        if not rel:
            raise ImageError(f"local-files URL without a ?d= path: {url!r}", status_code=400)
        if self.local_files_root is None:
            return None
        norm = posixpath.normpath("/" + rel.replace("\\", "/")).lstrip("/")
        path = (self.local_files_root / norm).resolve()
        if not path.is_relative_to(self.local_files_root):
            raise ImageError(
                f"refusing {url!r}: the path leaves LOCAL_FILES_DOCUMENT_ROOT", status_code=403
            )
        if path.is_file():
            return path
        if self.label_studio_url is None:
            raise ImageError(
                f"image not found: {rel!r} is not under LOCAL_FILES_DOCUMENT_ROOT "
                f"({self.local_files_root}) and LABEL_STUDIO_URL is not set",
                status_code=404,
            )
        return None

    def _classify(self, url: str) -> None:
        """Refuse URLs that would make the backend contact anything but Label Studio."""
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            if self.label_studio_url is None or _origin(url) != _origin(self.label_studio_url):
                raise ImageError(
                    f"refusing to fetch {url!r}: images are only downloaded from "
                    f"LABEL_STUDIO_URL ({self.label_studio_url or 'not set'})",
                    status_code=403,
                )
            return
        if scheme in _CLOUD_SCHEMES:
            return
        if not scheme and url.startswith(_LS_PATH_PREFIXES):
            if ".." in posixpath.normpath(parsed.path).split("/") or "\\" in parsed.path:
                raise ImageError(f"refusing {url!r}: path traversal", status_code=403)
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
                        self._client = LabelStudio(
                            base_url=self.label_studio_url, api_key=self.api_key, timeout=self.timeout
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
        if urlparse(url).scheme.lower() in _CLOUD_SCHEMES and task_id is None:
            raise ImageError(f"cloud storage URL {url!r} needs the task id", status_code=400)
        from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

        token = self._token(fallback_token)
        session = _GuardedSession(
            origin=self.label_studio_url, timeout=self.timeout, max_bytes=self.max_bytes
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
                code = e.response.status_code if e.response is not None else 0
                hint = " (check LABEL_STUDIO_API_KEY)" if code in (401, 403) else ""
                raise ImageError(
                    f"Label Studio answered HTTP {code} for the image {url!r}{hint}",
                    status_code=404 if code == 404 else 502,
                ) from None
            except Exception as e:  # the SDK raises FileNotFoundError/ValueError/Exception
                raise ImageError(f"cannot download {url!r}: {e}", status_code=502) from None
            finally:
                session.close()
            p = Path(path)
            if not p.resolve().is_relative_to(Path(tmp).resolve()):
                raise ImageError(f"refusing {url!r}: not downloaded from Label Studio", status_code=403)
            data = p.read_bytes()
        self.downloads += 1
        logger.debug("downloaded %s (%d bytes)", url, len(data))
        return data
