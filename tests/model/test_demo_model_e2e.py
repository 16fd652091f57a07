"""End to end through the `vico` CLI: the demo pipeline writes a version, then
`vico train configs/train-tiny.yaml` and `vico eval configs/eval-tiny.yaml` run on its shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_vico_train_and_eval_on_demo_shards(tmp_path):
    vico = [sys.executable, "-m", "vico_pipeline.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")

    def run(*args):
        done = subprocess.run(vico + list(args), capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    run("demo-videos", str(tmp_path / "videos"), "--count", "2", "--minutes", "1")
    version = run("run", "configs/demo.yaml", "--set", f"sources.manifest={tmp_path}/videos/manifest.txt",
                  "--set", f"output.root={tmp_path}/out", "--set", "ray.progress=false")
    assert list(Path(version, "shards", "train").glob("*.parquet"))
    runs = tmp_path / "runs" / "tiny"
    assert run("train", "configs/train-tiny.yaml", "--set", f"train.data={version}", "--set", f"train.output={runs}",
               "--set", "train.max_steps=4", "--set", "train.checkpoint_every=2") == str(runs)
    steps = [json.loads(line) for line in (runs / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["loss"] > 0 for s in steps)
    out = tmp_path / "eval"
    assert run("eval", "configs/eval-tiny.yaml", "--set", f"eval.data={version}", "--set", f"eval.checkpoint={runs}",
               "--set", f"eval.output={out}", "--set", "eval.needle_trials=1", "--set", "eval.max_val_samples=4") == str(out)
    results = json.loads((out / "results.json").read_text())
    import pyarrow.parquet as pq

    val_tasks = {q["task"] for q in pq.read_table(Path(version, "questions")).to_pylist() if q["split"] == "val"}
    # At most 4 val questions are scored; two demo videos may both land in train, leaving none.
    assert set(results["vico_qa"]) <= val_tasks and all(0 <= a <= 1 for a in results["vico_qa"].values())
    assert sum(results["vico_qa_count"].values()) <= 4
    assert results["needle"]
    assert {c["method"] for c in results["needle"]} == {"vst-r2", "vst-r4", "intp", "uniform"}
    assert len(list(out.glob("needle_*.png"))) == 4
