#!/usr/bin/env bash
# Set up pasam-plugins on a fresh machine: a virtual environment at .venv with the package
# and its extras. With --dev also the test tools, the system libraries napari needs under
# Xvfb, headless Chromium with its driver (the browser test), and Label Studio in its own
# cached venv (for the end-to-end and browser tests).
#
#   scripts/bootstrap.sh          # runtime: core + Label Studio backend + napari plugin
#   scripts/bootstrap.sh --dev    # everything the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY="${PYTHON:-python3}"
VENV="${PASAM_VENV:-.venv}"

if [ "$DEV" = 1 ]; then
    bash scripts/install_napari_deps.sh
    bash scripts/install_browser_deps.sh
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first, pinned to the build that pairs with torchvision (segment-anything needs both)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==${PASAM_TORCH_VERSION:-2.14.1}" "torchvision==${PASAM_TORCHVISION_VERSION:-0.29.1}"
if [ "$DEV" = 1 ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[labelstudio,napari,train,dev]"
    bash scripts/install_labelstudio.sh
else
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[labelstudio,napari,train]"
fi
echo "pasam-plugins is set up in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
