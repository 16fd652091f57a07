"""Training loop: one plain function per worker, run in this process or under Ray Train.

A sample is one question of a video (vico.md), with the frames that show its evidence and
the time header naming them; several questions only with `train.pack_questions`.
Each optimizer step takes `grad_accum` samples per worker (batch 1, as Video-XL trains).
Which sample and which ratios a step uses follow from (seed, step), so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_model, latest_checkpoint, load_training_state, load_weights, resolved, save_checkpoint
from .config import ModelConfig, ModelUserError, TrainConfig
from .data import QuestionSamples, ShardRows, load_tokenizer, stand_in_engines, train_tokenizer
from .freeze import freeze, frozen_parts, init_checkpoint, param_groups
from .loader import FrameLayout, PositionSamples, training_samples
from .schedule import Schedule, resumed_schedule, saved_schedule
from .sharding import (built_on_rank0, full_value, gradient_sync, held_bytes, idle_windows, local_process_group,
                       wrap)


def prepare_tokenizer(mcfg: ModelConfig, tcfg: TrainConfig, init: Path | None = None) -> str:
    """The run's tokenizer folder: the configured one, else that of the checkpoint the run starts
    from (`init`), else a BPE trained once on the shards' text."""
    out = Path(tcfg.output) / "tokenizer"
    if (out / "tokenizer.json").exists():
        return str(out)
    source = mcfg.tokenizer_path or (str(init / "tokenizer") if init else None) or mcfg.llm_path
    tok = load_tokenizer(source) if source else train_tokenizer(ShardRows(tcfg.data, "train").texts(), mcfg.vocab_size)
    if len(tok) > (mcfg.vocab_size if not mcfg.llm_path else 1 << 30):
        raise ModelUserError(f"tokenizer has {len(tok)} tokens, more than model.vocab_size={mcfg.vocab_size}")
    tok.save_pretrained(str(out))
    return str(out)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def train_loop(config: dict) -> None:
    """One worker's training. config: {"model": dict, "train": dict, "tokenizer": folder,
    "resume": checkpoint folder or None, "stop_at": int|None}."""
    mcfg, tcfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    stop_at = config.get("stop_at")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    device = torch.device("cuda", torch.cuda.current_device()) if tcfg.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    out = Path(tcfg.output)
    tokenizer = load_tokenizer(config["tokenizer"])
    samples = QuestionSamples(tcfg.data, "train", tcfg.max_frames, tcfg.pack_questions, tcfg.seed)
    torch.manual_seed(tcfg.seed)

    # With fsdp over several workers only rank 0 builds the whole model (weights read, VSTs set up);
    # the others build its shapes on the meta device and get their shards from rank 0 (sharding.shard).
    lean = rank > 0 and built_on_rank0(tcfg.strategy, world, device, tcfg.cpu_offload)
    with torch.device("meta") if lean else contextlib.nullcontext():
        model = build_model(mcfg, tokenizer.eos_token_id, weights=not lean)
    if tcfg.strategy == "fsdp" and world > 1 and model.vision.chunk_frames < model.window_frames:
        # A short last window would then run the CLIP units fewer times than a full one elsewhere
        # (see VideoXL.idle): every worker refuses, before any collective.
        raise ModelUserError(f"train.strategy fsdp on {world} workers needs model.vision_chunk_frames >= "
                             f"{model.window_frames} (the frames of a window); it is {model.vision.chunk_frames}")
    model.set_gradient_checkpointing(tcfg.activation_checkpointing)
    if config.get("init") and not config.get("resume") and not lean:  # a stage starting from the previous stage's weights
        load_weights(model, Path(config["init"]))
    freeze(model, frozen_parts(tcfg))
    resume = Path(config["resume"]) if config.get("resume") else None
    train_model = wrap(model, tcfg.strategy, world, device, tcfg.bf16, tcfg.cpu_offload)
    built = {"built_whole_model": not lean, "host_peak_after_build_bytes": host_peak_bytes()}
    # After wrapping: with fsdp the optimizer holds (and keeps state for) this worker's shards only.
    optimizer = torch.optim.AdamW(param_groups(model, tcfg), betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    schedule = Schedule(**config["schedule"]) if config.get("schedule") else Schedule.of(tcfg)  # run_training chose it

    step = 0
    if resume:
        state = load_training_state(model, optimizer, resume)
        for group in optimizer.param_groups:  # the config being run sets the hyperparameters, not the old run's
            group.update(betas=tcfg.betas, weight_decay=tcfg.weight_decay)
        step = state["step"]
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    if rank == 0:
        _trim_metrics(out / "metrics.jsonl", step)

    end = min(tcfg.max_steps, stop_at if stop_at is not None else tcfg.max_steps)
    batches = training_samples(PositionSamples(samples, tokenizer, FrameLayout.of(model), mcfg, tcfg, rank, world),
                               step * tcfg.grad_accum, max(step, end) * tcfg.grad_accum, tcfg, device.type == "cuda")
    use_bf16 = tcfg.bf16 and device.type == "cuda" and tcfg.strategy == "ddp"  # fsdp casts by its own policy
    progress = Progress(step, tcfg.max_steps) if rank == 0 else None
    model.train()
    first_step = step
    while step < tcfg.max_steps and (stop_at is None or step < stop_at):
        t0 = time.time()
        lr = schedule.factor(step)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr
        total, frames = 0.0, 0
        for micro in range(tcfg.grad_accum):
            s = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(batches).items()}
            frames += s["pixels"].shape[0]
            sync = micro == tcfg.grad_accum - 1 or world == 1
            idle = idle_windows(len(s["ratios"]), tcfg.strategy, world, device)
            with gradient_sync(train_model, sync), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = train_model(s["pre_ids"], s["pixels"], s["post_ids"], s["labels"], s["ratios"], idle_windows=idle)
            (loss / tcfg.grad_accum).backward()
            total += loss.item() / tcfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip) if tcfg.grad_clip > 0 else torch.tensor(0.0)
        optimizer.step()
        if step == first_step:  # the first step of this process: gradients and AdamW state now exist
            _write_held_bytes(out / "memory.json", model, optimizer, tcfg.strategy, rank, world, built)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if world > 1:
            t = torch.tensor([total, frames], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            total, frames = t[0].item() / world, int(t[1].item())
        metrics = {"step": step, "loss": total, "lr": optimizer.param_groups[0]["lr"], "grad_norm": full_value(grad_norm),
                   "frames": frames, "seconds": round(time.time() - t0, 4), "workers": world}
        if progress is not None:
            progress.update(metrics)
        if rank == 0 and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            progress.print()
        if step % tcfg.checkpoint_every == 0 or step == tcfg.max_steps:
            rng_states = [_rng_state()]
            if world > 1:
                rng_states = [None] * world
                torch.distributed.all_gather_object(rng_states, _rng_state())
            # Every worker writes its shards (torch.distributed.checkpoint); rank 0 the rest.
            save_checkpoint(out, step, model, optimizer, schedule, {"step": step, "rng": rng_states,
                            "schedule": schedule.state_dict()}, mcfg, tokenizer, tcfg.keep_checkpoints)
        if config.get("ray"):
            import ray.train

            ray.train.report(metrics)


class Progress:
    """One line on stderr a logged step: step, loss, learning rate, frames/s and the time left."""

    def __init__(self, step: int, total: int):
        self.first, self.total, self.start = step, total, time.time()
        self.metrics: dict = {}

    def update(self, metrics: dict) -> None:
        self.metrics = metrics

    def line(self) -> str:
        m = self.metrics
        done = m["step"] - self.first
        elapsed = time.time() - self.start
        eta = elapsed / done * (self.total - m["step"]) if done else 0.0
        rate = m["frames"] / m["seconds"] if m["seconds"] > 0 else 0.0
        return (f"step {m['step']}/{self.total}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
                f"frames/s {rate:.1f}  ETA {clock(eta)}")

    def print(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def host_peak_bytes() -> int | None:
    """Peak resident memory of this process's address space (VmHWM: since its exec, where
    getrusage's peak also counts the process it was forked from); None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kb) * 1024 if kb else None


def _write_held_bytes(path: Path, model, optimizer, strategy: str, rank: int, world: int, built: dict) -> None:
    """memory.json: the bytes each worker holds of parameters, gradients and optimizer state (its
    local shards under fsdp), measured after the first optimizer step of this process; `built`
    (whether it built the whole model, its peak resident host memory once the model was built and
    sharded), and its peak resident host memory after that first step."""
    held = held_bytes(model, optimizer) | built | {"host_peak_bytes": host_peak_bytes()}
    every = [held]
    if world > 1:
        every = [None] * world
        torch.distributed.all_gather_object(every, held)
    if rank == 0:
        path.write_text(json.dumps({"strategy": strategy, "workers": world,
                                    **{k: [h[k] for h in every] for k in held}}, indent=2) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are about to be redone."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def run_training(mcfg: ModelConfig, tcfg: TrainConfig, stop_at: int | None = None, launch=None) -> Path:
    """`vico train`: in this process (workers <= 1) or under Ray Train's TorchTrainer (`launch(config, tcfg)`
    starts the workers another way: tests use torch.multiprocessing). Returns the run folder."""
    # Absolute paths: Ray Train workers run in their own working directories.
    tcfg = tcfg.model_copy(update={"data": str(Path(tcfg.data).resolve()), "output": str(Path(tcfg.output).resolve()),
                                   "init_from": str(Path(tcfg.init_from).resolve()) if tcfg.init_from else None})
    out = Path(tcfg.output)
    mcfg = resolved(mcfg)  # shapes, feature layer, beacon settings written out: checkpoints are self-contained
    check_provenance(tcfg)
    resume, schedule = resume_from(out, mcfg, tcfg)  # refusals first: a refused run prints nothing else
    init = init_checkpoint(tcfg, mcfg)
    samples = QuestionSamples(tcfg.data, "train", tcfg.max_frames, tcfg.pack_questions, tcfg.seed)
    if not len(samples):
        raise ModelUserError(f"no training sample in {tcfg.data}: no question's evidence fits in "
                             f"train.max_frames={tcfg.max_frames} frames (raise it)")
    say(samples.summary())
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump({"model": mcfg.model_dump(mode="json"), "train": tcfg.model_dump(mode="json")}, sort_keys=False))
    config = {"model": mcfg.model_dump(), "train": tcfg.model_dump(), "tokenizer": prepare_tokenizer(mcfg, tcfg, init),
              "resume": str(resume) if resume else None, "init": str(init) if init else None, "stop_at": stop_at, "schedule": schedule.state_dict()}
    if tcfg.workers <= 1:
        device = torch.device("cuda" if tcfg.use_gpu and torch.cuda.is_available() else "cpu")
        group = local_process_group(device) if tcfg.strategy == "fsdp" else _null()
        with cpu_threads(tcfg.cpu_threads), group:
            train_loop(config)
    else:
        (launch or _train_with_ray)(config, tcfg)
    return out


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_provenance(tcfg: TrainConfig) -> None:
    """Data from stand-in engines (no model behind them) is for demos and tests, not for a model."""
    engines = stand_in_engines(tcfg.data)
    if engines and not tcfg.allow_stand_in_data:
        raise ModelUserError(f"{tcfg.data} was made by stand-in engines ({', '.join(sorted(engines))}), not by models; "
                             "set train.allow_stand_in_data=true to train on it anyway (the demo configs do)")


# Keys that change how a run is carried out, not what it computes: a run resumes across them.
OPERATIONAL_KEYS = frozenset({"output", "resume", "new_schedule", "cpu_threads", "log_every", "checkpoint_every",
                              "keep_checkpoints", "ray_address", "allow_stand_in_data", "loader_workers", "loader_prefetch"})


def config_changes(saved: dict, mcfg: ModelConfig, tcfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(model keys, train keys) that differ from a run folder's config.yaml, as "key: old -> new"."""
    def diff(section: str, cls, now: dict, skip=frozenset()) -> list[str]:
        before = cls(**{k: v for k, v in (saved.get(section) or {}).items() if k in cls.model_fields})
        if cls is ModelConfig:  # runs saved before configs were resolved compare by what they resolve to
            try:
                before = resolved(before)
            except ModelUserError:
                pass
        before = before.model_dump(mode="json")
        return [f"{section}.{k}: {before[k]} -> {now[k]}" for k in now if k not in skip and before.get(k) != now[k]]

    return (diff("model", ModelConfig, mcfg.model_dump(mode="json")),
            diff("train", TrainConfig, tcfg.model_dump(mode="json"), OPERATIONAL_KEYS))


def resume_from(out: Path, mcfg: ModelConfig, tcfg: TrainConfig) -> tuple[Path | None, Schedule]:
    """The checkpoint to go on from (None: a fresh run) and the schedule to follow, said in one line;
    a run folder that holds a run with another config is refused unless train.resume (`--resume`) is set."""
    import yaml

    ckpt = latest_checkpoint(out) if (out / "checkpoints").exists() else None
    if ckpt is None:
        return None, Schedule.of(tcfg)
    step = int((ckpt / "done").read_text())
    saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else {}
    model_changes, train_changes = config_changes(saved or {}, mcfg, tcfg)
    if model_changes:
        raise ModelUserError(f"train.output {out} holds a run of another model ({'; '.join(model_changes[:3])}); "
                             "use a new train.output")
    if train_changes and not tcfg.resume:
        raise ModelUserError(f"train.output {out} holds a run at step {step} with another config "
                             f"({'; '.join(train_changes[:3])}); use a new train.output, or --resume to continue it")
    schedule, how = resumed_schedule(saved_schedule(ckpt), step, tcfg, out)
    if not train_changes:
        say(f"resuming {out} from its step-{step} checkpoint (same config)" if step < tcfg.max_steps
            else f"{out} is already trained to step {step} of train.max_steps={tcfg.max_steps}: nothing to do")
    else:
        say(f"resuming {out} from its step-{step} checkpoint under a changed config ({'; '.join(train_changes[:3])}): {how}")
    return ckpt, schedule


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
    train_loop(config | {"ray": True})


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


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
