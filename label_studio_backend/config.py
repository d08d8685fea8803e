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


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={value!r} is not 1/0, true/false, yes/no")


#: most tasks prefetched after one prediction (each costs an encoder run, or many tiles)
MAX_PREFETCH_TASKS = 100


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server can be configured with.

    Attributes (environment variable in brackets):
      checkpoint: model weights [PASAM_CHECKPOINT].
      device: ``cuda``/``mps``/``cpu``, default the best available [DEVICE].
      precision: the image encoder's number format, ``auto`` (bf16 where the CPU/GPU
        computes it fast), ``float32`` or ``bf16`` [PASAM_PRECISION].
      compile_encoder: also ``torch.compile`` the image encoder, in the background (the
        eager encoder serves requests until it is ready) [PASAM_COMPILE=1].
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
      download_timeout: total seconds for one image download, redirects and retries
        included [PASAM_DOWNLOAD_TIMEOUT].
      body_timeout: seconds a client has to send its whole request body, else HTTP 408
        [PASAM_BODY_TIMEOUT].
      max_batch: prompt sets per decoder call in batch mode [PASAM_MAX_BATCH].
      basic_auth_user / basic_auth_pass: require HTTP basic auth [BASIC_AUTH_USER/PASS];
        setting only one of them is refused (:meth:`basic_auth`).
      model_version: override the version string reported to Label Studio
        [PASAM_MODEL_VERSION]; default: derived from the weights.
      log_level: [LOG_LEVEL].
      model_dir: where fine-tuned models are saved [PASAM_MODEL_DIR]; default
        :func:`pasam_plugins.paths.models_dir` (``models/`` in pasam's cache directory).
      train_steps: optimizer steps per fine-tuning run [PASAM_TRAIN_STEPS].
      train_lr: learning rate [PASAM_TRAIN_LR].
      train_images_per_step / train_objects_per_image: images drawn per step and objects
        per image [PASAM_TRAIN_IMAGES_PER_STEP / PASAM_TRAIN_OBJECTS_PER_IMAGE].
      train_max_tasks: at most this many annotated tasks (the newest) per run
        [PASAM_TRAIN_MAX_TASKS].
      train_every_n_annotations: also fine-tune after every N ``ANNOTATION_CREATED`` /
        ``ANNOTATION_UPDATED`` webhook events of a project; 0 = off
        [PASAM_TRAIN_EVERY_N_ANNOTATIONS].
      sync_model_version: name this backend's card in each connected Label Studio project
        after the model version it serves, so the project scores and sorts by its
        predictions (see :mod:`label_studio_backend.sync`); needs ``label_studio_url`` and a
        token [PASAM_SYNC_MODEL_VERSION, default on].
      train_parts: what "Start Training" adapts on the frozen model [PASAM_TRAIN_PARTS]:
        ``adapter`` (PA-SAM's adapter, the default), ``plm`` (a prompt learning module),
        ``plm,pmm`` (with the point matching loss), ``adapter,plm``, ``hq`` (HQ-SAM's token)
        (:func:`pasam_plugins.train.finetune.finetune_parts`).
      prefetch_tasks: after answering ``/predict`` for a task, embed the next N tasks of
        its project (task id order, listed through Label Studio's API) in the background,
        so their first click finds the embedding cached; 0 = off [PASAM_PREFETCH_TASKS]
        (:mod:`label_studio_backend.prefetch`).
    """

    checkpoint: Path | None = None
    device: str | None = None
    precision: str = "auto"
    compile_encoder: bool = False
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
    body_timeout: float = 60.0
    max_batch: int = 16
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    model_version: str | None = None
    log_level: str = "INFO"
    model_dir: Path | None = None
    train_steps: int = 100
    train_lr: float = 1e-3
    train_images_per_step: int = 2
    train_objects_per_image: int = 4
    train_max_tasks: int = 200
    train_every_n_annotations: int = 0
    sync_model_version: bool = True
    train_parts: str = "adapter"
    prefetch_tasks: int = 0

    def __post_init__(self) -> None:
        from pasam_plugins.precision import check_precision

        object.__setattr__(self, "precision", check_precision(self.precision))
        for key in ("checkpoint", "local_files_root", "cache_dir", "model_dir"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, key, Path(str(value)))

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from the environment; keyword arguments that are not None win."""
        ckpt = _env("PASAM_CHECKPOINT")
        root = _env("LOCAL_FILES_DOCUMENT_ROOT")
        cache = _env("PASAM_CACHE_DIR")
        model_dir = _env("PASAM_MODEL_DIR")
        s = cls(
            checkpoint=Path(ckpt) if ckpt else None,
            device=_env("DEVICE"),
            precision=_env("PASAM_PRECISION", cls.precision) or cls.precision,
            compile_encoder=_env_bool("PASAM_COMPILE", cls.compile_encoder),
            label_studio_url=_env("LABEL_STUDIO_URL") or _env("LABEL_STUDIO_HOST"),
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY") or _env("LABEL_STUDIO_ACCESS_TOKEN"),
            local_files_root=Path(root) if root else None,
            cache_dir=Path(cache) if cache else None,
            cache_max_mb=_env_int("PASAM_CACHE_MAX_MB", cls.cache_max_mb),
            image_cache_max_mb=_env_int("PASAM_IMAGE_CACHE_MAX_MB", cls.image_cache_max_mb),
            max_image_bytes=_env_int("PASAM_MAX_IMAGE_BYTES", cls.max_image_bytes),
            max_image_pixels=_env_int("PASAM_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            max_request_bytes=_env_int("PASAM_MAX_REQUEST_BYTES", cls.max_request_bytes),
            download_timeout=_env_float("PASAM_DOWNLOAD_TIMEOUT", cls.download_timeout),
            body_timeout=_env_float("PASAM_BODY_TIMEOUT", cls.body_timeout),
            max_batch=_env_int("PASAM_MAX_BATCH", cls.max_batch),
            basic_auth_user=_env("BASIC_AUTH_USER"),
            basic_auth_pass=_env("BASIC_AUTH_PASS"),
            model_version=_env("PASAM_MODEL_VERSION"),
            log_level=(_env("LOG_LEVEL", cls.log_level) or cls.log_level).upper(),
            model_dir=Path(model_dir) if model_dir else None,
            train_steps=_env_int("PASAM_TRAIN_STEPS", cls.train_steps),
            train_lr=_env_float("PASAM_TRAIN_LR", cls.train_lr),
            train_images_per_step=_env_int(
                "PASAM_TRAIN_IMAGES_PER_STEP", cls.train_images_per_step
            ),
            train_objects_per_image=_env_int(
                "PASAM_TRAIN_OBJECTS_PER_IMAGE", cls.train_objects_per_image
            ),
            train_max_tasks=_env_int("PASAM_TRAIN_MAX_TASKS", cls.train_max_tasks),
            train_every_n_annotations=_env_int(
                "PASAM_TRAIN_EVERY_N_ANNOTATIONS", cls.train_every_n_annotations
            ),
            sync_model_version=_env_bool("PASAM_SYNC_MODEL_VERSION", cls.sync_model_version),
            train_parts=_env("PASAM_TRAIN_PARTS", cls.train_parts) or cls.train_parts,
            prefetch_tasks=_env_int("PASAM_PREFETCH_TASKS", cls.prefetch_tasks),
        )
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return s.with_(**overrides)

    def basic_auth(self) -> tuple[str, str] | None:
        """``(user, password)`` when both are set, None when neither is.

        Raises:
          ValueError: only one of them is set (e.g. a typo in the other variable's name):
            the server would otherwise run without authentication.
        """
        user, password = self.basic_auth_user, self.basic_auth_pass
        if user and password:
            return user, password
        if user or password:
            given, missing = (
                ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
                if user
                else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: refusing to start without the "
                "authentication you asked for (set both, or neither)"
            )
        return None

    def validate(self) -> None:
        """Check the settings a server needs before it loads the model.

        Raises:
          ValueError: naming the setting (half-set basic auth, a non-positive limit or
            timeout).
        """
        self.basic_auth()
        positive = {
            "PASAM_DOWNLOAD_TIMEOUT": self.download_timeout,
            "PASAM_BODY_TIMEOUT": self.body_timeout,
            "PASAM_MAX_IMAGE_BYTES": self.max_image_bytes,
            "PASAM_MAX_IMAGE_PIXELS": self.max_image_pixels,
            "PASAM_MAX_REQUEST_BYTES": self.max_request_bytes,
            "PASAM_MAX_BATCH": self.max_batch,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}={value} must be a positive number")
        if not 0 <= self.prefetch_tasks <= MAX_PREFETCH_TASKS:
            raise ValueError(
                f"PASAM_PREFETCH_TASKS={self.prefetch_tasks} must be 0 (off) to "
                f"{MAX_PREFETCH_TASKS}"
            )
        from pasam_plugins.train.finetune import finetune_parts

        try:
            finetune_parts(self.train_parts)
        except ValueError as e:
            raise ValueError(f"PASAM_TRAIN_PARTS={self.train_parts!r}: {e}") from None

    @property
    def models_dir(self) -> Path:
        """Where fine-tuned models go: ``model_dir``, else :func:`pasam_plugins.paths.models_dir`
        of ``cache_dir``."""
        from pasam_plugins.paths import models_dir

        return self.model_dir if self.model_dir is not None else models_dir(self.cache_dir)

    def with_(self, **changes: object) -> "Settings":
        """A copy with the given fields changed (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)  # type: ignore[arg-type]
