"""Needles made from nothing but PIL: a shape, a digit or a word on a plain background,
inserted as one extra frame into frames sampled from our own videos (needle.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

SHAPES = ["circle", "square", "triangle", "diamond"]
WORDS = ["apple", "river", "piano", "tiger", "cloud", "lemon", "rocket", "garden"]
BACKGROUNDS = [(250, 250, 250), (30, 30, 30), (40, 90, 160), (200, 60, 60)]
INKS = [(220, 40, 40), (240, 240, 240), (250, 220, 40), (20, 20, 20)]


@dataclass
class Needle:
    image: np.ndarray  # HxWx3 uint8
    question: str
    options: list[str]
    answer_index: int


def render(kind: str, value: str, size: int, rng: random.Random) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    k = rng.randrange(len(BACKGROUNDS))
    img = Image.new("RGB", (size, size), BACKGROUNDS[k])
    draw = ImageDraw.Draw(img)
    ink = INKS[k]
    m = size // 5
    if kind == "shape":
        box = [m, m, size - m, size - m]
        if value == "circle":
            draw.ellipse(box, fill=ink)
        elif value == "square":
            draw.rectangle(box, fill=ink)
        elif value == "triangle":
            draw.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=ink)
        else:
            draw.polygon([(size // 2, m), (size - m, size // 2), (size // 2, size - m), (m, size // 2)], fill=ink)
    else:
        font = ImageFont.load_default(size=max(8, size // (2 if kind == "digit" else max(3, len(value) // 2 + 1))))
        draw.text((size // 2, size // 2), value, fill=ink, font=font, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


def make_needle(rng: random.Random, size: int = 336) -> Needle:
    """A retrieval needle with a 4-option question about it."""
    kind = rng.choice(["shape", "digit", "word"])
    pool = {"shape": SHAPES, "digit": [str(d) for d in range(10)], "word": WORDS}[kind]
    options = rng.sample(pool, 4)
    answer = rng.randrange(4)
    question = {"shape": "Which shape was shown in one frame of the video?",
                "digit": "Which number was shown in one frame of the video?",
                "word": "Which word was shown in one frame of the video?"}[kind]
    return Needle(render(kind, options[answer], size, rng), question, options, answer)


def spread(n: int, k: int) -> list[int]:
    """k indices spread uniformly over n items, repeating items where k > n."""
    return [min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


def needle_index(frames: int, depth: float) -> int:
    """Where the needle goes among `frames` frames: int(depth * (frames - 1)), so depth 1 is the last frame."""
    return int(depth * (frames - 1))


def haystack_with_needle(haystack: list, frames: int, depth: float, needle) -> list:
    """frames - 1 frames sampled uniformly from the haystack, plus the needle at its depth."""
    picked = [haystack[i] for i in spread(len(haystack), frames - 1)] if frames > 1 else []
    at = needle_index(frames, depth)
    return picked[:at] + [needle] + picked[at:]
