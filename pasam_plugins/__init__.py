"""PA-SAM (Prompt Adapter Segment Anything) model core shared by the Label Studio backend
and the napari plugin. Heavy modules (torch) are imported by the submodules, not here."""

__version__ = "0.1.0"
