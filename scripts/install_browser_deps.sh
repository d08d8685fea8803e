#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian/Ubuntu packages, for the real-browser test
# (tests/integration/test_labelstudio_browser.py drives Label Studio's frontend with Selenium).
# The browser runs with --headless --no-sandbox and a fresh profile; it needs no network.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null)"
    exit 0
fi
$SUDO apt-get update
# Debian names them chromium / chromium-driver (Ubuntu ships the same names as snaps)
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver
chromium --version
