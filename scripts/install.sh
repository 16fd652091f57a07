#!/usr/bin/env bash
# Installs vico into .venv at the locked versions (requirements/*.lock, written by scripts/lock.sh).
# Usage: bash scripts/install.sh [EXTRA ...]     e.g. `bash scripts/install.sh model s3`
# No extra: the pipeline alone. Extras as in pyproject.toml (model, transformers, s3, cluster, test);
# vllm has no lock (GPU machines only): `.venv/bin/pip install -e '.[vllm]'` there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
LOCKS=(-r requirements/base.lock)
for extra in "$@"; do
    [ -f "requirements/$extra.lock" ] || { echo "install.sh: no lock for extra '$extra' (requirements/$extra.lock)" >&2; exit 2; }
    LOCKS+=(-r "requirements/$extra.lock")
done
# uv installs the locked wheels. pip is used once, to fetch uv itself into a throw-away folder: one
# pinned wheel, nothing to resolve. (pip resolving the whole tree is what made installs slow: the
# pip 23.2 that `python3 -m venv` brings backtracks for half an hour on the test extra.)
[ -x .venv/bin/python ] || "$PYTHON" -m venv --without-pip .venv
UV=.venv/bin/uv
if [ ! -x "$UV" ]; then
    rm -rf .venv/bootstrap
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore --target .venv/bootstrap "uv==$UV_VERSION"
    UV=.venv/bootstrap/bin/uv
fi
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)  # torch 2.13.0+cpu on these machines (scripts/lock.sh)
# Exactly the lock (--no-deps: nothing resolved, nothing added), a current pip and uv for later
# installs into this venv (`.venv/bin/pip install -e .` works as before), and vico itself, editable.
"$UV" pip install -q --python .venv/bin/python "${FIND_LINKS[@]}" --no-deps "${LOCKS[@]}" pip "uv==$UV_VERSION" -e .
rm -rf .venv/bootstrap
# A lock that lacks a dependency of pyproject.toml fails here: refresh it with `bash scripts/lock.sh`.
.venv/bin/uv pip check -q --python .venv/bin/python
