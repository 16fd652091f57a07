#!/usr/bin/env bash
# Installs the pipeline into .venv, writes synthetic demo videos and runs the whole pipeline offline.
# The last line printed is the version folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e .
.venv/bin/vico demo-videos demo --count 3 --minutes 2 >/dev/null
exec .venv/bin/vico run configs/demo.yaml "$@"
