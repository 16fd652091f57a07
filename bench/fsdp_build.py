"""Host memory of each fsdp worker: rank 0 builds the whole model, the others build theirs on the
meta device and take their shards from rank 0.

    python bench/fsdp_build.py                      # makes the demo version first (demo videos + vico run)
    python bench/fsdp_build.py --version output/demo/v1 --hidden 1024 --layers 8 --out build.json

Trains a mid-sized Video-XL (random weights; 8 decoder layers of width 1024 by default, about
120M parameters, 0.5 GB in fp32) for 2 steps with `train.strategy: fsdp` on 2 Ray Train
workers (gloo, CPU), then reads `memory.json`: each worker's peak resident host memory (VmHWM)
once its model is built and sharded (before training: on CPU the training step's activations
live in host memory too, where on a GPU they do not), and whether it built the whole model.
The baseline is rank 0 in the same run: it does what every worker did before (build the whole
model, then shard it). The figure is how much less rank 1
held, in whole models: (peak of rank 0 - peak of rank 1) / model bytes. It is 0 when every
worker builds the whole model (as before), and about 1 when rank 1 holds only its shards, since
rank 0 holds the whole model and its own shards side by side while it shards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_loader import demo_version, report  # noqa: E402

from vico_pipeline.config import load_config  # noqa: E402
from vico_pipeline.model.train import run_training  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", help="a version folder with shards/train (default: make the demo version)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="also write the numbers as JSON")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        version = Path(args.version) if args.version else demo_version(tmp)
        config = load_config(ROOT / "configs" / "train-tiny.yaml", [
            f"model.hidden_size={args.hidden}", f"model.intermediate_size={args.hidden * 11 // 4}",
            f"model.num_layers={args.layers}", f"model.num_heads={args.hidden // 64}", "model.num_kv_heads=4",
            "model.vocab_size=8192", f"train.data={version}", f"train.output={tmp / 'run'}", "train.max_steps=2",
            "train.checkpoint_every=100", "train.strategy=fsdp", f"train.workers={args.workers}", "train.grad_accum=1"])
        t0 = time.time()
        run = run_training(config.model, config.train)
        seconds = round(time.time() - t0, 1)
        held = json.loads((run / "memory.json").read_text())
    model_bytes = sum(held["param_bytes"])  # the shards add up to the whole model
    peaks = held["host_peak_after_build_bytes"]
    result = {"workers": held["workers"], "built_whole_model": held["built_whole_model"], "model_bytes": model_bytes,
              "host_peak_after_build_bytes": peaks, "host_peak_bytes_after_a_step": held["host_peak_bytes"],
              "param_bytes": held["param_bytes"],
              "rank1_held_less_in_models": round((peaks[0] - peaks[1]) / model_bytes, 3), "seconds": seconds,
              "cpus": os.cpu_count(), "machine": platform.platform()}
    report(result, args.out)


if __name__ == "__main__":
    main()
