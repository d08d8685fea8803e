"""Label Studio ML backend serving PA-SAM masks (interactive clicks/boxes and batch boxes -> masks).

Start it with ``pasam serve --checkpoint MODEL`` or ``python -m label_studio_backend``; see
``label_studio_backend/README.md``.
"""

__all__ = ["create_app", "PASamBackend", "Settings"]


def __getattr__(name: str):  # lazy: importing the package must not import torch/fastapi
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "PASamBackend":
        from .model import PASamBackend

        return PASamBackend
    if name == "Settings":
        from .config import Settings

        return Settings
    raise AttributeError(name)
