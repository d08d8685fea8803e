"""napari plugin: PA-SAM interactive annotation with the adapter's uncertainty overlay.

The plugin is discovered through ``napari.yaml`` (npe2). This module stays light on purpose:
importing it does not import torch, Qt or the model; the dock widget, the sample data and
the propagation logic live in submodules that napari imports only when they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
