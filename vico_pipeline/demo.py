"""Synthetic long videos with scripted scenes, for the offline demo and the tests.

Each video is a sequence of scenes of uneven length (they never line up with
the 14-second grid): a distinct background colour, a shape that moves across
it, and a caption line drawn on the picture. Frames are drawn with Pillow and
piped into ffmpeg's libx264, so no font or filter of a particular ffmpeg build
is needed.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFont

from stages.ffmpeg import ffmpeg_exe

COLOURS = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
    "purple": (130, 50, 160), "orange": (230, 120, 30), "teal": (30, 150, 150), "grey": (120, 120, 120),
    "pink": (230, 120, 170), "brown": (120, 80, 40), "white": (235, 235, 235), "navy": (20, 30, 90),
}
SHAPES = ["circle", "square", "triangle", "diamond"]
MOVES = {"left to right": (0.1, 0.5, 0.9, 0.5), "right to left": (0.9, 0.5, 0.1, 0.5),
         "top to bottom": (0.5, 0.15, 0.5, 0.85), "bottom to top": (0.5, 0.85, 0.5, 0.15),
         "diagonally": (0.15, 0.15, 0.85, 0.85)}


@dataclass
class Scene:
    start_s: float
    end_s: float
    background: str
    shape: str
    shape_colour: str
    move: str
    text: str


def script(seed: int, seconds: float) -> list[Scene]:
    """Scenes of 6 to 41 s with distinct neighbours, filling `seconds`."""
    rng = random.Random(seed)
    scenes, t, previous = [], 0.0, None
    while t < seconds:
        length = min(rng.uniform(6.0, 41.0), seconds - t)
        background = rng.choice([c for c in COLOURS if c != previous])
        shape = rng.choice(SHAPES)
        colour = rng.choice([c for c in COLOURS if c != background])
        move = rng.choice(list(MOVES))
        text = f"Scene {len(scenes) + 1}: a {colour} {shape} moves {move}"
        scenes.append(Scene(round(t, 3), round(t + length, 3), background, shape, colour, move, text))
        previous, t = background, t + length
    return scenes


def _draw(scene: Scene, t: float, size: tuple[int, int], font) -> bytes:
    width, height = size
    image = Image.new("RGB", size, COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = MOVES[scene.move]
    progress = (t - scene.start_s) / max(scene.end_s - scene.start_s, 1e-6)
    cx, cy = (x0 + (x1 - x0) * progress) * width, (y0 + (y1 - y0) * progress) * height
    r = height * 0.12
    fill = COLOURS[scene.shape_colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    draw.rectangle([0, height - 28, width, height], fill=(0, 0, 0))
    draw.text((8, height - 24), f"{scene.text}   t={t:6.1f}s", fill=(255, 255, 255), font=font)
    return image.tobytes()


def write_video(path: str, scenes: list[Scene], size=(640, 360), fps: int = 10) -> None:
    """Encode the scripted scenes as H.264 MP4 (yuv420p, playable everywhere)."""
    font = ImageFont.load_default()
    total = scenes[-1].end_s
    proc = subprocess.Popen(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{size[0]}x{size[1]}", "-r", str(fps), "-i", "pipe:0",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps * 5),
         "-movflags", "+faststart", path],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    scene_index = 0
    for frame in range(int(total * fps)):
        t = frame / fps
        while scenes[scene_index].end_s <= t and scene_index < len(scenes) - 1:
            scene_index += 1
        proc.stdin.write(_draw(scenes[scene_index], t, size, font))
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.read().decode(errors='replace')[-300:]}")


def make_demo_videos(directory: str, count: int = 3, minutes: float = 3.0, seed: int = 0,
                     progress: bool = True) -> str:
    """Write `count` videos and `manifest.txt` (absolute paths); return the manifest path."""
    from tqdm import tqdm

    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in tqdm(range(count), desc="demo videos", unit="video", disable=not progress):
        scenes = script(seed * 1000 + index, minutes * 60.0)
        path = os.path.abspath(os.path.join(directory, f"demo-{index:02d}.mp4"))
        scenes_json = json.dumps([asdict(s) for s in scenes], indent=1)
        scenes_path = path[:-4] + ".scenes.json"
        if not (os.path.exists(path) and os.path.exists(scenes_path) and open(scenes_path).read() == scenes_json):
            tmp = path + ".tmp.mp4"
            write_video(tmp, scenes)
            os.replace(tmp, path)
            with open(scenes_path, "w") as handle:
                handle.write(scenes_json)
        paths.append(path)
    manifest = os.path.join(directory, "manifest.txt")
    with open(manifest, "w") as handle:
        handle.write("# vico demo videos\n" + "".join(p + "\n" for p in paths))
    return manifest
