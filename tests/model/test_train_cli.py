"""`vico train` as a user runs it (issue 13): progress on stderr, and `--set train.max_steps=N` on a
finished run refused in one line (exit 2) until `--resume`, which says so and goes on; a finished
schedule needs `--new-schedule` (issue 17)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

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

    # The 4-step schedule has ended: --resume alone would train at a rate of 0 (test below); --new-schedule warms up again.
    resumed = vico_train(config, "--set", "train.max_steps=6", "--resume", "--new-schedule")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from its step-4 checkpoint under a changed config" in resumed.stderr
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[4]["lr"] == pytest.approx(0.001)


def test_readme_example_trains_on_after_a_finished_run(tmp_path):
    """README: `vico train configs/train-tiny.yaml --set train.max_steps=30 --resume` after a 20-step run. The
    20-step schedule has reached a rate of 0 there: without --new-schedule it stops in one line (exit 2);
    with it, steps 21-30 train at a positive rate and the weights change."""
    from vico_pipeline.model.checkpoint import load_for_eval

    version = write_shards(tmp_path / "v1", n_frames=4)
    run = tmp_path / "run"
    config = ROOT / "configs" / "train-tiny.yaml"
    paths = ["--set", f"train.data={version}", "--set", f"train.output={run}"]
    first = vico_train(config, *paths)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 20

    refused = vico_train(config, *paths, "--set", "train.max_steps=30", "--resume")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "ended at step 20" in lines[0] and "--new-schedule" in lines[0], refused.stderr
    assert "train.schedule_steps" in lines[0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 20  # nothing was trained

    resumed = vico_train(config, *paths, "--set", "train.max_steps=30", "--resume", "--new-schedule")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "a new schedule" in resumed.stderr
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 31))
    assert steps[19]["lr"] < 0.01 * 0.001  # the first run's last step used a rate near 0 (0 after it) ...
    assert all(s["lr"] > 0 for s in steps[20:29])  # ... the new schedule warms up and decays over 21-30
    assert max(s["lr"] for s in steps[20:]) == pytest.approx(0.001, rel=0.05)
    before = load_for_eval(run / "checkpoints" / "step-0000020")[0].state_dict()
    after = load_for_eval(run / "checkpoints" / "step-0000030")[0].state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed

    again = vico_train(config, *paths, "--set", "train.max_steps=30", "--resume", "--new-schedule")
    assert again.returncode == 0 and "already trained to step 30" in again.stderr


# Runs `vico train` in a process that kills itself with SIGKILL the moment the step-4 checkpoint,
# every shard and file of it written into step-0000004.tmp, would be renamed into place.
KILLED_AT_RENAME = """
import os, signal, sys
replace = os.replace
def replace_or_die(src, dst):
    if str(dst).endswith("step-0000004"):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
os.replace = replace_or_die
from vico_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_while_saving_resumes_from_the_last_whole_checkpoint(tmp_path):
    """SIGKILL between writing a checkpoint and renaming it: the half checkpoint (.tmp) is never
    taken for one; `--resume` goes on from the step before and ends where a straight run ends."""
    version = write_shards(tmp_path / "v1", n_frames=4)
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {{vocab_size: 384, hidden_size: 32, intermediate_size: 64, window_tokens: 8, ratios: [2, 4], ratio: 4}}\n"
                      f"train: {{data: {version}, output: {tmp_path / 'straight'}, max_steps: 6, checkpoint_every: 2, "
                      f"keep_checkpoints: 5, max_frames: 4, lr: 0.001, warmup_ratio: 0.0, cpu_threads: 1}}\n")
    assert vico_train(config).returncode == 0
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME, "train", str(config), "--set", f"train.output={run}"],
                            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000004.tmp"], checkpoints
    assert (run / "checkpoints" / "step-0000004.tmp" / ".metadata").exists()  # the shards were all there

    resumed = vico_train(config, "--set", f"train.output={run}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "step-2 checkpoint" in resumed.stderr
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [s["loss"] for s in steps] == pytest.approx([s["loss"] for s in straight], abs=1e-6)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004", "step-0000006"]
