"""Registry of known checkpoints (``model/registry.json``) and their model cards.

The data lives in the shipped ``model/`` folder (:func:`pasam_plugins.paths.model_data_dir`);
this module is its reader (no top-level ``model`` package that a user's ``model.py`` could
shadow).

Pure standard library (no torch), so the CLI can list models instantly.

The registry file can be replaced by a private one (a mirror, an internal model) with the
environment variable ``PASAM_REGISTRY`` pointing at a JSON file of the same schema.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import model_data_dir

REGISTRY_PATH = model_data_dir() / "registry.json"
CARDS_DIR = model_data_dir() / "cards"
SCHEMA_VERSION = 1
KINDS = ("sam", "pasam-decoder", "pasam", "hq-sam")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class RegistryError(ValueError):
    """An unknown model name or a malformed registry file."""


@dataclass(frozen=True)
class RegistryEntry:
    """One known checkpoint.

    Attributes:
      name: registry key (``vit_b``, ``vit_l``, ``vit_h``, ``pa_sam_l``).
      kind: ``"sam"`` (plain SAM), ``"pasam-decoder"`` (official PA-SAM decoder only, needs
        the SAM checkpoint named by ``requires``), ``"pasam"`` (a whole PA-SAM model) or
        ``"hq-sam"`` (an official HQ-SAM file, :mod:`pasam_plugins.hq`).
      variant: SAM image-encoder variant (``vit_b``/``vit_l``/``vit_h``).
      url: where the file is published.
      filename: name of the file in the cache directory.
      sha256: published SHA-256 (lower-case hex), or None when no value is known.
      md5: published MD5 (lower-case hex), used only where no SHA-256 is known (HQ-SAM's
        files: their MD5 is published identically by several independent projects). It
        catches damaged and wrong files, not a deliberately forged one. Without either, a
        download is never reported as verified.
      size_bytes: published size, or None.
      direct_download: False when the URL is a web page (e.g. a cloud-drive share) that
        cannot be fetched without a browser.
      license, homepage, card (path of the model card relative to ``model/``), requires,
      notes: as in the JSON file.
    """

    name: str
    kind: str
    variant: str
    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size_bytes: int | None = None
    direct_download: bool = True
    title: str = ""
    license: str | None = None
    homepage: str | None = None
    card: str | None = None
    requires: str | None = None
    notes: str = ""
    #: path of a file shipped in the package's model/ folder (no download), e.g.
    #: ``weights/pasam_micro.safetensors``; None for downloadable entries
    bundled: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def bundled_path(self) -> Path | None:
        """The shipped file of a bundled entry (None for downloadable ones)."""
        return (model_data_dir() / self.bundled) if self.bundled else None

    @property
    def verifiable(self) -> bool:
        """Whether a download of this entry can be checked against a published digest."""
        return self.sha256 is not None or self.md5 is not None

    def card_text(self) -> str | None:
        """The model card (Markdown), or None when the entry has none."""
        if not self.card:
            return None
        path = (REGISTRY_PATH.parent / self.card).resolve()
        return path.read_text(encoding="utf-8") if path.is_file() else None


_FIELDS = {f for f in RegistryEntry.__dataclass_fields__ if f not in ("name", "extra")}


def _entry_from_json(name: str, raw: Any, *, source: str) -> RegistryEntry:
    if not isinstance(raw, dict):
        raise RegistryError(f"{source}: entry {name!r} must be an object, got {type(raw).__name__}")
    missing = [k for k in ("kind", "variant", "url", "filename") if not raw.get(k)]
    if missing:
        raise RegistryError(f"{source}: entry {name!r} lacks {', '.join(missing)}")
    if raw["kind"] not in KINDS:
        raise RegistryError(
            f"{source}: entry {name!r} has kind {raw['kind']!r}, expected one of {KINDS}"
        )
    sha = raw.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
            raise RegistryError(
                f"{source}: entry {name!r} sha256 must be 64 hex digits or null, got {sha!r}"
            )
        sha = sha.lower()
    md5 = raw.get("md5")
    if md5 is not None:
        if not isinstance(md5, str) or not _MD5_RE.match(md5.lower()):
            raise RegistryError(
                f"{source}: entry {name!r} md5 must be 32 hex digits or null, got {md5!r}"
            )
        md5 = md5.lower()
    size = raw.get("size_bytes")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise RegistryError(f"{source}: entry {name!r} size_bytes must be a positive integer")
    filename = str(raw["filename"])
    if Path(filename).name != filename or filename in (".", ".."):
        raise RegistryError(f"{source}: entry {name!r} filename must be a bare file name")
    bundled = raw.get("bundled")
    if bundled is not None and (
        not isinstance(bundled, str) or Path(bundled).is_absolute() or ".." in Path(bundled).parts
    ):
        raise RegistryError(
            f"{source}: entry {name!r} bundled must be a path inside the model folder"
        )
    known = {k: v for k, v in raw.items() if k in _FIELDS}
    known.update(sha256=sha, md5=md5, size_bytes=size, filename=filename)
    known["direct_download"] = bool(raw.get("direct_download", True)) and bundled is None
    extra = {k: v for k, v in raw.items() if k not in _FIELDS}
    return RegistryEntry(name=name, extra=extra, **known)


def load_registry(path: str | Path | None = None) -> dict[str, RegistryEntry]:
    """All registry entries by name.

    Arguments:
      path: a registry JSON file; default ``$PASAM_REGISTRY`` if set, else the bundled
        ``model/registry.json``.
    """
    path = Path(path or os.environ.get("PASAM_REGISTRY") or REGISTRY_PATH)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: registry file not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the model registry ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise RegistryError(f"{path}: expected a JSON object with a 'models' object")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RegistryError(
            f"{path}: registry schema_version {version!r} is not supported "
            f"(this version reads {SCHEMA_VERSION})"
        )
    return {
        name: _entry_from_json(name, raw, source=str(path)) for name, raw in doc["models"].items()
    }


def get_entry(name: str, registry: dict[str, RegistryEntry] | None = None) -> RegistryEntry:
    """The entry called ``name``; :class:`RegistryError` listing the known names otherwise."""
    registry = load_registry() if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise RegistryError(
            f"unknown model {name!r}; known models: {', '.join(sorted(registry))}"
        ) from None


#: the model every tool uses when the user names none (shipped, no network needed)
DEFAULT_MODEL = "pasam_micro"


def bundled_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """The shipped file of a bundled registry entry (the default model by default).

    Raises:
      RegistryError: not a bundled entry, or its file is missing from the installation.
    """
    entry = get_entry(name)
    path = entry.bundled_path
    if path is None:
        raise RegistryError(
            f"{name} is not shipped with pasam-plugins (download it: pasam download {name})"
        )
    if not path.is_file():
        raise RegistryError(
            f"{name}: the shipped file {path} is missing from this installation (reinstall "
            f"pasam-plugins, or pass --checkpoint)"
        )
    return path
