"""Regeneration and resume against a full run, on the offline demo.

    python bench/regenerate.py [--count 3] [--minutes 2] [--out /tmp/vico-bench-regen]

1. cold, through the CLI (each command starts its own Ray, as a user's would):
   - full run;
   - regeneration changing only the clue settings (clues, questions, shards re-run);
     goal: at most 0.2 of the full run. Every heavy stage is cached, so this command
     does not start Ray (vico_pipeline/inline.py);
   - resume: a run SIGKILLed (process group) once half the videos have their
     questions, then the same command again; goal: killed + resumed at most 1.2
     of the full run; also given without the second Ray start-up a resume pays.
2. warm, in one process with Ray already up (what the pipeline itself costs,
   without Ray's start-up): full run vs regeneration.
Prints one JSON object with the seconds and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def command(manifest: str, root: str, *settings: str) -> list[str]:
    sets = [f"sources.manifest={manifest}", f"output.root={root}", "ray.progress=false", *settings]
    return [sys.executable, "-m", "vico_pipeline.cli", "run", os.path.join(REPO, "configs", "demo.yaml"),
            *[a for s in sets for a in ("--set", s)]]


def timed(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started, done.stdout.strip().splitlines()[-1]


def killed_at_middle(cmd: list[str], root: str, videos: int) -> float:
    """SIGKILL the run (its process group) once half the videos have their questions written."""
    import glob

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while len(glob.glob(f"{root}/demo/_stages/questions-*/parts/*.parquet")) < (videos + 1) // 2:
            if proc.poll() is not None:
                raise SystemExit("the run ended before the middle; use more videos")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return time.perf_counter() - started


def ray_start_s() -> float:
    """What one `vico run` pays before any work: importing Ray Data and starting a local Ray."""
    code = ("import os,time;os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER']='0';t=time.perf_counter();"
            "import ray, ray.data;from vico_pipeline.runtime import init_ray;from vico_pipeline.config import RayConfig;"
            "init_ray(RayConfig());print(time.perf_counter()-t);ray.shutdown()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--out", default="/tmp/vico-bench-regen")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    from vico_pipeline.demo import make_demo_videos

    manifest = make_demo_videos(os.path.join(args.out, "videos"), count=args.count, minutes=args.minutes)
    result = {"videos": args.count, "minutes_each": args.minutes, "cpus": os.cpu_count()}

    # 1. cold, through the CLI
    root = os.path.join(args.out, "cold")
    result["cold_full_s"], _ = timed(command(manifest, root))
    result["cold_regen_clues_s"], version = timed(command(manifest, root, "clues.max_clues=5"))
    assert version.endswith("/v2"), version
    result["cold_regen_ratio"] = result["cold_regen_clues_s"] / result["cold_full_s"]
    resume_root = os.path.join(args.out, "resume")
    result["resume_killed_at_s"] = killed_at_middle(command(manifest, resume_root), resume_root, args.count)
    result["resume_rerun_s"], _ = timed(command(manifest, resume_root))
    result["resume_total_ratio"] = (result["resume_killed_at_s"] + result["resume_rerun_s"]) / result["cold_full_s"]
    # The resume ratio without the second Ray start-up a resume pays.
    start = result["ray_start_s"] = ray_start_s()
    result["resume_total_ratio_minus_extra_start"] = \
        (result["resume_killed_at_s"] + result["resume_rerun_s"] - start) / result["cold_full_s"]

    # 2. warm: one process, Ray up before the clock starts
    import ray

    from vico_pipeline.config import RayConfig, load_config
    from vico_pipeline.runtime import init_ray
    from vico_pipeline.run import run

    init_ray(RayConfig())
    warm_root = os.path.join(args.out, "warm")

    def config(*settings):
        return load_config(os.path.join(REPO, "configs", "demo.yaml"),
                           [f"sources.manifest={manifest}", f"output.root={warm_root}", "ray.progress=false", *settings])

    started = time.perf_counter()
    run(config(), log=lambda m: None)
    result["warm_full_s"] = time.perf_counter() - started
    started = time.perf_counter()
    run(config("clues.max_clues=5"), log=lambda m: None)
    result["warm_regen_clues_s"] = time.perf_counter() - started
    result["warm_regen_ratio"] = result["warm_regen_clues_s"] / result["warm_full_s"]
    ray.shutdown()
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
