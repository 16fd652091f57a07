"""Install benchmark: the locked uv install (scripts/install.sh) against the pip install it replaced.

For each install (demo: the pipeline alone, as scripts/demo.sh; test: everything the tests need,
as scripts/test.sh; model: README's "from nothing to a trained tiny model") and each way (pip, as
the scripts did before the lock; uv + lock, scripts/install.sh), on a fresh copy of this checkout
with a new venv:
    cold: empty uv and pip caches (fresh folders under --work, so no one else's cache is touched);
    warm: the same again right after, a new venv, those caches now filled.
model is measured warm only, with the caches the test install filled (a superset of its packages).
The baseline is measured in the same run; the ratio is uv / pip. Runs one install at a time.

    python bench/install.py [--cases demo model test] [--ways pip uv] [--work /tmp/vico-bench-install]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = 'python3 -m venv .venv && '
# The install lines of scripts/demo.sh, the README and scripts/test.sh before the lock (pip's own
# resolver; `python3 -m venv` brings pip 23.2, which only test.sh upgraded).
PIP = {
    "demo": VENV + ".venv/bin/python -m pip install -q -e .",
    "model": VENV + ".venv/bin/python -m pip install -q -e '.[model]'",
    "test": VENV + ".venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]'",
}
UV = {"demo": "bash scripts/install.sh", "model": "bash scripts/install.sh model", "test": "bash scripts/install.sh test"}


def fresh_checkout(dest: str) -> None:
    """The tracked files of this checkout (with uncommitted edits), nothing else: no .venv, no output."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(dest, name))


def timed_install(command: str, src: str, cache: str, timeout_s: float) -> dict:
    env = {**os.environ, "PIP_CACHE_DIR": os.path.join(cache, "pip"), "UV_CACHE_DIR": os.path.join(cache, "uv")}
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    try:
        proc = subprocess.run(["bash", "-c", command], cwd=src, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "timed_out_after_s": timeout_s}
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    check = subprocess.run([".venv/bin/python", "-c", "import vico_pipeline.cli"], cwd=src, capture_output=True)
    return {"seconds": seconds, "imports": check.returncode == 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["demo", "test", "model"], choices=list(UV))
    parser.add_argument("--ways", nargs="+", default=["pip", "uv"], choices=["pip", "uv"])
    parser.add_argument("--work", default="/tmp/vico-bench-install")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    results: dict = {}
    for case in args.cases:
        for way in args.ways:
            if case == "model":  # warm, from the test install's caches
                cache, states = os.path.join(args.work, f"cache-test-{way}"), ("warm",)
                if not os.path.isdir(cache):
                    raise SystemExit("the model case needs the test case first (its caches)")
            else:
                cache, states = os.path.join(args.work, f"cache-{case}-{way}"), ("cold", "warm")
                shutil.rmtree(cache, ignore_errors=True)  # cold: empty caches of our own
            src = os.path.join(args.work, "src")
            command = (PIP if way == "pip" else UV)[case]
            for state in states:
                fresh_checkout(src)
                result = timed_install(command, src, cache, args.timeout_s)
                results.setdefault(case, {}).setdefault(way, {})[state] = result
                print(json.dumps({"case": case, "way": way, "cache": state, **result}), file=sys.stderr, flush=True)
            shutil.rmtree(src, ignore_errors=True)
            if case == "demo":
                shutil.rmtree(cache, ignore_errors=True)
    for way in args.ways:
        shutil.rmtree(os.path.join(args.work, f"cache-test-{way}"), ignore_errors=True)
        for state in ("cold", "warm"):
            pip_s = results[case].get("pip", {}).get(state, {}).get("seconds")
            uv_s = results[case].get("uv", {}).get(state, {}).get("seconds")
            if pip_s and uv_s:
                results[case][f"ratio_{state}"] = round(uv_s / pip_s, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
