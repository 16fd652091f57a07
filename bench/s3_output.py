"""Object-store benchmark: the demo run with output.root on S3 against the same run on the local disk.

(a) `vico run` of N demo videos, output on the local disk (the baseline).
(b) the same run, output.root on an S3 API on loopback (moto in server mode in
    this process), credentials and endpoint from the environment as on a cluster.
Reports both wall times, their ratio (b)/(a), and the S3 requests the run made
(by method, and per video): on a real store, requests cost money and latency,
so the count is what carries over; moto's speed does not.

    python bench/s3_output.py [--videos 2] [--minutes 1]
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

VICO = [sys.executable, "-m", "vico_pipeline.cli"]


class _Requests(logging.Handler):
    """Counts the requests moto's HTTP server logs (one line a request)."""

    def __init__(self):
        super().__init__()
        self.by_method: collections.Counter = collections.Counter()

    def emit(self, record):
        match = re.search(r'"(GET|PUT|POST|HEAD|DELETE) ', record.getMessage())
        if match:
            self.by_method[match.group(1)] += 1


def run(manifest: str, root: str, env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([*VICO, "run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                           "--set", f"output.root={root}", "--set", "ray.progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed: {done.stderr[-2000:]}")
    from vico_pipeline import storage
    return seconds, storage.read_json(done.stdout.strip().splitlines()[-1] + "/manifest.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=1.0)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    work = tempfile.mkdtemp(prefix="vico-bench-s3-")
    subprocess.run([*VICO, "demo-videos", f"{work}/videos", "--count", str(args.videos),
                    "--minutes", str(args.minutes)], check=True, capture_output=True)
    manifest = f"{work}/videos/manifest.txt"

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
    server.start()
    host, port = server.get_host_and_port()
    s3_env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    os.environ.update(s3_env)
    from vico_pipeline import storage
    storage.fs_and_path("s3://bench")[0].mkdir("bench")
    counter = _Requests()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    local_s, local_manifest = run(manifest, f"{work}/out", env)
    counter.by_method.clear()
    s3_s, s3_manifest = run(manifest, "s3://bench/out", env)
    server.stop()

    requests = dict(counter.by_method)
    total = sum(requests.values())
    print(json.dumps({
        "videos": args.videos, "minutes_each": args.minutes,
        "local_s": round(local_s, 1), "s3_s": round(s3_s, 1), "ratio_s3_over_local": round(s3_s / local_s, 2),
        "stages_phase_s": {"local": local_manifest["phases_s"], "s3": s3_manifest["phases_s"]},
        "s3_requests": requests, "s3_requests_total": total,
        "s3_requests_per_video": round(total / args.videos, 1),
        "tables_equal": {t: local_manifest["tables"][t]["rows"] == s3_manifest["tables"][t]["rows"]
                         for t in local_manifest["tables"]},
    }, indent=2))


if __name__ == "__main__":
    main()
