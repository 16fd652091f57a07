"""bench/videoxl_prefill.py runs end to end with tiny shapes on CPU (the GPU run uses the same code)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_bench_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "videoxl_prefill.py"), "--tiny", "--train-steps", "1", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert [p["frames"] for p in report["prefill"]] == [4, 8, 16]
    assert all(p["seconds"] > 0 and p["flops"] > 0 and p["tflops"] >= 0 for p in report["prefill"])
    # The cost of every answer after the first, read from the same memory (no timing bound here:
    # the CPU is shared; the GPU test below holds it under 5% of a prefill).
    assert all(p["answer_seconds"] > 0 and p["answer_fraction"] > 0 for p in report["prefill"])
    # Memory grows by window/ratio per window: 16 tokens a window at ratio 4 -> 4 VSTs.
    tokens = [p["memory_tokens"] for p in report["prefill"]]
    assert tokens[1] - tokens[0] == 4 and tokens[2] - tokens[1] == 8
    assert report["train_step"]["seconds_per_step"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="needs a CUDA GPU: Qwen2-7B + CLIP-L/336 shapes at 2048 frames")
def test_each_further_answer_costs_under_5_percent_of_a_prefill_at_2048_frames(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "videoxl_prefill.py"), "--frames", "2048", "--skip-train",
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=1800)
    row = json.loads(out.read_text())["prefill"][0]
    assert row["frames"] == 2048 and row["answer_fraction"] < 0.05, row
