"""Vision side: CLIP tower (read at a chosen layer, class token dropped or kept), MLP projector, 2x2 pooling."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def encoder_of(tower: nn.Module) -> nn.Module:
    """The CLIP encoder: transformers 4.x nests it under `vision_model`, 5.x does not."""
    return getattr(tower, "vision_model", tower).encoder


def keep_layers(tower: nn.Module, select_layer: int) -> nn.Module:
    """Cuts the tower after the layer whose output is read, LLaVA's `hidden_states[select_layer]`
    (0: the embeddings, -1: the last layer, -2: the second-to-last), so later layers never run."""
    enc = encoder_of(tower)
    n = len(enc.layers)
    keep = select_layer if select_layer >= 0 else n + 1 + select_layer
    if not 0 <= keep <= n:
        raise ValueError(f"vision select layer {select_layer} is outside a tower of {n} layers")
    enc.layers = enc.layers[:keep]
    # The pooled head is unused; frozen so DDP does not wait for its gradients.
    getattr(tower, "vision_model", tower).post_layernorm.requires_grad_(False)
    return tower


class VisionSide(nn.Module):
    def __init__(self, tower: nn.Module, image_size: int, patch_size: int, llm_width: int, chunk_frames: int = 16,
                 select_layer: int = -1, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"vision select feature {select_feature!r}: use patch or cls_patch")
        self.tower = keep_layers(tower, select_layer)
        self.select_layer = select_layer  # as LLaVA counts it, on the uncut tower (its config keeps the full count)
        self.keep_cls = select_feature == "cls_patch"
        self.image_size, self.grid = image_size, image_size // patch_size
        vision_width = tower.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.chunk_frames = chunk_frames

    @property
    def tokens_per_frame(self) -> int:
        return (self.grid // 2) ** 2 + self.keep_cls

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N,3,H,W] -> visual tokens [N, tokens_per_frame, D], frames through the tower in chunks."""
        out = [self._encode(pixels[i : i + self.chunk_frames]) for i in range(0, pixels.shape[0], self.chunk_frames)]
        return torch.cat(out, dim=0)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.projector.parameters()).dtype
        x = self.projector(self.tower(pixel_values=pixels.to(dtype)).last_hidden_state)
        cls, x = x[:, :1], x[:, 1:]
        n, _, d = x.shape
        x = x.view(n, self.grid, self.grid, d).permute(0, 3, 1, 2)
        x = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # 24x24 -> 12x12 = 144 tokens per 336 px frame
        # cls_patch: the class token is kept, ahead of its frame's pooled patches (pooling needs a grid).
        return torch.cat([cls, x], dim=1) if self.keep_cls else x


def load_frame(jpeg: bytes | np.ndarray, size: int) -> np.ndarray:
    """One frame (JPEG bytes or HxWx3 uint8) -> CLIP-normalised float32 [3,size,size]:
    shorter side resized to `size`, centre crop, as the CLIP processor does."""
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg)) if isinstance(jpeg, (bytes, bytearray)) else Image.fromarray(jpeg)
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return arr.transpose(2, 0, 1).copy()


def frames_to_pixels(frames, size: int) -> torch.Tensor:
    """A list of frames (JPEG bytes or arrays) -> [N,3,size,size] float32."""
    return torch.from_numpy(np.stack([load_frame(f, size) for f in frames]))


def uniform_indices(n: int, k: int) -> list[int]:
    """k indices spread uniformly over n (all of them where n <= k)."""
    if n <= k:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]
