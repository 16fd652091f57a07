#!/usr/bin/env bash
# Installs the pipeline into .venv (the locked versions), writes synthetic demo videos and runs the
# whole pipeline offline. The last line printed is the version folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/vico demo-videos demo --count 3 --minutes 2 >/dev/null
exec .venv/bin/vico run configs/demo.yaml "$@"
