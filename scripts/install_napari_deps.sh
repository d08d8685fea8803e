#!/usr/bin/env bash
# System libraries napari (Qt6 via PyQt6, vispy/OpenGL) needs on a headless Debian/Ubuntu CI
# runner, plus Xvfb for pytest-xvfb and the screenshot benchmark.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
# libgl1-mesa-dri: Mesa's software OpenGL (llvmpipe) that vispy renders with under Xvfb.
$SUDO apt-get install -y xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 \
    libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
    libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0
