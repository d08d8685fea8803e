"""``python -m label_studio_backend --checkpoint ...`` (same as ``pasam serve``)."""

from .cli import main

if __name__ == "__main__":
    main()
