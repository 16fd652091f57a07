"""The one place that finds and talks to ffmpeg.

A user's machine may have a system ffmpeg (with or without ffprobe) or only the
static build that the `imageio-ffmpeg` package ships. We need only `ffmpeg`
itself: probing parses `ffmpeg -i`, which every build prints the same way.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional


class MediaError(Exception):
    """A file that ffmpeg cannot use as a video; `error_type` names the reason."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """$VICO_FFMPEG, then ffmpeg on PATH, then the binary inside imageio-ffmpeg."""
    explicit = os.environ.get("VICO_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("no ffmpeg found: install ffmpeg or `pip install imageio-ffmpeg`") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass
class Probe:
    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    rotation: int
    has_audio: bool
    variable_frame_rate: bool


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")


def probe(path: str) -> Probe:
    """Duration, fps, size, codec and rotation of the first video stream."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          capture_output=True, text=True, errors="replace")
    text = proc.stderr
    if "Invalid data found" in text or "moov atom not found" in text:
        if _looks_like_html(path):
            raise MediaError("html_not_video", "the file is an HTML page, not a video")
        if "moov atom not found" in text and _head(path)[4:8] == b"ftyp":
            raise MediaError("truncated", "the MP4 has no index (moov atom): the file is cut short")
        raise MediaError("corrupt", f"ffmpeg cannot read the file: {_last_line(text)}")
    if "No such file" in text:
        raise MediaError("missing", f"no such file: {path}")
    video = _VIDEO.search(text)
    if video is None:
        if "Audio:" in text:
            raise MediaError("no_video_stream", "the file has audio but no video stream")
        raise MediaError("not_a_video", f"no video stream found: {_last_line(text)}")
    codec, width, height = video.group(1), int(video.group(2)), int(video.group(3))
    if codec in ("png", "mjpeg", "bmp", "gif", "webp") and "Duration: N/A" in text:
        raise MediaError("not_a_video", f"the file is a still image ({codec}), not a video")
    stream_line = text[video.start(): text.find("\n", video.start())]
    fps_match = _FPS.search(stream_line) or _TBR.search(stream_line)
    fps = _rate(fps_match) if fps_match else 0.0
    tbr = _TBR.search(stream_line)
    duration_match = _DURATION.search(text)
    if duration_match is None:
        raise MediaError("corrupt", "the container states no duration")
    h, m, s = duration_match.groups()
    duration = int(h) * 3600 + int(m) * 60 + float(s)
    rotation_match = _ROTATION.search(text)
    rotation = int(round(float(rotation_match.group(1)))) % 360 if rotation_match else 0
    return Probe(
        duration_s=duration, fps=fps, width=width, height=height, codec=codec,
        rotation=rotation, has_audio=bool(re.search(r"Stream #\S+.*?: Audio:", text)),
        # ffmpeg states 'fps' (average) and 'tbr' (base rate); they differ for VFR streams.
        variable_frame_rate=bool(tbr and fps_match and abs(_rate(tbr) - fps) > 0.01 * max(fps, 1)),
    )


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except OSError:
        return b""


def _looks_like_html(path: str) -> bool:
    head = _head(path).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _rate(match: re.Match) -> float:
    return float(match.group(1)) * (1000 if match.group(2) else 1)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def run(args: list[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args`; raise MediaError with ffmpeg's last line on failure."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise MediaError("ffmpeg_failed", _last_line(proc.stderr.decode(errors="replace")))
    return proc
