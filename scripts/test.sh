#!/usr/bin/env bash
# Installs everything the tests need into .venv (the locked versions of the test extra; no GPU, no
# ffmpeg, no model hub needed), then runs them.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# Headless Chromium for the report test (Debian package); the test skips with a reason if it cannot be had.
if [ -f scripts/install-chromium.sh ]; then bash scripts/install-chromium.sh || echo "chromium not installed; the report test will skip"; fi
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# The import layers (pyproject.toml [tool.importlinter], docs/design.md "Layers"): a broken contract fails CI.
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
