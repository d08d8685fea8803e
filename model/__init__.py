"""Known checkpoints (``registry.json``) and their model cards (``cards/*.md``).

>>> from model import get_entry
>>> get_entry("vit_b").url
'https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth'
"""

from .registry import RegistryEntry, RegistryError, get_entry, load_registry

__all__ = ["RegistryEntry", "RegistryError", "get_entry", "load_registry"]
