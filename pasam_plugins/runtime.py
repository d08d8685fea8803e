"""Process-level settings for CPU inference in the processes this project owns.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above
32 MiB with a fresh ``mmap`` and unmaps them on ``free``, so every large temporary is
faulted in (zeroed page by page) again on each call. The decoder's per-prompt-set tensors
reach that size once a call carries about eight prompt sets (B x 4096 x 256 float32), and
the page faults then cost as much as the arithmetic they feed. PyTorch's CPU tuning guide
recommends an allocator that reuses freed memory (jemalloc, tcmalloc) for this reason;
:func:`retain_freed_memory` gets the same reuse from glibc itself, in-process.

The ``pasam`` command line and the Label Studio backend call it at start-up. Library users
and host applications (napari) keep their process's allocator unless they call it; there
the predictor decodes many prompt sets in passes small enough for glibc to reuse their
blocks (:meth:`pasam_plugins.predictor.PASamPredictor.predict_torch`) once its dynamic
mmap threshold has risen to them; how much a process still faults in depends on the blocks
it has freed before (measured per process in the README: 64 to 340 MiB per 16-set call).
"""

import ctypes
import ctypes.util
import platform
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Serve all allocations from one heap and keep freed memory there for reuse (glibc).

    Sets ``M_MMAP_MAX=0`` (no per-block mmap, so large blocks are reused instead of being
    unmapped and faulted in again), ``M_ARENA_MAX=1`` (worker threads share that heap:
    glibc's per-thread arenas would mmap blocks above 64 MiB anyway) and
    ``M_TRIM_THRESHOLD`` = 2 GiB (up to that much free memory stays mapped). The cost is
    memory: the process keeps its peak heap size, as a caching allocator does. Call it at
    process start, before worker threads exist.

    Returns:
      bool: True where the settings were applied; False on other C libraries (macOS,
        Windows, musl), where nothing is changed.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_ARENA_MAX, 1),
            (M_TRIM_THRESHOLD, 2**31 - 1),
            (M_MMAP_MAX, 0),
        )
    )
    return _applied


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` applied its settings in this process."""
    return bool(_applied)


def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags from ``/proc/cpuinfo`` (Linux), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AMX-BF16 or
    AVX512-BF16, read from ``/proc/cpuinfo`` on Linux). On such CPUs bf16 autocast runs
    SAM's encoder about 2x faster than float32; on others it is slower, so it stays off.
    (:func:`pasam_plugins.precision.cpu_bf16_is_fast` also measures it.)"""
    flags = cpu_flags()
    return bool(flags and flags & {"amx_bf16", "avx512_bf16"})
