"""The one place that finds and talks to ffmpeg.

A user's machine may have a system ffmpeg (with or without ffprobe) or only the
static build that the `imageio-ffmpeg` package ships. We need only `ffmpeg`
itself for decoding; probing reads the container through PyAV (`av`, which ships
its own FFmpeg libraries).
"""
from __future__ import annotations

import functools
import os
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
    subtitle_streams: int = 0
    # What the container states, kept beside duration_s (which is measured when the two disagree).
    declared_duration_s: float | None = None


_STILL_CODECS = ("png", "mjpeg", "bmp", "gif", "webp", "tiff")


def probe(path: str, deadline_s: float = 120.0) -> Probe:
    """Duration, fps, size, codec, rotation and streams of a file, read from the container's
    structures through PyAV (never from ffmpeg's log, which container metadata can forge).

    `deadline_s` bounds each step (the open, each read of the first frame): PyAV's interrupt callback
    stops one that runs past it. Only regular files reach the probe (downloads, copies, checked paths)."""
    import av

    if not os.path.exists(path):
        raise MediaError("missing", f"no such file: {path}")
    try:
        container = av.open(path, timeout=(deadline_s, deadline_s))
    except av.error.ExitError:
        raise MediaError("timeout", f"probing took over {deadline_s:g} s") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    with container:
        video = next(iter(container.streams.video), None)
        if video is None:
            if container.streams.audio:
                raise MediaError("no_video_stream", "the file has audio but no video stream")
            raise MediaError("not_a_video", "no video stream found")
        codec = video.codec_context.name
        if container.duration is None and codec in _STILL_CODECS:
            raise MediaError("not_a_video", f"the file is a still image ({codec}), not a video")
        declared = _duration(container, video)
        if declared is None:
            raise MediaError("corrupt", "the container states no duration")
        average = float(video.average_rate) if video.average_rate else 0.0
        base = float(video.base_rate) if video.base_rate else 0.0
        rotation = _rotation(container, video)
        measured = _measured_duration(container, declared)
        # The container's word is kept unless the packets say otherwise by more than 10%.
        duration = measured if measured and abs(measured - declared) > MEASURE_TOLERANCE * max(measured, declared) \
            else declared
        return Probe(
            duration_s=round(duration, 6), fps=average or base, width=video.codec_context.width,
            height=video.codec_context.height, codec=codec, rotation=rotation,
            has_audio=bool(container.streams.audio),
            # The average rate and the stream's base rate differ for VFR streams.
            variable_frame_rate=bool(average and base and abs(base - average) > 0.01 * max(average, 1)),
            subtitle_streams=len(container.streams.subtitles),
            declared_duration_s=round(declared, 6),
        )


def _duration(container, video) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    return None


MEASURE_TOLERANCE = 0.10


def _measured_duration(container, declared: float) -> float | None:
    """The end of the last audio or video packet, from the start: what the file holds, whatever
    its header says. Seeks to the declared end (the last keyframe before it, through the
    container's index) and reads the packets from there on, so an honest file costs a few packets;
    a header that understates the length costs a read to the real end. None when unreadable."""
    import av

    streams = [s for s in container.streams if s.type in ("video", "audio")]
    start = (container.start_time or 0) / 1_000_000
    end = None
    try:
        try:
            container.seek(int((start + declared) * 1_000_000), backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0)  # no index to seek with: read from the start
        for packet in container.demux(*streams):
            if packet.pts is None or packet.time_base is None:
                continue
            packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = packet_end if end is None else max(end, packet_end)
    except (av.error.FFmpegError, ValueError):
        return None
    return None if end is None else max(0.0, end - start)


def _rotation(container, video) -> int:
    """Display rotation (degrees, 0-359) from the first decoded frame's display matrix."""
    try:
        for frame in container.decode(video):
            return int(round(frame.rotation or 0)) % 360
    except Exception:  # a broken first frame: no rotation, the decode stage reports the damage
        return 0
    return 0


def _unreadable(path: str, exc: Exception) -> MediaError:
    if _looks_like_html(path):
        return MediaError("html_not_video", "the file is an HTML page, not a video")
    if "moov atom not found" in str(exc) or _head(path)[4:8] == b"ftyp":
        return MediaError("truncated", "the MP4 has no index (moov atom): the file is cut short")
    return MediaError("corrupt", f"ffmpeg cannot read the file: {getattr(exc, 'strerror', None) or exc}")


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except OSError:
        return b""


def _looks_like_html(path: str) -> bool:
    head = _head(path).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def run(args: list[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args` (global options already in them are harmless); raise MediaError with
    ffmpeg's last line on failure, or a timeout after `timeout` seconds (ffmpeg is killed)."""
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError("timeout", f"ffmpeg ran past its deadline of {timeout:g} s") from None
    if proc.returncode != 0:
        raise MediaError("ffmpeg_failed", _last_line(proc.stderr.decode(errors="replace")))
    return proc
