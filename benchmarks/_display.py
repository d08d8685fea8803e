"""Shared by the napari benchmark scripts: the EM data location and a real X display."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EM = ROOT.parent / "shared" / "data" / "isbi2012-em"


def ensure_display() -> None:
    """Re-run the calling script under Xvfb when there is no X display (the real xcb
    platform, never Qt's 'offscreen', whose screenshots are black)."""
    if os.environ.get("DISPLAY") or os.environ.get("_PASAM_UNDER_XVFB"):
        return
    if shutil.which("xvfb-run") is None:
        sys.exit("no X display and no xvfb-run: run scripts/install_napari_deps.sh first")
    env = dict(os.environ, _PASAM_UNDER_XVFB="1")
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))
