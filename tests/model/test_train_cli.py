"""`vico train` as a user runs it (issue 13): progress on stderr, and `--set train.max_steps=N` on a
finished run refused in one line (exit 2) until `--resume`, which says so and goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.model.test_train import write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def vico_train(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "train", str(config), *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))


def test_more_steps_on_a_finished_run_is_refused_until_resume(tmp_path):
    version = write_shards(tmp_path / "v1", n_frames=4)
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {{vocab_size: 384, hidden_size: 32, intermediate_size: 64, window_tokens: 8, ratios: [2, 4], ratio: 4}}\n"
                      f"train: {{data: {version}, output: {run}, max_steps: 4, checkpoint_every: 2, max_frames: 4, "
                      f"lr: 0.001, warmup_ratio: 0.0, cpu_threads: 1}}\n")
    first = vico_train(config)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().splitlines()[-1] == str(run)
    progress = [line for line in first.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(" loss " in line and " lr " in line and " frames/s " in line and " ETA " in line for line in progress)

    refused = vico_train(config, "--set", "train.max_steps=6")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.max_steps: 4 -> 6" in lines[0] and "--resume" in lines[0], refused.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4

    resumed = vico_train(config, "--set", "train.max_steps=6", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from its step-4 checkpoint under a changed config" in resumed.stderr
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[4]["lr"] <= steps[3]["lr"]  # the 4-step cosine had reached its end: the rate does not jump back up
