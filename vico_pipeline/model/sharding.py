"""How workers share the model (`train.strategy`): whole copies (ddp) or sharded (fsdp, PyTorch FSDP2).

The model code knows nothing of this: `wrap` takes a built VideoXL and returns the module the
training loop calls. With fsdp every decoder layer and every CLIP encoder layer is one FSDP unit
(its parameters are all-gathered just before it runs and freed after), and the root unit holds
the rest (embeddings, lm_head, final norm, projector, CLIP embeddings). Each worker keeps 1/world
of the fp32 parameters, of their gradients and of the AdamW state.

Mixed precision (fsdp): on CUDA with `train.bf16`, parameters are all-gathered and computed in
bf16 while gradients are reduced and the sharded master weights and optimizer state kept in fp32.
On CPU everything stays fp32 (gloo, and so the tests can require equal losses with ddp).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Iterable

import torch
from torch import nn

from .vision import encoder_of


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as their own FSDP unit, in the order they run: CLIP layers, decoder layers."""
    return [*encoder_of(model.vision.tower).layers, *model.decoder.layers]


def wrap(model: nn.Module, strategy: str, world: int, device: torch.device, bf16: bool, cpu_offload: bool) -> nn.Module:
    """The module to call for a training step. ddp with one worker is the model itself."""
    if strategy == "fsdp":
        return shard(model, world, device, bf16, cpu_offload)
    model.to(device)
    if world <= 1:
        return model
    import ray.train.torch

    # A window-less sample leaves the VST projections unused; DDP must not wait for them.
    # Gradients as views of the buckets: no second copy of every gradient.
    return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy_kwargs={
        "find_unused_parameters": True, "gradient_as_bucket_view": True})


def built_on_rank0(strategy: str, world: int, device: torch.device, cpu_offload: bool) -> bool:
    """Whether rank 0 alone builds the whole model and the other workers take their shards from it
    (`from_rank0`): with fsdp over several workers, except with cpu_offload on GPUs, where the
    shards live in CPU memory and an NCCL group cannot broadcast into them (there every worker
    builds the whole model, as ddp workers do)."""
    return strategy == "fsdp" and world > 1 and not (cpu_offload and device.type == "cuda")


def shard(model: nn.Module, world: int, device: torch.device, bf16: bool, cpu_offload: bool) -> nn.Module:
    """FSDP2 over a 1-D mesh of all workers: one unit a layer, then the root. Shards land on `device`
    (or stay in CPU memory with cpu_offload, copied to the GPU a unit at a time)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    # Rank 0's whole model, taken before sharding: the workers that built theirs on the meta device
    # get their shards of it (references to the tensors, no copy).
    from_0 = built_on_rank0("fsdp", world, device, cpu_offload)
    whole = model.state_dict() if from_0 and torch.distributed.get_rank() == 0 else {}
    mesh = init_device_mesh(device.type, (world,))
    on_gpu = device.type == "cuda"
    precision = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 and on_gpu
                 else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy(pin_memory=on_gpu) if cpu_offload else OffloadPolicy()
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=precision, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=precision, offload_policy=offload)
    # As DDP's find_unused_parameters: a rank whose sample left a parameter unused (the VST
    # projections of a window-less sample) still takes part in its gradient's reduce-scatter.
    model.set_reduce_scatter_unused_params(True)
    if from_0:
        from_rank0(model, whole, torch.device("cpu") if cpu_offload else device, device)
    return model


def from_rank0(model: nn.Module, whole: dict, param_device: torch.device, device: torch.device) -> None:
    """Every worker's shards of rank 0's whole model (`whole`, empty elsewhere). A worker that
    built its model on the meta device first allocates its shards and buffers (uninitialised);
    then each parameter is broadcast from rank 0 and every worker keeps its shard, and every
    buffer (RoPE tables, CLIP position ids: not all of them are in a state dict) is broadcast
    whole. So a node holds one whole model in host memory, not one a worker."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model.to_empty(device=param_device)
        for module in model.modules():  # buffers are used where the layers run, offloaded or not
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(device)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def idle_windows(windows: int, strategy: str, world: int, device: torch.device) -> int:
    """How many idle windows this worker's micro-step runs (`VideoXL.idle`): with fsdp over several
    workers, the most windows any worker's sample has, less this one's; otherwise 0."""
    if strategy != "fsdp" or world <= 1:
        return 0
    import torch.distributed as dist

    most = torch.tensor([windows], dtype=torch.int64, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item()) - windows


def gradient_sync(train_model: nn.Module, sync: bool):
    """A context for one micro-step: gradients are reduced across workers only when `sync`
    (the last micro-step of gradient accumulation)."""
    if sync:
        if hasattr(train_model, "set_requires_gradient_sync"):
            train_model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2: a flag, not a context
        train_model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    if hasattr(train_model, "no_sync"):
        return train_model.no_sync()
    return contextlib.nullcontext()


def full_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ over sharded gradients returns one)."""
    return float(t.full_tensor()) if hasattr(t, "full_tensor") else float(t)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds for the tensors: a DTensor's local shard, a plain tensor whole."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What this process holds of the training state: parameters, gradients, optimizer state."""
    params = list({id(p): p for p in model.parameters()}.values())
    return {"param_bytes": local_bytes(params),
            "grad_bytes": local_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_bytes": local_bytes(v for state in optimizer.state.values() for v in state.values()
                                           if isinstance(v, torch.Tensor))}


@contextlib.contextmanager
def local_process_group(device: torch.device):
    """A process group of one (loopback), for fsdp in the calling process: FSDP2 and the sharded
    checkpoint need one. Ray Train sets up its own for its workers."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
