"""Which number format the image encoder runs in: ``auto``, ``float32`` or ``bf16``.

``bf16`` means the encoder runs under ``torch.autocast(dtype=torch.bfloat16)`` (matrix
products in bfloat16, accumulation and the returned embedding in float32). It is only
worth it where the hardware computes bf16 products fast:

- **CPU:** AMX-BF16 or AVX512-BF16 (most current server CPUs, recent workstation CPUs).
  Detected from the CPU flags (``/proc/cpuinfo``, or oneDNN's own check where there is no
  ``/proc``), then *measured*: a float32 and a bf16 matrix product of an encoder layer's
  size are timed once per process, and bf16 is used only if it runs at least 20% faster.
  On CPUs without bf16 units it is emulated and several times slower, so ``auto`` keeps
  float32 there.
- **CUDA:** GPUs with native bf16 (compute capability 8.0 and later).
- **MPS and others:** float32.

``auto`` applies these rules; ``float32`` and ``bf16`` force a choice (``bf16`` on a device
that has no bf16 autocast is an error).
"""

import functools
import logging
import time
from typing import Literal

import torch

from .runtime import cpu_flags, cpu_has_fast_bf16

logger = logging.getLogger(__name__)

Precision = Literal["auto", "float32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bf16")
#: bf16 must run a layer-sized matrix product at most this fraction of float32's time
BF16_SPEEDUP_REQUIRED = 0.8


def check_precision(precision: str) -> str:
    """``precision`` normalized (``fp32``/``float``: ``float32``, ``bfloat16``: ``bf16``);
    ``ValueError`` for anything else."""
    p = str(precision).strip().lower()
    p = {"fp32": "float32", "float": "float32", "bfloat16": "bf16"}.get(p, p)
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return p


def _time_matmul(dtype: torch.dtype, reps: int = 3) -> float:
    """Best of ``reps`` times of a 1024x768 @ 768x768 product (an encoder layer's shape)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 768, generator=gen).to(dtype)
    b = torch.randn(768, 768, generator=gen).to(dtype)
    torch.mm(a, b)  # first call: kernel selection, page faults
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def cpu_bf16_measures_faster() -> bool:
    """Whether a bf16 matrix product measures at least 20% faster than float32 on this CPU
    (best of three each, interleaved; about 0.1 s, once per process)."""
    with torch.no_grad():
        t32 = min(_time_matmul(torch.float32), _time_matmul(torch.float32, 1))
        t16 = min(_time_matmul(torch.bfloat16), _time_matmul(torch.bfloat16, 1))
    faster = t16 <= BF16_SPEEDUP_REQUIRED * t32
    logger.info(
        "bf16 check: %.1f ms float32, %.1f ms bf16 per product: %s",
        1e3 * t32,
        1e3 * t16,
        "bf16" if faster else "float32",
    )
    return faster


def cpu_bf16_is_fast() -> bool:
    """This CPU has bf16 units (flags, or oneDNN's check without ``/proc/cpuinfo``) and a
    bf16 product measures faster than float32 here."""
    if cpu_flags() is not None:
        if not cpu_has_fast_bf16():
            return False
    else:
        try:
            if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return False
        except (AttributeError, RuntimeError):
            return False
    return cpu_bf16_measures_faster()


def cuda_bf16_is_fast(device: torch.device) -> bool:
    """Native bf16 on this GPU (compute capability 8.0+, i.e. Ampere and later)."""
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"float32"`` or ``"bf16"``: what ``precision`` means on ``device`` (see the module
    docstring). ``ValueError`` for an unknown name or ``bf16`` on a device without bf16
    autocast."""
    p = check_precision(precision)
    dev = torch.device(device)
    if p == "float32":
        return p
    if p == "bf16":
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"precision bf16 is available on cpu and cuda, not on {dev.type}")
        return p
    if dev.type == "cuda":
        return "bf16" if cuda_bf16_is_fast(dev) else "float32"
    if dev.type == "cpu":
        return "bf16" if cpu_bf16_is_fast() else "float32"
    return "float32"
