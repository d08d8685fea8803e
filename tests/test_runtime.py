"""The CPU allocator setting of the project's own processes."""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
import torch
from pasam_plugins.runtime import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
mib = 1 << 20
t = torch.empty(96 * mib // 4)  # a 96 MiB float32 temporary, as a batched decoder makes
mapped = libc.mallinfo2().hblkhd  # bytes in blocks that have their own mmap
del t
free_in_heap = libc.mallinfo2().fordblks
print(applied, mapped >= 96 * mib, free_in_heap >= 96 * mib)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
@pytest.mark.parametrize(
    "mode, expected",
    [
        # default glibc: the block is mmapped, and unmapped again on free
        ("default", "False True False"),
        # retained: served from the heap, and still there for the next call after free
        ("retain", "True False True"),
    ],
)
def test_large_freed_buffers_stay_for_reuse_only_when_asked(mode, expected):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_pasam_cli_applies_it():
    code = (
        "from typer.testing import CliRunner; from pasam_plugins.cli import app; "
        "from pasam_plugins import runtime; "
        "r = CliRunner().invoke(app, ['info']); print(r.exit_code, runtime._applied)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["0", "True"]
