#!/usr/bin/env bash
# Install Label Studio into its own cached virtual environment (used by the end-to-end test
# tests/integration/test_labelstudio_e2e.py). Label Studio pins many packages (Django, ...)
# that must not leak into the project's environment, hence the separate venv.
#
#   scripts/install_labelstudio.sh            # venv at ${PASAM_LS_VENV:-$HOME/.cache/pasam/ls-venv}
#   PASAM_LS_VERSION=1.23.2 PASAM_LS_VENV=/tmp/ls scripts/install_labelstudio.sh
#
# Re-running is cheap: an existing venv with the right version is reused.
set -euo pipefail

LS_VERSION="${PASAM_LS_VERSION:-1.23.2}"
VENV="${PASAM_LS_VENV:-$HOME/.cache/pasam/ls-venv}"
PYTHON="${PASAM_LS_PYTHON:-python3}"

if [ -x "$VENV/bin/label-studio" ] && \
   "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" 2>/dev/null; then
    echo "Label Studio $LS_VERSION already installed in $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
# Build in a temporary location and move into place, so an interrupted install never leaves
# a half-populated venv that later runs would mistake for a good one.
TMP_VENV="$VENV.tmp.$$"
trap 'rm -rf "$TMP_VENV"' EXIT
rm -rf "$TMP_VENV"
"$PYTHON" -m venv "$TMP_VENV"
"$TMP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$LS_VERSION"
# venv scripts hard-code the interpreter path: recreate the venv in place after moving it.
rm -rf "$VENV"
mv "$TMP_VENV" "$VENV"
trap - EXIT
"$PYTHON" -m venv --upgrade "$VENV" >/dev/null
for f in "$VENV"/bin/*; do
    if [ -f "$f" ] && head -c 2 "$f" | grep -q '#!'; then
        sed -i "1s|^#!.*$TMP_VENV/bin/python.*|#!$VENV/bin/python|" "$f"
    fi
done
# (not `label-studio --version`: it queries PyPI for the latest release and hangs offline)
"$VENV/bin/python" -c "import label_studio"
echo "Label Studio $LS_VERSION installed in $VENV"
