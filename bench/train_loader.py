"""Training steps per second with frames decoded on the training thread vs in DataLoader workers.

    python bench/train_loader.py                         # makes the demo version first (demo videos + vico run)
    python bench/train_loader.py --version output/demo/v1 --steps 16 --workers 2 --out loader.json

Trains configs/train-tiny.yaml on a version's shards twice, from the same start: with
`train.loader_workers: 0` (the baseline: each sample's JPEG frames decoded and normalised in the
training process, between steps) and with `--workers` worker processes that prepare the next
samples while a step runs. Steps per second count the steps after the first `--skip` (the
workers' start-up), from the seconds each step logs in metrics.jsonl (data wait + forward +
backward + optimizer). Both runs compute the same losses (asserted); the ratio is the speed-up.
With `--repeats N` the two alternate N times (a noisy machine drifts) and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vico_pipeline.config import load_config  # noqa: E402
from vico_pipeline.model.train import run_training  # noqa: E402


def demo_version(folder: Path) -> Path:
    """The demo version, as scripts/demo.sh makes it: synthetic demo videos through `vico run`."""
    vico = [sys.executable, "-m", "vico_pipeline.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    subprocess.run(vico + ["demo-videos", str(folder / "videos"), "--count", "3", "--minutes", "2"], check=True,
                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    done = subprocess.run(vico + ["run", "configs/demo.yaml", "--set", f"sources.manifest={folder}/videos/manifest.txt",
                                  "--set", f"output.root={folder}/out", "--set", "ray.progress=false"],
                          check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def run(version: Path, output: Path, steps: int, workers: int, prefetch: int) -> list[dict]:
    config = load_config(ROOT / "configs" / "train-tiny.yaml", [
        f"train.data={version}", f"train.output={output}", f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
        f"train.loader_workers={workers}", f"train.loader_prefetch={prefetch}"])
    run_training(config.model, config.train)
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def steps_per_second(metrics: list[dict], skip: int) -> float:
    timed = metrics[skip:]
    return len(timed) / sum(m["seconds"] for m in timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", help="a version folder with shards/train (default: make the demo version)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of the rate (worker start-up)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two runs this many times; medians")
    ap.add_argument("--out", help="also write the numbers as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        version = Path(args.version) if args.version else demo_version(tmp)
        made = round(time.time() - t0, 1)
        rates0, ratesw = [], []
        for k in range(args.repeats):
            baseline = run(version, tmp / f"w0-{k}", args.steps, 0, args.prefetch)
            loaded = run(version, tmp / f"w{args.workers}-{k}", args.steps, args.workers, args.prefetch)
            assert [m["loss"] for m in baseline] == [m["loss"] for m in loaded], "the loader changed what was trained"
            rates0.append(steps_per_second(baseline, args.skip))
            ratesw.append(steps_per_second(loaded, args.skip))
    r0, rw = statistics.median(rates0), statistics.median(ratesw)
    result = {"steps": args.steps, "skip": args.skip, "workers": args.workers, "prefetch": args.prefetch,
              "repeats": args.repeats, "ratios": [round(w / b, 2) for b, w in zip(rates0, ratesw)],
              "frames_per_step": sum(m["frames"] for m in baseline[args.skip:]) / len(baseline[args.skip:]),
              "steps_per_s_workers_0": round(r0, 3), f"steps_per_s_workers_{args.workers}": round(rw, 3),
              "speedup": round(rw / r0, 2), "version_seconds": made if not args.version else None,
              "cpus": os.cpu_count(), "machine": platform.platform()}
    report(result, args.out)


def report(result: dict, out: str | None) -> None:
    """The numbers on stdout, and as JSON in `out` when given."""
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
