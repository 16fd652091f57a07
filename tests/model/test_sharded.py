"""Sharded training (`train.strategy: fsdp`, PyTorch FSDP2 on gloo, CPU): two worker processes
match one process on the same global batch, each holds half of the training state, and sharded
checkpoints resume with another worker count (2 -> 1; 1 -> 2 through the real `vico train` with
Ray Train). No GPU here: bf16 mixed precision (CUDA only) is not exercised."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.model.test_train import losses, write_shards  # noqa: E402
from vico_pipeline.model.config import TrainConfig  # noqa: E402
from vico_pipeline.model.train import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# 4 samples (2 videos x 2 questions); one process takes 2 a step (grad_accum 2), two workers 1 each.
COMMON = dict(max_steps=5, lr=1e-3, warmup_ratio=0.0, checkpoint_every=2, keep_checkpoints=5, max_frames=4, cpu_threads=1)


def _worker(rank: int, config: dict, world: int, port: int) -> None:
    import torch.distributed as dist

    from vico_pipeline.model.train import train_loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train_loop(config)
    finally:
        dist.destroy_process_group()


def spawn_workers(config: dict, tcfg) -> None:
    """Starts train.workers processes with torch.multiprocessing (gloo on loopback) instead of Ray
    Train: the same training function, without Ray's start-up (the CLI test below runs Ray)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(config, tcfg.workers, port), nprocs=tcfg.workers)


def resume_copy(run: Path, step: int, dest: Path) -> Path:
    """A run folder holding only `run`'s checkpoint at `step` (and its config), to resume from there."""
    name = f"step-{step:07d}"
    shutil.copytree(run / "checkpoints" / name, dest / "checkpoints" / name)
    shutil.copy(run / "config.yaml", dest / "config.yaml")
    lines = (run / "metrics.jsonl").read_text().splitlines()[:step]
    (dest / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return dest


def test_two_fsdp_workers_match_one_process_hold_half_and_resume_with_one(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_train=2, n_frames=6, questions_per_video=2)
    mcfg = tiny_model_config()
    one = run_training(mcfg, TrainConfig(data=str(version), output=str(tmp_path / "one"), grad_accum=2, **COMMON))
    two = run_training(mcfg, TrainConfig(data=str(version), output=str(tmp_path / "two"), strategy="fsdp", workers=2,
                                         grad_accum=1, **COMMON), launch=spawn_workers)
    a, b = losses(one), losses(two)
    diff = max(abs(x - y) for x, y in zip(a, b))
    print(f"ddp x1 losses {a}\nfsdp x2 losses {b}\nmax abs diff {diff:.3g}")
    assert len(a) == len(b) == 5 and diff < 1e-4

    held_one = json.loads((one / "memory.json").read_text())
    held_two = json.loads((two / "memory.json").read_text())
    assert held_two["workers"] == 2 and held_two["strategy"] == "fsdp"
    # Only rank 0 built the whole model; rank 1 built its shapes on the meta device and took its
    # shards from rank 0 (the equal losses above say it got the same weights and buffers).
    assert held_two["built_whole_model"] == [True, False] and held_one["built_whole_model"] == [True]
    for key in ("param_bytes", "optimizer_bytes"):
        ratios = [rank / held_one[key][0] for rank in held_two[key]]
        print(f"{key}: one process {held_one[key][0]}, per fsdp rank {held_two[key]}, ratios {ratios}")
        assert all(abs(r - 0.5) <= 0.05 for r in ratios), (key, ratios)  # within 10% of 1/2
        assert sum(held_two[key]) == pytest.approx(held_one[key][0], rel=0.02)  # the shards add up to the whole

    # 2 -> 1: the fsdp run's step-2 checkpoint resumes in one process; step 3 has the same loss.
    resumed = run_training(mcfg, TrainConfig(data=str(version), output=str(resume_copy(two, 2, tmp_path / "two-to-one")),
                                             grad_accum=2, resume=True, **COMMON), stop_at=3)
    step3 = losses(resumed)[2]
    print(f"2 -> 1: step 3 loss {step3} vs {b[2]} ({abs(step3 - b[2]):.3g})")
    assert len(losses(resumed)) == 3 and abs(step3 - b[2]) < 1e-4


def test_fsdp_workers_whose_samples_differ_in_length_match_one_process(tmp_path, tiny_model_config):
    """Real samples differ in length: one worker's sample here has 4 windows, the other's 1. Every
    FSDP unit all-gathers each time it runs, so the shorter one runs idle windows (`VideoXL.idle`);
    without them gloo fails with "Received data size doesn't match expected size" (checked).
    The losses still equal one process's, so the idle windows change nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    version = write_shards(tmp_path / "v1", n_train=2, n_frames=8, questions_per_video=1)
    part = version / "shards" / "train" / "part-00000.parquet"
    rows = pq.read_table(part).to_pylist()
    rows[1] |= {"frames": rows[1]["frames"][:2], "frame_times_s": rows[1]["frame_times_s"][:2], "duration_s": 2.0}
    pq.write_table(pa.Table.from_pylist(rows), part)
    common = COMMON | {"max_frames": 8, "max_steps": 3, "checkpoint_every": 3, "activation_checkpointing": True}
    mcfg = tiny_model_config()
    one = run_training(mcfg, TrainConfig(data=str(version), output=str(tmp_path / "one"), grad_accum=2, **common))
    two = run_training(mcfg, TrainConfig(data=str(version), output=str(tmp_path / "two"), strategy="fsdp", workers=2,
                                         grad_accum=1, **common), launch=spawn_workers)
    a, b = losses(one), losses(two)
    print(f"ddp x1 losses {a}\nfsdp x2 losses {b}")
    assert len(a) == len(b) == 3 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    frames = [json.loads(line)["frames"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert frames == [10, 10, 10], frames  # 8 + 2 real frames a step; idle frames are not counted


def test_fsdp_workers_refuse_a_vision_chunk_smaller_than_a_window(tmp_path, tiny_model_config):
    """A window of 2 frames through the tower 1 frame at a time: a short last window would run the
    CLIP units fewer times than a full one on another worker. Every worker refuses in one line."""
    version = write_shards(tmp_path / "v1", n_train=2, n_frames=6, questions_per_video=1)
    with pytest.raises(Exception, match=r"model.vision_chunk_frames >= 2 \(the frames of a window\); it is 1"):
        run_training(tiny_model_config(vision_chunk_frames=1), TrainConfig(
            data=str(version), output=str(tmp_path / "two"), strategy="fsdp", workers=2, **COMMON), launch=spawn_workers)


def test_vico_train_fsdp_on_two_workers_resumes_a_one_process_run(tmp_path):
    """The real CLI with train.strategy=fsdp and train.workers=2 (Ray Train, gloo), going on from a
    one-process run's step-2 checkpoint: step 3's loss equals the one-process run's own step 3."""
    version = write_shards(tmp_path / "v1", n_train=2, n_frames=6, questions_per_video=2)
    config = tmp_path / "train.yaml"
    config.write_text("model: {vocab_size: 384, hidden_size: 32, intermediate_size: 64, window_tokens: 8, ratios: [2, 4], ratio: 4}\n"
                      f"train: {{data: {version}, output: {tmp_path / 'one'}, grad_accum: 2, max_steps: 5, lr: 0.001, "
                      "warmup_ratio: 0.0, checkpoint_every: 2, keep_checkpoints: 5, max_frames: 4, cpu_threads: 1}\n")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))

    def vico_train(*args):
        done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "train", str(config), *args], capture_output=True,
                              text=True, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    vico_train()
    straight = losses(tmp_path / "one")
    resume_copy(tmp_path / "one", 2, tmp_path / "two")
    done = vico_train("--resume", "--set", f"train.output={tmp_path / 'two'}", "--set", "train.strategy=fsdp",
                      "--set", "train.workers=2", "--set", "train.grad_accum=1")
    resumed = losses(tmp_path / "two")
    print(f"1 -> 2: step 3 loss {resumed[2]} vs {straight[2]} ({abs(resumed[2] - straight[2]):.3g})")
    assert "from its step-2 checkpoint" in done.stderr
    assert len(resumed) == 5 and abs(resumed[2] - straight[2]) < 1e-4
    held = json.loads((tmp_path / "two" / "memory.json").read_text())
    assert held["strategy"] == "fsdp" and held["workers"] == 2


def test_who_builds_the_whole_model():
    """Rank 0 alone builds it under fsdp with several workers; not with cpu_offload on GPUs (an NCCL
    group cannot broadcast into shards in CPU memory), nor under ddp or with one worker."""
    from vico_pipeline.model.sharding import built_on_rank0

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert built_on_rank0("fsdp", 2, cpu, False) and built_on_rank0("fsdp", 8, gpu, False)
    assert built_on_rank0("fsdp", 2, cpu, True)  # gloo broadcasts into CPU shards
    assert not built_on_rank0("fsdp", 8, gpu, True)
    assert not built_on_rank0("ddp", 8, gpu, False) and not built_on_rank0("fsdp", 1, gpu, False)
