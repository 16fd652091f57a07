"""Training samples made ahead of the step, in DataLoader worker processes (`train.loader_workers`).

Decoding a sample's JPEG frames and normalising them takes seconds at 128 frames: done on the
training thread, the GPU would wait for it. Worker processes make the next samples while the
current step runs (`train.loader_prefetch` each).

What a step reads stays a function of the step: sample `position` (step x grad_accum + micro)
of a worker (rank) is the row `sample_index` picks and the ratios a generator seeded with
(seed, position x world + rank) draws. The loader walks the positions in order from the resumed step, so
a resumed run, with or without worker processes, reads what an uninterrupted one would have.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from .config import ModelConfig, TrainConfig
from .data import QuestionSamples, draw_ratios, encode_conversation
from .vision import frames_to_pixels
from .vst import window_lengths


@dataclass(frozen=True)
class FrameLayout:
    """What preparing a sample needs to know of the model (the model itself stays in the trainer)."""

    image_size: int
    window_frames: int
    tokens_per_frame: int

    @classmethod
    def of(cls, model) -> "FrameLayout":
        return cls(model.vision.image_size, model.window_frames, model.vision.tokens_per_frame)


def sample_index(position: int, n: int, rank: int, world: int, seed: int) -> int:
    """Row for a worker's `position`-th sample: a fresh shuffle each epoch, workers interleaved."""
    per_worker = max(1, n // world)
    epoch, i = divmod(position, per_worker)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[(i * world + rank) % n]


def prepare_sample(row: dict, sample: dict, tokenizer, layout: FrameLayout, system_prompt: str, max_text_tokens: int,
                   ratios: list[int], rng: random.Random) -> dict:
    """CPU tensors for one sample: the frames it names (its time header lists exactly these) and its text."""
    frames = row["frames"] or []
    keep = sample["frame_indices"]
    size = layout.image_size
    pixels = frames_to_pixels([frames[i] for i in keep], size) if keep else torch.zeros(0, 3, size, size)
    text = encode_conversation(tokenizer, sample["conversations"], system_prompt, max_text_tokens)
    return {
        "pre_ids": torch.tensor([text.pre_ids]),
        "pixels": pixels,
        "post_ids": torch.tensor([text.post_ids]),
        "labels": torch.tensor([text.labels]),
        "ratios": draw_ratios(window_lengths(len(keep), layout.window_frames, layout.tokens_per_frame), ratios, rng),
    }


class PositionSamples(torch.utils.data.Dataset):
    """One worker's (rank's) training samples by position."""

    def __init__(self, samples: QuestionSamples, tokenizer, layout: FrameLayout, mcfg: ModelConfig, tcfg: TrainConfig,
                 rank: int, world: int):
        self.samples, self.tokenizer, self.layout = samples, tokenizer, layout
        self.system_prompt, self.max_text_tokens = mcfg.system_prompt, tcfg.max_text_tokens
        self.ratios, self.seed, self.rank, self.world = tcfg.ratios or mcfg.ratios, tcfg.seed, rank, world

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> dict:
        row, sample = self.samples[sample_index(position, len(self.samples), self.rank, self.world, self.seed)]
        # Seeded by the sample's place in the global batch: runs of any worker count with equal
        # workers x grad_accum draw the same ratios for the same samples.
        rng = random.Random(f"{self.seed}-{position * self.world + self.rank}")
        return prepare_sample(row, sample, self.tokenizer, self.layout, self.system_prompt, self.max_text_tokens,
                              self.ratios, rng)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the workers decode side by side; each torch op needs no more


def training_samples(dataset: PositionSamples, first: int, end: int, tcfg: TrainConfig, pin_memory: bool):
    """Samples at positions first, first+1, ..., end-1, in that order, made `loader_workers` processes ahead."""
    workers = tcfg.loader_workers
    if workers:
        # The tokenizer was used before the fork; its own thread pool must stay off in the workers.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return iter(torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(first, end), num_workers=workers,
        prefetch_factor=tcfg.loader_prefetch if workers else None, worker_init_fn=_one_thread if workers else None,
        pin_memory=pin_memory))
