#!/usr/bin/env bash
# Writes requirements/*.lock: the exact versions to install, one file per extra of pyproject.toml
# (base.lock: the pipeline alone), all for Linux x86_64 and Python 3.11. scripts/install.sh installs
# from them. Run this after changing a dependency in pyproject.toml, and commit the locks:
#     bash scripts/lock.sh             # keeps every pin that still fits pyproject.toml
#     bash scripts/lock.sh --upgrade   # takes the newest releases that fit
# test.lock (every extra but vllm) is resolved first; the other locks are constrained to it, so
# any set of them installs together, at the versions the tests ran with. The vllm extra has no
# lock: it installs only on GPU machines. torch is the CPU build (2.13.0+cpu): on these machines a
# wheel of it lies in /opt/wheels; elsewhere give uv an index that has it (UV_EXTRA_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

compile() {  # compile NAME [uv pip compile args...]
    local name=$1; shift
    "$UV" pip compile pyproject.toml --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        "${FIND_LINKS[@]}" --annotation-style line --custom-compile-command "bash scripts/lock.sh" \
        -o "requirements/$name.lock" "$@"
    # What the file is, above uv's own header (which names the refresh command).
    local what="the pipeline alone (pip install -e .)"
    [ "$name" = base ] || what="the $name extra (pip install -e '.[$name]')"
    { echo "# Exact versions for $what; scripts/install.sh installs them. Linux x86_64, Python 3.11."
      grep -v '^# Exact versions for ' "requirements/$name.lock"; } > "requirements/$name.lock.tmp"
    mv "requirements/$name.lock.tmp" "requirements/$name.lock"
}

mkdir -p requirements
compile test --extra test "$@"
compile base -c requirements/test.lock "$@"
for extra in model transformers s3 cluster; do
    compile "$extra" --extra "$extra" -c requirements/test.lock "$@"
done
echo "wrote requirements/{test,base,model,transformers,s3,cluster}.lock" >&2
