"""INTP (arXiv 2409.12963): training-free interpolation to m times the trained frame count.

Two parts: interleaved-group token rearrangement, and NTK-aware RoPE base scaling.
"""

from __future__ import annotations

import torch


def interleaved_groups(n_frames: int, m: int) -> list[list[int]]:
    """Group j holds frames j, j+m, j+2m, ...: every group spans the whole video."""
    return [list(range(j, n_frames, m)) for j in range(m)]


def rearranged_order(n_frames: int, m: int) -> list[int]:
    """Frame index of each slot when the groups' outputs are concatenated group after group."""
    return [i for group in interleaved_groups(n_frames, m) for i in group]


def rearrange(frames: torch.Tensor, m: int, encode) -> torch.Tensor:
    """Encode each interleaved group separately, then put every frame's tokens back at its time slot.

    frames [T, ...]; encode maps [n, ...] -> [n, P, D]; returns [T, P, D] in time order.
    With a per-frame encoder (CLIP) this equals encoding in order; it matters for encoders that
    see a fixed number of frames together (Video-LLaVA's), which INTP was written for.
    """
    t = frames.shape[0]
    groups = interleaved_groups(t, m)
    encoded = torch.cat([encode(frames[g]) for g in groups], dim=0)  # slots in group order
    order = torch.tensor(rearranged_order(t, m), device=encoded.device)
    out = torch.empty_like(encoded)
    out[order] = encoded  # slot k holds frame order[k]
    return out


def ntk_rope_base(base: float, head_dim: int, scale: float) -> float:
    """NTK-aware RoPE scaling: b * s^(d/(d-2)); s <= 1 leaves the base unchanged."""
    if scale <= 1.0:
        return base
    return base * scale ** (head_dim / (head_dim - 2))


def context_scale(new_length: int, trained_length: int) -> float:
    """s = max(1, new sequence length / the LLM's trained context): a sequence that fits needs no scaling."""
    return max(1.0, new_length / max(1, trained_length))


def intp_rope_base(base: float, head_dim: int, target_length: int, trained_length: int) -> float:
    """INTP's RoPE base for a sequence of target_length tokens on an LLM trained on trained_length
    tokens (its max_position_embeddings, not the frame count the video model was tuned on)."""
    return ntk_rope_base(base, head_dim, context_scale(target_length, trained_length))
