"""Process-level workarounds needed to run torch inside napari."""

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def avoid_triton_llvm_clash(*, force: bool = False) -> bool:
    """Keep torch from importing Triton when Mesa's LLVM is already loaded.

    napari's OpenGL canvas on Mesa (llvmpipe under Xvfb, radeonsi, ...) loads
    ``libLLVM-*.so``; importing Triton afterwards (``torchvision`` -> ``torch._dynamo`` ->
    ``triton``) loads a second LLVM and crashes the process with a segmentation fault.
    Triton is only used for compiled GPU kernels, which PA-SAM does not need, so when Mesa's
    LLVM is present and Triton is not yet imported, mark Triton unavailable for this process.

    ``force``: block Triton now even if no LLVM is loaded yet (a process that will open
    viewers later and import torch after that, e.g. the napari tests).

    Returns True when Triton was blocked.
    """
    if "triton" in sys.modules:
        return False
    if force:
        sys.modules["triton"] = None  # type: ignore[assignment]
        return True
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa/LLVM clash to avoid
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` -> ImportError
    log.info("napari-pasam: Mesa's LLVM is loaded; Triton disabled to avoid an LLVM clash")
    return True
