"""The `describe` caption engine: what can be measured in the frames, said plainly.

No model. It names the dominant colours (nearest colour name), the
brightness, the motion between frames, shot changes, and where a moving
object goes. Every caption starts with "describe engine: measured", so nobody
mistakes it for a VLM's caption. It exists for the offline demo, for tests,
and as a cheap signal next to a real captioner.
"""
from __future__ import annotations

import io
import json
import time

import numpy as np

from vico_pipeline.engines.base import Engine, Request, Result

# Colour names and a representative RGB for each (the nearest one names a pixel).
PALETTE = {
    "black": (15, 15, 15), "white": (240, 240, 240), "grey": (125, 125, 125),
    "red": (200, 40, 40), "orange": (230, 120, 30), "yellow": (220, 200, 40), "green": (40, 160, 60),
    "teal": (30, 150, 150), "blue": (40, 70, 200), "navy": (20, 30, 90), "purple": (130, 50, 160),
    "pink": (230, 120, 170), "brown": (120, 80, 40),
}
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], np.float32)
SIZE = 48  # frames are measured on a 48x48 thumbnail
SHOT_CHANGE = 0.35  # share of pixels whose colour name changes between frames that makes a cut


def _thumbs(jpegs: list[bytes]) -> np.ndarray:
    from PIL import Image

    out = []
    for data in jpegs:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (SIZE * 2, SIZE * 2))  # DCT-domain downscale: a cheap decode
        out.append(np.asarray(image.convert("RGB").resize((SIZE, SIZE)), np.float32))
    return np.stack(out)


def colour_names(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette of the nearest colour name, per pixel."""
    d = ((pixels[..., None, :] - _RGB) ** 2).sum(-1)
    return d.argmin(-1)


def _level(value: float, cuts: tuple[float, float], words: tuple[str, str, str]) -> str:
    return words[0] if value < cuts[0] else words[1] if value < cuts[1] else words[2]


def _direction(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) < 0.08:
        return "stays in place"
    if abs(dx) >= 2 * abs(dy):
        return "moves left to right" if dx > 0 else "moves right to left"
    if abs(dy) >= 2 * abs(dx):
        return "moves top to bottom" if dy > 0 else "moves bottom to top"
    return "moves diagonally"


def measure(jpegs: list[bytes]) -> dict:
    """The facts the describe engine states, as numbers and names."""
    thumbs = _thumbs(jpegs)
    names = colour_names(thumbs)  # (frames, H, W)
    counts = np.bincount(names.ravel(), minlength=len(_NAMES)) / names.size
    colours = [(_NAMES[i], float(counts[i])) for i in np.argsort(-counts) if counts[i] >= 0.02][:4]
    luma = thumbs @ np.array([0.299, 0.587, 0.114], np.float32)
    motion = float(np.abs(np.diff(luma, axis=0)).mean()) if len(thumbs) > 1 else 0.0
    changed = [(names[i] != names[i - 1]).mean() for i in range(1, len(names))]
    cuts = [i for i, share in enumerate(changed, start=1) if share > SHOT_CHANGE]
    # Shots: the frames between cuts; each has a dominant ("background") colour.
    bounds = [0, *cuts, len(names)]
    shots = []
    for a, b in zip(bounds, bounds[1:]):
        shot_counts = np.bincount(names[a:b].ravel(), minlength=len(_NAMES))
        shots.append(_NAMES[int(shot_counts.argmax())])
    # A moving object: pixels not of the shot's background colour in the upper 85 % (captions sit low).
    mover = None
    top = int(SIZE * 0.85)
    last = bounds[-2]
    if len(names) - last >= 2:
        background = _NAMES.index(shots[-1])
        fg = names[last:, :top] != background
        obj = np.bincount(names[last:, :top][fg], minlength=len(_NAMES))
        if fg.mean() > 0.005 and obj.sum():
            colour = _NAMES[int(obj.argmax())]
            mask = names[last:, :top] == _NAMES.index(colour)
            centres = []
            for frame in mask:
                ys, xs = np.nonzero(frame)
                if len(xs):
                    centres.append((xs.mean() / SIZE, ys.mean() / top))
            if len(centres) >= 2:
                dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
                mover = (colour, _direction(dx, dy))
    return {"frames": len(jpegs), "colours": colours, "brightness": float(luma.mean()), "motion": motion,
            "cuts": cuts, "shots": shots, "mover": mover}


def describe(jpegs: list[bytes]) -> dict:
    """{caption, key_event} from measured facts only."""
    if not jpegs:
        return {"caption": "describe engine: no frames to measure", "key_event": ""}
    m = measure(jpegs)
    colours = ", ".join(f"{name} ({share:.0%})" for name, share in m["colours"])
    brightness = _level(m["brightness"], (60, 170), ("dark", "medium", "bright"))
    motion = _level(m["motion"], (0.3, 5.0), ("still", "slow", "fast"))
    cuts = m["cuts"]
    cut_text = "no shot change" if not cuts else \
        f"{len(cuts)} shot change{'s' * (len(cuts) > 1)} (before frame {', '.join(str(c + 1) for c in cuts)})"
    parts = [f"describe engine: measured over {m['frames']} frames, not a VLM caption.",
             f"Dominant colours: {colours}.",
             f"Brightness {m['brightness']:.0f}/255 ({brightness}); motion {m['motion']:.1f}/255 ({motion}); {cut_text}."]
    if m["mover"]:
        parts.append(f"A {m['mover'][0]} region {m['mover'][1]} on the {m['shots'][-1]} background.")
    if cuts:
        key = "a cut from " + " to ".join(f"{s} frames" for s in m["shots"])
    else:
        key = f"{m['shots'][0]} frames"
    if m["mover"]:
        key += f" where a {m['mover'][0]} region {m['mover'][1]}"
    key += f", {brightness}, {motion} motion"
    # The key event names every shot it measured: all the frames show it.
    return {"caption": " ".join(parts), "key_event": key, "key_event_frames": list(range(1, m["frames"] + 1))}


class DescribeEngine(Engine):
    kind = "describe"

    def __init__(self, section):
        super().__init__(section)
        self.model = "describe-v1"

    def generate(self, prepared: list[Request]) -> list[Result]:
        out = []
        for request in prepared:
            started = time.perf_counter()
            try:
                text = json.dumps(describe(request.images))
                out.append(Result(text=text, latency_s=time.perf_counter() - started, finish_reason="stop"))
            except Exception as exc:  # an undecodable frame fails this clip only
                out.append(Result(error_type="bad_frames", error=f"{type(exc).__name__}: {exc}",
                                  latency_s=time.perf_counter() - started))
        return out
