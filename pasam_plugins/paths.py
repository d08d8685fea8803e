"""Where pasam-plugins keeps things: one place for every front end.

- ``cache_dir()``: ``$PASAM_CACHE_DIR``, else ``~/.cache/pasam`` (downloaded checkpoints).
- ``embeddings_dir()``: ``<cache>/embeddings`` (image embeddings persisted on disk).
- ``models_dir()``: ``$PASAM_MODEL_DIR``, else ``<cache>/models`` (fine-tuned models).
- ``model_data_dir()``: the ``model/`` folder shipped with the package (registry, model cards,
  the bundled weights), importable as package data ``pasam_plugins.model_data``.
"""

import os
from importlib import resources
from pathlib import Path


def cache_dir() -> Path:
    """``$PASAM_CACHE_DIR`` if set, else ``~/.cache/pasam``."""
    env = os.environ.get("PASAM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pasam"


def embeddings_dir(cache: Path | None = None) -> Path:
    """Where image embeddings persist: ``<cache>/embeddings``."""
    return (cache if cache is not None else cache_dir()) / "embeddings"


def models_dir(cache: Path | None = None) -> Path:
    """Where fine-tuned models are saved: ``$PASAM_MODEL_DIR``, else ``<cache>/models``
    (``cache`` default :func:`cache_dir`)."""
    env = os.environ.get("PASAM_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return (cache if cache is not None else cache_dir()) / "models"


def model_data_dir() -> Path:
    """The shipped ``model/`` folder (registry.json, cards/, weights/)."""
    try:
        root = resources.files("pasam_plugins.model_data")
        path = Path(str(root))
        if (path / "registry.json").is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[1] / "model"
