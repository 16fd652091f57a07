"""Training loop: one plain function per worker, run in this process or under Ray Train.

Each optimizer step takes `grad_accum` samples per worker (batch 1, as Video-XL trains).
Which sample and which ratios a step uses follow from (seed, step), so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_model, latest_checkpoint, load_weights, save_checkpoint
from .config import ModelConfig, ModelUserError, TrainConfig
from .data import ShardRows, draw_ratios, encode_conversation, load_tokenizer, train_tokenizer
from .vision import frames_to_pixels, uniform_indices


def prepare_tokenizer(mcfg: ModelConfig, tcfg: TrainConfig) -> str:
    """The run's tokenizer folder: the configured one, else a BPE trained once on the shards' text."""
    out = Path(tcfg.output) / "tokenizer"
    if (out / "tokenizer.json").exists():
        return str(out)
    source = mcfg.tokenizer_path or mcfg.llm_path
    tok = load_tokenizer(source) if source else train_tokenizer(ShardRows(tcfg.data, "train").texts(), mcfg.vocab_size)
    if len(tok) > (mcfg.vocab_size if not mcfg.llm_path else 1 << 30):
        raise ModelUserError(f"tokenizer has {len(tok)} tokens, more than model.vocab_size={mcfg.vocab_size}")
    tok.save_pretrained(str(out))
    return str(out)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to zero."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def sample_index(position: int, n: int, rank: int, world: int, seed: int) -> int:
    """Row for a worker's `position`-th sample: a fresh shuffle each epoch, workers interleaved."""
    per_worker = max(1, n // world)
    epoch, i = divmod(position, per_worker)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[(i * world + rank) % n]


def prepare_sample(row: dict, tokenizer, model, mcfg: ModelConfig, max_frames: int, max_text_tokens: int,
                   ratios: list[int], rng: random.Random, device) -> dict:
    frames = row["frames"] or []
    keep = uniform_indices(len(frames), max_frames)
    size = model.vision.image_size
    pixels = frames_to_pixels([frames[i] for i in keep], size) if keep else torch.zeros(0, 3, size, size)
    text = encode_conversation(tokenizer, row["conversations"] or [], mcfg.system_prompt, max_text_tokens)
    return {
        "pre_ids": torch.tensor([text.pre_ids], device=device),
        "pixels": pixels.to(device),
        "post_ids": torch.tensor([text.post_ids], device=device),
        "labels": torch.tensor([text.labels], device=device),
        "ratios": draw_ratios(model.window_lengths(len(keep)), ratios, rng),
    }


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def train_loop(config: dict) -> None:
    """One worker's training. config: {"model": dict, "train": dict, "tokenizer": folder, "stop_at": int|None}."""
    mcfg, tcfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    device = torch.device("cuda", torch.cuda.current_device()) if tcfg.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    out = Path(tcfg.output)
    tokenizer = load_tokenizer(config["tokenizer"])
    rows = ShardRows(tcfg.data, "train")
    torch.manual_seed(tcfg.seed)

    model = build_model(mcfg, tokenizer.eos_token_id)
    model.set_gradient_checkpointing(tcfg.gradient_checkpointing)
    vision_lr = tcfg.lr if tcfg.vision_lr is None else tcfg.vision_lr
    if vision_lr == 0:
        model.vision.tower.requires_grad_(False)
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vision.tower.")], "lr": tcfg.lr},
              {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("vision.tower.")], "lr": vision_lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    warmup = max(1, math.ceil(tcfg.warmup_ratio * tcfg.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, tcfg.max_steps))

    step = 0
    ckpt = latest_checkpoint(out) if tcfg.resume else None
    if ckpt is not None:
        load_weights(model, ckpt)
        state = torch.load(ckpt / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    model.to(device)
    if rank == 0:
        _trim_metrics(out / "metrics.jsonl", step)

    train_model = model
    if world > 1:
        import ray.train.torch

        # A window-less sample leaves the VST projections unused; DDP must not wait for them.
        train_model = ray.train.torch.prepare_model(model, move_to_device=False,
                                                    parallel_strategy_kwargs={"find_unused_parameters": True})
    ratios = tcfg.ratios or mcfg.ratios
    use_bf16 = tcfg.bf16 and device.type == "cuda"
    stop_at = config.get("stop_at")
    model.train()
    while step < tcfg.max_steps and (stop_at is None or step < stop_at):
        t0 = time.time()
        total, frames = 0.0, 0
        for micro in range(tcfg.grad_accum):
            position = step * tcfg.grad_accum + micro
            rng = random.Random(f"{tcfg.seed}-{rank}-{position}")
            row = rows[sample_index(position, len(rows), rank, world, tcfg.seed)]
            s = prepare_sample(row, tokenizer, model, mcfg, tcfg.max_frames, tcfg.max_text_tokens, ratios, rng, device)
            frames += s["pixels"].shape[0]
            sync = micro == tcfg.grad_accum - 1 or world == 1
            ctx = train_model.no_sync() if not sync else _null()
            with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = train_model(s["pre_ids"], s["pixels"], s["post_ids"], s["labels"], s["ratios"])
            (loss / tcfg.grad_accum).backward()
            total += loss.item() / tcfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip) if tcfg.grad_clip > 0 else torch.tensor(0.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if world > 1:
            t = torch.tensor([total, frames], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            total, frames = t[0].item() / world, int(t[1].item())
        metrics = {"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "frames": frames, "seconds": round(time.time() - t0, 4), "workers": world}
        if rank == 0 and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if step % tcfg.checkpoint_every == 0 or step == tcfg.max_steps:
            rng_states = [_rng_state()]
            if world > 1:
                rng_states = [None] * world
                torch.distributed.all_gather_object(rng_states, _rng_state())
            if rank == 0:
                save_checkpoint(out, step, model, optimizer, scheduler, {"step": step, "rng": rng_states},
                                mcfg, tokenizer, tcfg.keep_checkpoints)
        if world > 1:
            import ray.train

            ray.train.report(metrics)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are about to be redone."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def run_training(mcfg: ModelConfig, tcfg: TrainConfig, stop_at: int | None = None) -> Path:
    """`vico train`: in this process (workers <= 1) or under Ray Train's TorchTrainer. Returns the run folder."""
    # Absolute paths: Ray Train workers run in their own working directories.
    tcfg = tcfg.model_copy(update={"data": str(Path(tcfg.data).resolve()), "output": str(Path(tcfg.output).resolve())})
    out = Path(tcfg.output)
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump({"model": mcfg.model_dump(mode="json"), "train": tcfg.model_dump(mode="json")}, sort_keys=False))
    config = {"model": mcfg.model_dump(), "train": tcfg.model_dump(), "tokenizer": prepare_tokenizer(mcfg, tcfg), "stop_at": stop_at}
    if tcfg.workers <= 1:
        with cpu_threads(tcfg.cpu_threads):
            train_loop(config)
    else:
        _train_with_ray(config, tcfg)
    return out


def _train_with_ray(config: dict, tcfg: TrainConfig) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():
        if tcfg.ray_address:
            ray.init(address=tcfg.ray_address)
        else:
            ray.init(address="local", num_cpus=tcfg.workers + 1, include_dashboard=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        started = True
    try:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=tcfg.workers, use_gpu=tcfg.use_gpu),
            torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
            run_config=RunConfig(storage_path=str((Path(tcfg.output) / "ray").resolve()), name="train"),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()


def _ray_worker(config: dict) -> None:
    torch.set_num_threads(config["train"].get("cpu_threads") or 1)  # several workers share the machine's CPUs
    train_loop(config)


class cpu_threads:
    """Sets torch's intra-op threads for a block and restores them after."""

    def __init__(self, n: int | None):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *a):
        torch.set_num_threads(self.before)
        return False
