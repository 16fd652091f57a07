"""A compact Qwen2-compatible decoder with per-layer VST projections.

Parameter names follow Hugging Face Qwen2 without the `model.` prefix, so Qwen2 weights
load by name. Keys are returned *before* RoPE: the VST memory re-positions them every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelUserError


@dataclass
class DecoderDims:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768  # the context the LLM was trained on (INTP scales beyond it)
    rope_linear_factor: float = 1.0  # rope_scaling "linear": positions divided by this factor

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderDims":
        """From a Qwen2 `config.json` (transformers 4.x keeps rope_theta at top level, 5.x in rope_parameters)."""
        theta, linear, trained = rope_settings(cfg)
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rope_theta=float(theta),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=trained,
            rope_linear_factor=linear,
        )


def rope_settings(cfg: dict) -> tuple[float, float, int]:
    """(RoPE base, linear factor, trained context) from a Qwen2 `config.json`. Only plain and
    linear RoPE are implemented; any other scaling is refused rather than silently ignored."""
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind not in ("default", "linear"):
        raise ModelUserError(f"rope_scaling {kind!r} in the LLM's config.json is not implemented (plain and linear RoPE are)")
    theta = float(cfg.get("rope_theta") or scaling.get("rope_theta") or 10000.0)
    linear = float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0
    trained = int(scaling.get("original_max_position_embeddings") or cfg.get("max_position_embeddings") or 32768)
    return theta, linear, trained


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # variance in fp32, as Qwen2 does
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype, linear: float = 1.0):
    """cos/sin tables [T, head_dim] for integer positions, computed in fp32 (linear > 1: positions / linear)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    inv_freq = inv_freq / linear
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = d.num_heads, d.num_kv_heads, d.head_dim
        self.q_proj = nn.Linear(d.hidden_size, d.num_heads * d.head_dim, bias=True)
        self.k_proj = nn.Linear(d.hidden_size, d.num_kv_heads * d.head_dim, bias=True)
        self.v_proj = nn.Linear(d.hidden_size, d.num_kv_heads * d.head_dim, bias=True)
        self.o_proj = nn.Linear(d.num_heads * d.head_dim, d.hidden_size, bias=False)
        # VST positions use their own q/k/v (Video-XL's beacon_q/k/v); o_proj and the MLP are shared.
        self.vst_q_proj = nn.Linear(d.hidden_size, d.num_heads * d.head_dim, bias=True)
        self.vst_k_proj = nn.Linear(d.hidden_size, d.num_kv_heads * d.head_dim, bias=True)
        self.vst_v_proj = nn.Linear(d.hidden_size, d.num_kv_heads * d.head_dim, bias=True)

    def copy_vst_from_base(self) -> None:
        """VST projections start as copies of the layer's own q/k/v."""
        with torch.no_grad():
            for name in ("q", "k", "v"):
                getattr(self, f"vst_{name}_proj").load_state_dict(getattr(self, f"{name}_proj").state_dict())

    def project(self, x: torch.Tensor, vst_idx: torch.Tensor | None):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if vst_idx is not None and vst_idx.numel():
            xv = x.index_select(1, vst_idx)
            q = q.index_copy(1, vst_idx, self.vst_q_proj(xv))
            k = k.index_copy(1, vst_idx, self.vst_k_proj(xv))
            v = v.index_copy(1, vst_idx, self.vst_v_proj(xv))
        b, t, _ = x.shape
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x, cos, sin, mask, past, vst_idx):
        """x [B,T,D]; cos/sin [M+T, d] for key positions 0..M+T-1; past (k, v) pre-RoPE [B,Hkv,M,d] or None."""
        q, k, v = self.project(x, vst_idx)
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        t = q.shape[2]
        q = apply_rope(q, cos[-t:], sin[-t:])
        k = apply_rope(k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        # Repeat KV heads explicitly: the fused kernels with a mask do not all take GQA.
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # Explicit width: an empty chunk (no text before the video) has 0 elements to infer it from.
        out = out.transpose(1, 2).reshape(x.shape[0], t, self.num_heads * self.head_dim)
        return self.o_proj(out), new_kv


class MLP(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.gate_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.down_proj = nn.Linear(d.intermediate_size, d.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.input_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.self_attn = Attention(d)
        self.post_attention_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.mlp = MLP(d)

    def forward(self, x, cos, sin, mask, past, vst_idx):
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, vst_idx)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


def chunk_mask(t: int, m: int, device) -> torch.Tensor | None:
    """Chunk of t tokens after m memory tokens: every token sees the memory, then its chunk causally."""
    if m == 0:
        return None
    rows = torch.arange(t, device=device)[:, None]
    cols = torch.arange(m + t, device=device)[None, :]
    return cols <= rows + m


class Decoder(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.dims = d
        self.embed_tokens = nn.Embedding(d.vocab_size, d.hidden_size)
        self.layers = nn.ModuleList(Block(d) for _ in range(d.num_layers))
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.lm_head = nn.Linear(d.hidden_size, d.vocab_size, bias=False)
        if d.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.vst_embed = nn.Embedding(1, d.hidden_size)  # the VST's own embedding (Video-XL's beacon_embed_tokens)
        self.gradient_checkpointing = False
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def init_vst(self, eos_id: int | None) -> None:
        """VST embedding from the EOS embedding, VST q/k/v from each layer's own."""
        with torch.no_grad():
            if eos_id is not None:
                self.vst_embed.weight.copy_(self.embed_tokens.weight[eos_id][None])
            for block in self.layers:
                block.self_attn.copy_vst_from_base()

    def forward(self, x: torch.Tensor, past=None, vst_idx: torch.Tensor | None = None, rope_base: float | None = None):
        """x: embeddings [B,T,D] of one chunk; past: per-layer (k, v) pre-RoPE memory or None.

        Returns final-normed hidden states [B,T,D] and this chunk's per-layer (k, v), pre-RoPE.
        Positions are renumbered 0..M+T-1: memory keys first, the chunk last.
        """
        m = past[0][0].shape[2] if past else 0
        t = x.shape[1]
        positions = torch.arange(m + t, device=x.device)
        cos, sin = rope_cos_sin(positions, self.dims.head_dim, rope_base or self.dims.rope_theta, x.dtype,
                                self.dims.rope_linear_factor)
        mask = chunk_mask(t, m, x.device)
        new_kv = []
        for i, block in enumerate(self.layers):
            layer_past = past[i] if past else None
            if self.gradient_checkpointing and self.training:
                x, kv = checkpoint(block, x, cos, sin, mask, layer_past, vst_idx, use_reentrant=False)
            else:
                x, kv = block(x, cos, sin, mask, layer_past, vst_idx)
            new_kv.append(kv)
        return self.norm(x), new_kv

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Plain causal LM over token ids, no memory: the path checked against transformers' Qwen2."""
        h, _ = self.forward(self.embed_tokens(ids))
        return self.lm_head(h)


def count_flops_per_token(d: DecoderDims, context: int) -> float:
    """Forward FLOPs of one token attending to `context` keys (matmuls only), for throughput reports."""
    qkv = 2 * d.hidden_size * (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    attn_out = 2 * d.num_heads * d.head_dim * d.hidden_size
    mlp = 2 * 3 * d.hidden_size * d.intermediate_size
    scores = 2 * 2 * d.num_heads * d.head_dim * context
    return float(d.num_layers * (qkv + attn_out + mlp + scores))
