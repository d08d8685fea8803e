"""Server settings, read from the environment (names follow label-studio-ml conventions)."""

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


def _env_float(name: str, default: float) -> float:
    value = _env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server can be configured with.

    Attributes (environment variable in brackets):
      checkpoint: model weights [PASAM_CHECKPOINT].
      device: ``cuda``/``mps``/``cpu``, default the best available [DEVICE].
      label_studio_url: where task images are downloaded from; the only host the backend
        ever contacts [LABEL_STUDIO_URL].
      label_studio_api_key: personal access token (JWT refresh token) or legacy token
        [LABEL_STUDIO_API_KEY]; without it the token Label Studio sends in ``/setup`` is used.
      local_files_root: read ``/data/local-files/?d=...`` images from this directory instead
        of downloading them [LOCAL_FILES_DOCUMENT_ROOT].
      cache_dir: pasam's cache directory [PASAM_CACHE_DIR]; when set, image embeddings
        persist in its ``embeddings/`` subdirectory (otherwise memory only).
      cache_max_mb: in-memory embedding cache budget [PASAM_CACHE_MAX_MB].
      image_cache_max_mb: in-memory budget for decoded task images [PASAM_IMAGE_CACHE_MAX_MB].
      max_image_bytes: largest image file accepted [PASAM_MAX_IMAGE_BYTES].
      max_image_pixels: largest image (width x height) accepted [PASAM_MAX_IMAGE_PIXELS].
      max_request_bytes: largest request body accepted [PASAM_MAX_REQUEST_BYTES].
      download_timeout: seconds for one image download [PASAM_DOWNLOAD_TIMEOUT].
      max_batch: prompt sets per decoder call in batch mode [PASAM_MAX_BATCH].
      basic_auth_user / basic_auth_pass: require HTTP basic auth [BASIC_AUTH_USER/PASS].
      model_version: override the version string reported to Label Studio
        [PASAM_MODEL_VERSION]; default: derived from the weights.
      log_level: [LOG_LEVEL].
    """

    checkpoint: Path | None = None
    device: str | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    local_files_root: Path | None = None
    cache_dir: Path | None = None
    cache_max_mb: int = 1024
    image_cache_max_mb: int = 256
    max_image_bytes: int = 128 << 20
    max_image_pixels: int = 64_000_000
    max_request_bytes: int = 64 << 20
    download_timeout: float = 30.0
    max_batch: int = 16
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    model_version: str | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for key in ("checkpoint", "local_files_root", "cache_dir"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, key, Path(str(value)))

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from the environment; keyword arguments that are not None win."""
        ckpt = _env("PASAM_CHECKPOINT")
        root = _env("LOCAL_FILES_DOCUMENT_ROOT")
        cache = _env("PASAM_CACHE_DIR")
        s = cls(
            checkpoint=Path(ckpt) if ckpt else None,
            device=_env("DEVICE"),
            label_studio_url=_env("LABEL_STUDIO_URL") or _env("LABEL_STUDIO_HOST"),
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY")
            or _env("LABEL_STUDIO_ACCESS_TOKEN"),
            local_files_root=Path(root) if root else None,
            cache_dir=Path(cache) if cache else None,
            cache_max_mb=_env_int("PASAM_CACHE_MAX_MB", cls.cache_max_mb),
            image_cache_max_mb=_env_int("PASAM_IMAGE_CACHE_MAX_MB", cls.image_cache_max_mb),
            max_image_bytes=_env_int("PASAM_MAX_IMAGE_BYTES", cls.max_image_bytes),
            max_image_pixels=_env_int("PASAM_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            max_request_bytes=_env_int("PASAM_MAX_REQUEST_BYTES", cls.max_request_bytes),
            download_timeout=_env_float("PASAM_DOWNLOAD_TIMEOUT", cls.download_timeout),
            max_batch=_env_int("PASAM_MAX_BATCH", cls.max_batch),
            basic_auth_user=_env("BASIC_AUTH_USER"),
            basic_auth_pass=_env("BASIC_AUTH_PASS"),
            model_version=_env("PASAM_MODEL_VERSION"),
            log_level=(_env("LOG_LEVEL", cls.log_level) or cls.log_level).upper(),
        )
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return s.with_(**overrides)

    def with_(self, **changes: object) -> "Settings":
        """A copy with the given fields changed (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)  # type: ignore[arg-type]
