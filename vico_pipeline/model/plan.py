"""`vico train CONFIG --plan`: the bytes one GPU needs for the configured model and strategy,
computed without allocating the model (it is built on the meta device: shapes, no storage).

- Parameters, gradients, optimizer state: counted from the model's parameters. fp32 master
  weights (4 bytes), fp32 gradients of the trainable ones (4), AdamW's two fp32 moments (8) and
  its step. ddp: whole on every GPU. fsdp: a worker's shard, 1/workers (rounded up per tensor,
  as FSDP2 pads dim 0), plus what is all-gathered while it runs: the root unit (embeddings,
  lm_head, projector) for the whole step and two layer units (the running one and the
  prefetched one) in the compute dtype, and one unit's gradients before their reduce-scatter.
  cpu_offload moves the shards to CPU memory: the GPU keeps only what is all-gathered.
- Activations: what autograd keeps for the backward pass, for one sample of train.max_frames
  frames and `text_tokens` text tokens (default train.max_text_tokens after the video, plus the
  system prompt before it), every window at the smallest ratio (the most VSTs). It is found by
  running the model's own forward on meta tensors and adding up the distinct storages that
  saved-tensor hooks see (with activation checkpointing, a checkpointed layer keeps only its
  inputs, counted with forward pre-hooks). Attention is counted as the fused kernels of CPU and
  CUDA keep it (q, k, v, output, log-sum-exp, and a boolean mask turned into a float one), not
  as the T x S scores the meta device's fallback would keep.
- On CUDA with train.bf16, activations are in bf16 (fsdp computes in bf16; under ddp's autocast
  the residual stream stays fp32, so this part of the ddp plan is a lower bound) and ddp adds
  autocast's bf16 copies of the weights. Not counted: the CUDA context and allocator slack
  (~1-3 GB), NCCL buffers, transient workspaces inside one kernel.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .config import ModelConfig, TrainConfig

GiB = 1024**3


def memory_plan(mcfg: ModelConfig, tcfg: TrainConfig, text_tokens: int | None = None, pre_tokens: int = 24,
                ratios: list[int] | None = None) -> dict:
    """The plan as a dict of byte counts (per GPU, or per process on CPU)."""
    from .checkpoint import build_model
    from .sharding import fsdp_units
    from .freeze import freeze, frozen_parts

    world = max(1, tcfg.workers)
    gpu = tcfg.use_gpu
    compute = torch.bfloat16 if gpu and tcfg.bf16 else torch.float32
    with torch.device("meta"):
        model = build_model(mcfg, None, weights=False)
    freeze(model, frozen_parts(tcfg))  # frozen parts: no gradient, no optimizer state
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad]
    n_params, n_trainable = sum(p.numel() for p in params), sum(p.numel() for p in trainable)

    if tcfg.strategy == "fsdp":
        shard = lambda ps: sum(math.ceil(p.shape[0] / world) * (p.numel() // max(1, p.shape[0])) for p in ps)  # noqa: E731
        units = [sum(p.numel() for p in u.parameters()) for u in fsdp_units(model)]
        in_units = {id(p) for u in fsdp_units(model) for p in u.parameters()}
        root = sum(p.numel() for p in params if id(p) not in in_units)
        size = torch.tensor([], dtype=compute).element_size()
        gathered = (root + 2 * max(units)) * size + max(units) * (size + 4) if world > 1 or gpu else 0
        held = {"param_bytes": shard(params) * 4, "grad_bytes": shard(trainable) * 4,
                "optimizer_bytes": shard(trainable) * 8 + len(trainable) * 4}
        if tcfg.cpu_offload:
            held = {k: 0 for k in held}
    else:
        gathered = 0
        held = {"param_bytes": n_params * 4, "grad_bytes": n_trainable * 4,
                "optimizer_bytes": n_trainable * 8 + len(trainable) * 4}
    autocast_copies = n_params * 2 if gpu and tcfg.bf16 and tcfg.strategy == "ddp" else 0

    text = text_tokens if text_tokens is not None else tcfg.max_text_tokens
    ratios = ratios or [min(tcfg.ratios or mcfg.ratios)]
    model.to(compute)
    acts = {on: activation_bytes(model, tcfg.max_frames, pre_tokens, text, ratios, on) for on in (False, True)}
    state = sum(held.values()) + gathered + autocast_copies
    return {
        "strategy": tcfg.strategy, "workers": world, "device": "cuda" if gpu else "cpu", "compute_dtype": str(compute)[6:],
        "cpu_offload": tcfg.cpu_offload, "parameters": n_params, "trainable_parameters": n_trainable,
        "max_frames": tcfg.max_frames, "text_tokens": pre_tokens + text,
        **held, "gathered_bytes": gathered, "autocast_copy_bytes": autocast_copies,
        "activation_bytes": acts[False], "activation_checkpointing_bytes": acts[True],
        "total_bytes": state + acts[tcfg.activation_checkpointing],
        "total_without_checkpointing_bytes": state + acts[False], "total_with_checkpointing_bytes": state + acts[True],
        "activation_checkpointing": tcfg.activation_checkpointing,
    }


def activation_bytes(model, frames: int, pre_tokens: int, post_tokens: int, ratios: list[int], checkpointing: bool) -> int:
    """Bytes autograd keeps for backward over one training forward of the model (any device,
    meta included): distinct storages of saved tensors, and of checkpointed layers' inputs."""
    from .vision import encoder_of

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    size = model.vision.image_size
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    kept: dict = {}
    weights = {p.untyped_storage()._cdata for p in model.parameters()}  # saved weights (and views of them) are not activations

    def keep(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage._cdata not in weights:
                kept[storage._cdata] = storage.nbytes()
        elif isinstance(t, (list, tuple)):
            for x in t:
                keep(x)

    def pack(t):
        keep(t)
        return t

    hooks = []
    if checkpointing:  # a checkpointed layer keeps its inputs (and recomputes the rest)
        for layer in [*model.decoder.layers, *encoder_of(model.vision.tower).layers]:
            hooks.append(layer.register_forward_pre_hook(lambda m, args, kwargs: keep([*args, *kwargs.values()]),
                                                         with_kwargs=True))
    ids = lambda n: torch.zeros(1, n, dtype=torch.long, device=device)  # noqa: E731
    pixels = torch.zeros(frames, 3, size, size, dtype=dtype, device=device)
    windows = model.window_lengths(frames)
    per_window = [ratios[i % len(ratios)] for i in range(len(windows))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fused_attention(device):
            memory = model.encode_video(ids(pre_tokens), pixels, per_window)
            logits, _ = model.read(memory, ids(post_tokens))
            F.cross_entropy(logits[0, :-1].float(), ids(post_tokens)[0, 1:])  # as VideoXL.forward's loss
    finally:
        for h in hooks:
            h.remove()
        model.set_gradient_checkpointing(False)
    return sum(kept.values())


class _FusedAttention(torch.autograd.Function):
    """Stands in for scaled_dot_product_attention on the meta device, keeping for backward what
    the fused CPU/CUDA kernels keep: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        saved = (q, k, v, out, lse) + ((bias,) if bias is not None else ())
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the memory plan's attention runs forward only")


@contextlib.contextmanager
def fused_attention(device: torch.device):
    """On meta tensors only: attention as the fused kernels keep it (see _FusedAttention)."""
    if device.type != "meta":
        yield
        return
    original = F.scaled_dot_product_attention

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **kw):
        bias = attn_mask
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # turned into a float mask on every call
            bias = torch.empty(attn_mask.shape, dtype=q.dtype, device=q.device)
        return _FusedAttention.apply(q, k, v, bias)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def plan_table(plan: dict) -> str:
    """The plan as the lines `vico train --plan` prints."""
    where = f"{plan['workers']} GPU{'s' if plan['workers'] > 1 else ''}" if plan["device"] == "cuda" else \
        f"{plan['workers']} CPU process{'es' if plan['workers'] > 1 else ''}"
    offload = ", shards in CPU memory (cpu_offload)" if plan["cpu_offload"] else ""
    lines = [f"memory plan: {plan['parameters'] / 1e9:.2f} B parameters ({plan['trainable_parameters'] / 1e9:.2f} B trained), "
             f"strategy {plan['strategy']} on {where}{offload}, {plan['compute_dtype']} compute, "
             f"{plan['max_frames']} frames and {plan['text_tokens']} text tokens a sample",
             f"{'per ' + ('GPU' if plan['device'] == 'cuda' else 'process'):<44}{'bytes':>16}{'GiB':>9}"]
    rows = [("parameters (fp32 master)", plan["param_bytes"]), ("gradients (fp32)", plan["grad_bytes"]),
            ("optimizer state (AdamW, fp32)", plan["optimizer_bytes"])]
    if plan["strategy"] == "fsdp":
        rows.append(("all-gathered units in flight", plan["gathered_bytes"]))
    if plan["autocast_copy_bytes"]:
        rows.append(("autocast bf16 weight copies", plan["autocast_copy_bytes"]))
    rows += [("activations, no checkpointing", plan["activation_bytes"]),
             ("activations, activation checkpointing", plan["activation_checkpointing_bytes"]),
             ("total without checkpointing", plan["total_without_checkpointing_bytes"]),
             ("total with checkpointing", plan["total_with_checkpointing_bytes"])]
    lines += [f"{name:<44}{value:>16,}{value / GiB:>9.2f}" for name, value in rows]
    lines.append(f"as configured (train.activation_checkpointing: {str(plan['activation_checkpointing']).lower()}): "
                 f"{plan['total_bytes'] / GiB:.2f} GiB; not counted: CUDA context and allocator slack (~1-3 GiB)")
    return "\n".join(lines)
