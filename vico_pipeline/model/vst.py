"""VST memory: the decoder compresses the visual stream window by window into VST key/values.

Order for one sample: text before the video (the sink, kept whole); each window of visual
tokens with one VST after every `ratio` tokens, run against the memory (sink + VSTs so far),
after which only its VSTs' key/values are kept; then the text after the video, uncompressed.
Every call starts from nothing: the memory is a value returned to the caller, never state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import Decoder
from .vision import VisionSide

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Memory:
    kv: KV  # per layer (k, v), pre-RoPE, [B, Hkv, length, head_dim]
    sink: int
    window_vsts: list[int] = field(default_factory=list)  # VSTs (or kept tokens) each window added

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2]


def vst_positions(n_visual: int, ratio: int | None) -> list[int]:
    """Indices of the VSTs inside a window of n_visual tokens: one after every `ratio` visual tokens
    (and one after a last, shorter group). None means no compression: no VSTs."""
    if not ratio:
        return []
    return [min((g + 1) * ratio, n_visual) + g for g in range(math.ceil(n_visual / ratio))]


def interleave(visual: torch.Tensor, vst: torch.Tensor, ratio: int | None):
    """visual [B,L,D] -> window chunk [B, L+L/r, D] as [r visual][VST][r visual][VST]..., and the VST indices."""
    b, n, d = visual.shape
    positions = vst_positions(n, ratio)
    vst_idx = torch.tensor(positions, dtype=torch.long, device=visual.device)
    if not positions:
        return visual, vst_idx
    total = n + len(positions)
    # The visual slots from Python ints: no nonzero(), which would wait on the GPU (and has no meta kernel).
    taken = set(positions)
    vis_idx = torch.tensor([i for i in range(total) if i not in taken], dtype=torch.long, device=visual.device)
    chunk = visual.new_zeros(b, total, d)
    chunk = chunk.index_copy(1, vis_idx, visual).index_copy(1, vst_idx, vst.expand(b, vst_idx.numel(), d))
    return chunk, vst_idx


def append(memory: KV | None, kv: KV, keep: torch.Tensor | None = None) -> KV:
    if keep is not None:
        kv = [(k.index_select(2, keep), v.index_select(2, keep)) for k, v in kv]
    if memory is None:
        return list(kv)
    return [(torch.cat([mk, k], 2), torch.cat([mv, v], 2)) for (mk, mv), (k, v) in zip(memory, kv)]


def window_lengths(n_frames: int, window_frames: int, tokens_per_frame: int) -> list[int]:
    """Visual tokens in each window of `window_frames` frames for n_frames frames."""
    return [min(window_frames, n_frames - s) * tokens_per_frame for s in range(0, n_frames, window_frames)]


class VideoXL(nn.Module):
    def __init__(self, decoder: Decoder, vision: VisionSide, window_tokens: int = 1440):
        super().__init__()
        self.decoder, self.vision = decoder, vision
        self.window_tokens = window_tokens

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute activations in the backward pass: per decoder layer, and per CLIP layer
        (128 frames of CLIP-L activations alone would need ~50 GB)."""
        self.decoder.gradient_checkpointing = on
        tower = self.vision.tower
        # transformers >= 5.2x names it "activation", older versions "gradient" checkpointing.
        prefix = "activation" if hasattr(tower, "activation_checkpointing_enable") else "gradient"
        if on:
            getattr(tower, f"{prefix}_checkpointing_enable")(**{f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}})
        else:
            getattr(tower, f"{prefix}_checkpointing_disable")()

    @property
    def window_frames(self) -> int:
        return max(1, self.window_tokens // self.vision.tokens_per_frame)

    def window_count(self, n_frames: int) -> int:
        return math.ceil(n_frames / self.window_frames)

    def window_lengths(self, n_frames: int) -> list[int]:
        """Visual tokens in each window for n_frames frames."""
        return window_lengths(n_frames, self.window_frames, self.vision.tokens_per_frame)

    def encode_video(self, pre_ids, pixels=None, ratios=None, rope_base=None, visual=None) -> Memory:
        """Sink + compressed video. pixels [N,3,H,W] (or precomputed `visual` [N,P,D]);
        ratios: one int/None for all windows, or a list with one per window (None = keep every token)."""
        dec = self.decoder
        _, kv = dec(dec.embed_tokens(pre_ids), rope_base=rope_base)
        memory, sink = kv, pre_ids.shape[1]
        n = visual.shape[0] if visual is not None else (0 if pixels is None else pixels.shape[0])
        wf = self.window_frames
        added = []
        for w, start in enumerate(range(0, n, wf)):
            vis = visual[start : start + wf] if visual is not None else self.vision(pixels[start : start + wf])
            ratio = ratios[w] if isinstance(ratios, (list, tuple)) else ratios
            chunk, vst_idx, kv = self._window(vis, ratio, memory, rope_base)
            # Raw visual KV is dropped here; only the window's VSTs join the memory.
            memory = append(memory, kv, vst_idx if ratio else None)
            added.append(vst_idx.numel() if ratio else chunk.shape[1])
        return Memory(memory, sink, added)

    def _window(self, vis: torch.Tensor, ratio, past=None, rope_base=None):
        """One window's visual features [frames,P,D], with its VSTs interleaved, through the decoder:
        (chunk, vst_idx, kv)."""
        dec = self.decoder
        vis = vis.reshape(1, -1, vis.shape[-1]).to(dec.vst_embed.weight.dtype)
        chunk, vst_idx = interleave(vis, dec.vst_embed.weight[0], ratio)
        _, kv = dec(chunk, past=past, vst_idx=vst_idx, rope_base=rope_base)
        return chunk, vst_idx, kv

    def read(self, memory: Memory, ids: torch.Tensor, rope_base=None, extend: bool = True):
        """Text after the video against the memory, uncompressed: (logits [B,T,V], memory extended by
        the text, or None with extend=False). The memory passed in is never changed, so one memory
        answers any number of questions."""
        dec = self.decoder
        past = [(k.expand(ids.shape[0], -1, -1, -1), v.expand(ids.shape[0], -1, -1, -1)) for k, v in memory.kv]
        h, kv = dec(dec.embed_tokens(ids), past=past, rope_base=rope_base)
        if not extend:  # a scored answer needs only the logits: skip copying the whole memory
            return dec.lm_head(h), None
        return dec.lm_head(h), Memory(append(past, kv), memory.sink, memory.window_vsts)

    @torch.no_grad()
    def generate(self, memory: Memory, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None, rope_base=None):
        """Greedy decoding from the memory; returns the new token ids (list)."""
        out = []
        logits, memory = self.read(memory, ids, rope_base)
        for _ in range(max_new_tokens):
            tok = int(logits[0, -1].argmax())
            if eos_id is not None and tok == eos_id:
                break
            out.append(tok)
            logits, memory = self.read(memory, torch.tensor([[tok]], device=ids.device), rope_base)
        return out

    def forward(self, pre_ids, pixels, post_ids, labels, ratios, idle_windows: int = 0):
        """Training loss: next-token cross-entropy on the answer tokens of the text after the video.
        `idle_windows`: see `idle`; it changes neither the loss nor any gradient."""
        memory = self.encode_video(pre_ids, pixels, ratios)
        idle = self.idle(idle_windows, pixels) if idle_windows else None
        logits, _ = self.read(memory, post_ids)
        if not (labels[0, 1:] != -100).any():
            loss = logits.sum() * 0.0  # no answer tokens (truncated text): nothing to learn, no NaN
        else:
            loss = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)
        return loss if idle is None else loss + idle

    def idle(self, windows: int, like: torch.Tensor) -> torch.Tensor:
        """Windows of blank frames through the vision tower and the decoder, then thrown away: a
        zero that depends on them (so their backward runs, and gives zero gradients).

        For sharded training (fsdp): every FSDP unit all-gathers its parameters each time it runs,
        forward and backward, so every worker must run every unit as often and in the same order.
        A worker whose sample has fewer windows than another's runs this many idle windows after
        its video and before its text, where the others run their last windows; without them the
        collectives mismatch (gloo fails, NCCL may hang)."""
        size = self.vision.image_size
        blank = like.new_zeros(self.window_frames, 3, size, size)
        zero = like.new_zeros((), dtype=torch.float32)
        for _ in range(windows):
            _, _, kv = self._window(self.vision(blank), None)
            zero = zero + sum(k.float().mean() + v.float().mean() for k, v in kv) * 0.0
        return zero
