"""Needles made from nothing but PIL (needle.md): a shape, digit, word or colour on a plain
background inserted as extra frames, or a subtitle bar "The secret word is X" drawn onto k
consecutive sampled frames; questions for retrieval, ordering of 4 needles and counting."""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import dataclass, field

import numpy as np

SHAPES = ["circle", "square", "triangle", "diamond"]
WORDS = ["apple", "river", "piano", "tiger", "cloud", "lemon", "rocket", "garden"]
DIGITS = [str(d) for d in range(10)]
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (250, 220, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (250, 250, 250), "black": (10, 10, 10)}
KINDS = {"shape": SHAPES, "digit": DIGITS, "word": WORDS, "colour": list(COLOURS)}
NOUNS = {"shape": ("shape", "shapes"), "digit": ("number", "numbers"), "word": ("word", "words"),
         "colour": ("colour", "colours")}
BACKGROUNDS = [(250, 250, 250), (30, 30, 30), (40, 90, 160), (200, 60, 60)]
INKS = [(220, 40, 40), (240, 240, 240), (250, 220, 40), (20, 20, 20)]
TASKS = ("retrieval", "ordering", "counting")
STYLES = ("frame", "bar")
ORDERING_NEEDLES = 4
MAX_COUNT = 4  # counting: 1 to MAX_COUNT copies; the options are numbers from 1 to MAX_COUNT + 2


@dataclass
class Needle:
    image: np.ndarray | None  # HxWx3 uint8: the first needle's picture (inserted-frame style)
    question: str
    options: list[str]
    answer_index: int
    task: str = "retrieval"
    kind: str = "word"
    values: list[str] = field(default_factory=list)  # one per needle, in the order they appear in the video
    images: list = field(default_factory=list)  # one picture per value (copies share one picture)

    @property
    def gap(self) -> int:
        """Haystack frames kept between two needles: counting's copies must not run together."""
        return 1 if self.task == "counting" else 0

    def footprint(self, style: str, bar_frames: int) -> int:
        """The fewest frames the needles need under `style`."""
        return footprint(len(self.values), bar_frames if style == "bar" else 1, self.gap)


def render(kind: str, value: str, size: int, rng: random.Random) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    k = rng.randrange(len(BACKGROUNDS))
    img = Image.new("RGB", (size, size), (128, 128, 128) if kind == "colour" else BACKGROUNDS[k])
    draw = ImageDraw.Draw(img)
    ink = INKS[k]
    m = size // 5
    box = [m, m, size - m, size - m]
    if kind == "colour":
        draw.ellipse(box, fill=COLOURS[value])
    elif kind == "shape":
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


def bar_text(kind: str, value: str) -> str:
    return f"The secret {NOUNS[kind][0]} is {value}"


def draw_bar(frame, text: str) -> np.ndarray:
    """The frame (JPEG bytes or HxWx3 uint8) with a black subtitle bar and white `text` at the
    bottom of its centre square (the part the vision tower's centre crop keeps)."""
    from PIL import Image, ImageDraw, ImageFont

    img = (Image.open(io.BytesIO(frame)) if isinstance(frame, (bytes, bytearray)) else Image.fromarray(frame)).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, bottom = (w - side) // 2, (h + side) // 2
    bar = max(8, side // 5)
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, bottom - bar, left + side - 1, bottom - 1], fill=(0, 0, 0))
    size = max(6, int(bar * 0.7))
    font = ImageFont.load_default(size=size)
    while size > 6 and draw.textlength(text, font=font) > 0.95 * side:
        size -= 1
        font = ImageFont.load_default(size=size)
    draw.text((w // 2, bottom - bar // 2), text, fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


def _permutation_options(values: list[str], rng: random.Random) -> tuple[list[str], int]:
    """Four distinct orders of `values` as "a, b, c, d"; the true order at a random letter."""
    others = [p for p in itertools.permutations(values) if list(p) != values]
    options = [", ".join(p) for p in rng.sample(others, 3)]
    answer = rng.randrange(4)
    options.insert(answer, ", ".join(values))
    return options, answer


def make_needle(rng: random.Random, size: int = 336, task: str = "retrieval") -> Needle:
    """One needle question: retrieval (which shape / digit / word / colour was shown), ordering
    (in which order were 4 distinct needles shown; options are permutations) or counting (how
    many times was one needle shown; options are numbers)."""
    kind = rng.choice(list(KINDS))
    pool = KINDS[kind]
    noun, nouns = NOUNS[kind]
    if task == "retrieval":
        options = rng.sample(pool, 4)
        answer = rng.randrange(4)
        values = [options[answer]]
        question = f"Which {noun} was shown in the video?"
    elif task == "ordering":
        values = rng.sample(pool, ORDERING_NEEDLES)
        options, answer = _permutation_options(values, rng)
        question = f"In which order were these {nouns} shown in the video?"
    elif task == "counting":
        value, count = rng.choice(pool), rng.randint(1, MAX_COUNT)
        numbers = rng.sample([n for n in range(1, MAX_COUNT + 3) if n != count], 3) + [count]
        rng.shuffle(numbers)
        options, answer = [str(n) for n in numbers], numbers.index(count)
        values = [value] * count
        question = f'How many times was the {noun} "{value}" shown in the video?'
    else:
        raise ValueError(f"unknown needle task {task!r}; use one of {TASKS}")
    pictures = {v: render(kind, v, size, rng) for v in dict.fromkeys(values)}
    images = [pictures[v] for v in values]
    return Needle(images[0], question, options, answer, task, kind, values, images)


def make_needles(task: str, count: int, seed: int, size: int = 336) -> list[Needle]:
    """`count` needle questions of one task from their own seeded generator (so adding a task
    to the list leaves the others' needles as they were)."""
    rng = random.Random(seed * len(TASKS) + TASKS.index(task))
    return [make_needle(rng, size, task) for _ in range(count)]


def spread(n: int, k: int) -> list[int]:
    """k indices spread uniformly over n items, repeating items where k > n."""
    return [min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


def footprint(count: int, span: int = 1, gap: int = 0) -> int:
    return count * span + (count - 1) * gap


def needle_starts(frames: int, depth: float, count: int = 1, span: int = 1, gap: int = 0) -> list[int] | None:
    """First frame of each of `count` needles, `span` frames each, at least `gap` frames apart,
    among `frames` frames: the first at int(depth * (frames - footprint)), the others spread
    evenly after it with the last ending on the last frame. None where they do not fit."""
    room = frames - footprint(count, span, gap)
    if room < 0:
        return None
    first = int(depth * room)
    if count == 1:
        return [first]
    return [first + i * (frames - span - first) // (count - 1) for i in range(count)]


def needle_index(frames: int, depth: float) -> int:
    """Where one needle goes among `frames` frames: int(depth * (frames - 1)), so depth 1 is the last frame."""
    return needle_starts(frames, depth)[0]


def insert_frames(haystack: list, frames: int, depth: float, images: list, gap: int = 0) -> list | None:
    """frames - len(images) frames sampled uniformly from the haystack, with the images inserted
    at needle_starts (in order); None where they do not fit."""
    starts = needle_starts(frames, depth, len(images), 1, gap)
    if starts is None:
        return None
    out = [haystack[i] for i in spread(len(haystack), frames - len(images))]
    for at, image in zip(starts, images):
        out.insert(at, image)
    return out


def haystack_with_needle(haystack: list, frames: int, depth: float, needle) -> list:
    """frames - 1 frames sampled uniformly from the haystack, plus the needle at its depth."""
    return insert_frames(haystack, frames, depth, [needle])


def draw_bars(haystack: list, frames: int, depth: float, texts: list[str], span: int, gap: int = 0) -> list | None:
    """`frames` frames sampled uniformly from the haystack, with each text drawn as a bar onto
    `span` consecutive frames from needle_starts (the frame count is unchanged); None where they do not fit."""
    starts = needle_starts(frames, depth, len(texts), span, gap)
    if starts is None:
        return None
    out = [haystack[i] for i in spread(len(haystack), frames)]
    for at, text in zip(starts, texts):
        out[at:at + span] = [draw_bar(f, text) for f in out[at:at + span]]
    return out


def place(needle: Needle, haystack: list, frames: int, depth: float, style: str = "frame", bar_frames: int = 2) -> list | None:
    """The needle's frames for one grid cell: inserted pictures, or bars edited into sampled frames."""
    if style == "bar":
        texts = [bar_text(needle.kind, v) for v in needle.values]
        return draw_bars(haystack, frames, depth, texts, bar_frames, needle.gap)
    return insert_frames(haystack, frames, depth, needle.images, needle.gap)
