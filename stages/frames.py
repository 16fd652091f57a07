"""Windows and frames: one ffmpeg decode per video yields every frame we keep.

One ffmpeg process decodes the video once and splits the picture stream in
two: training frames (`frames.fps`, short side `frames.size`) and caption frames
(`caption.frames_per_clip` spread over each window, short side
`caption.frame_size`), both JPEG-encoded by ffmpeg into one NUT stream on a pipe.
We demux the pipe as it fills (PyAV) and yield each clip as soon as both streams
have passed its end, so memory holds a few clips, never the decoded video.

Frame times are the decoded frames' own presentation times: each stream keeps
the first frame at or after each sampling instant (a `select` filter, not `fps`,
which would re-time the frames it keeps), and the NUT packets carry their pts.
The command line comes from one builder, ffmpeg-python.
"""
from __future__ import annotations

import io
import math
import os
import queue
import subprocess
import tempfile
import threading
from fractions import Fraction
from typing import Iterator

import numpy as np
import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.ffmpeg import MediaError, ffmpeg_exe, probe, run
from vico_pipeline import storage

CLIPS_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("clip_index", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("train_frames", pa.list_(pa.binary())),
    ("train_frame_times_s", pa.list_(pa.float64())),
    ("caption_frames", pa.list_(pa.binary())),
    ("caption_frame_times_s", pa.list_(pa.float64())),
    ("brightness", pa.float64()),
    ("motion", pa.float64()),
    ("dup_similarity", pa.float64()),
    ("clip_path", pa.string()),
    ("clip_file_s", pa.float64()),
])


def clip_id(video_id: str, index: int) -> str:
    return f"{video_id}-{index:05d}"


def windows(duration_s: float, seconds: float, min_last_s: float) -> list[tuple[int, float, float]]:
    """[k*seconds, (k+1)*seconds) windows; a last partial one only when >= min_last_s."""
    out = []
    for k in range(int(math.ceil(duration_s / seconds))):
        start, end = k * seconds, min((k + 1) * seconds, duration_s)
        if end - start >= seconds - 1e-6 or end - start >= min_last_s:
            out.append((k, start, end))
    return out


def _scale(stream, size: int):
    """Short side to `size`, aspect kept, even dimensions (ffmpeg applies the rotation first)."""
    return stream.filter("scale", f"if(gt(iw,ih),-2,{size})", f"if(gt(iw,ih),{size},-2)", flags="bilinear")


def _every(stream, rate: Fraction):
    """Keep the first frame at or after each instant k/rate: its own timestamp is kept, unlike `fps`."""
    slot = lambda t: f"floor({t}*{rate.numerator}/{rate.denominator}+1e-6)"  # noqa: E731 (1e-6: 14*8/14 is 7.99..)
    return stream.filter("select", f"isnan(prev_selected_t)+gte({slot('t')}-{slot('prev_selected_t')},1)")


GLOBAL_ARGS = ["-hide_banner", "-nostdin", "-loglevel", "error"]


def segment_command(path: str, pattern: str, listing: str, seconds: float, mode: str) -> list[str]:
    """Clip files of `seconds` each: 'copy' cuts on keyframes, 'exact' re-encodes with a keyframe at every window."""
    import ffmpeg as ffmpeg_python

    source = ffmpeg_python.input(path)
    codec = {"c": "copy"} if mode == "copy" else {
        "c:v": "libx264", "preset": "veryfast", "pix_fmt": "yuv420p", "c:a": "aac", "bf": 0,
        "force_key_frames": f"expr:gte(t,n_forced*{seconds})"}
    return ffmpeg_command(ffmpeg_python.output(source["v:0"], source["a?"], pattern, format="segment",
                                               segment_time=seconds, segment_list=listing, segment_list_type="csv",
                                               reset_timestamps=1, **codec))


def ffmpeg_command(stream_spec) -> list[str]:
    """An ffmpeg-python output as an argument list for our ffmpeg, global options first."""
    args = stream_spec.compile(cmd=ffmpeg_exe())
    return [args[0], *GLOBAL_ARGS, *args[1:]]


def decode_graph(path: str, train_fps: float, train_size: int, caption_rate: Fraction, caption_size: int,
                 threads: int = 0):
    """The decode's two branches (ffmpeg-python streams): training frames and caption frames."""
    import ffmpeg as ffmpeg_python

    video = ffmpeg_python.input(path, threads=threads).video.split()
    train = _scale(_every(video[0], Fraction(train_fps).limit_denominator(1000)), train_size)
    caption = _scale(_every(video[1], caption_rate), caption_size)
    return train, caption


def decode_command(path: str, train_fps: float, train_size: int, caption_rate: Fraction, caption_size: int,
                   jpeg_quality: int, threads: int) -> list[str]:
    """One decode, split in two: training frames (stream 0) and caption frames (stream 1), JPEGs in NUT on stdout."""
    import ffmpeg as ffmpeg_python

    train, caption = decode_graph(path, train_fps, train_size, caption_rate, caption_size, threads)
    return ffmpeg_command(ffmpeg_python.output(train, caption, "pipe:1", format="nut", vcodec="mjpeg",
                                               fps_mode="passthrough", **{"q:v": jpeg_quality}))


def _demux_jpegs(pipe, out: queue.Queue) -> None:
    """(stream index, presentation time, JPEG bytes) for each packet of the NUT pipe; (None, ...) at the end."""
    import av

    try:
        with av.open(pipe, mode="r", format="nut") as container:
            for packet in container.demux():
                if packet.size and packet.pts is not None:
                    out.put((packet.stream.index, float(packet.pts * packet.time_base), bytes(packet)))
    except (av.error.FFmpegError, OSError):
        pass  # ffmpeg died or was stopped: its stderr says why
    finally:
        out.put((None, None, None))


def clip_signals(caption_jpegs: list[bytes]) -> tuple[float, float, np.ndarray]:
    """Mean brightness (0-255), mean frame-to-frame change (0-255), and a thumbnail."""
    from PIL import Image

    thumbs = []
    for data in caption_jpegs:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (64, 64))  # DCT-domain downscale: decoding costs almost nothing
        thumbs.append(np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32))
    if not thumbs:
        return 0.0, 0.0, np.zeros((16, 16, 3), np.float32)
    stack = np.stack(thumbs)
    luma = stack @ np.array([0.299, 0.587, 0.114], np.float32)
    motion = float(np.abs(np.diff(luma, axis=0)).mean()) if len(thumbs) > 1 else 0.0
    return float(luma.mean()), motion, stack.mean(axis=0)


class FramesStage(Stage):
    name = "frames"
    schema = CLIPS_SCHEMA

    def __init__(self, config, clip_root: str | None = None):
        super().__init__(config)
        self.seconds = config.clips.seconds
        self.clip_root = clip_root

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        """`item["video"]` is a videos row; yields one row per window, or an error row naming why not."""
        try:
            yield from self._clips(item)
        except MediaError as exc:  # decode_failed, timeout, ffmpeg_failed: the video's error row
            yield ErrorRow(item["video"]["video_id"], item["video"]["source"], exc.error_type, str(exc))

    def _clips(self, item: dict) -> Iterator[dict | ErrorRow]:
        video = item["video"]
        vid, source = video["video_id"], video["source"]
        cfg = self.config
        if video["duration_s"] < self.seconds:
            yield ErrorRow(vid, source, "too_short",
                           f"video is {video['duration_s']:.1f} s, shorter than one {self.seconds:g} s clip")
            return
        wins = windows(video["duration_s"], self.seconds, cfg.clips.min_last_s)
        with storage.local_copy(video["media_path"]) as path:
            clip_files = self._clip_files(vid, path) if cfg.clips.write_files != "off" else {}
            previous_thumb = None
            for index, start, end, train, captions in self._decode(path, wins):
                brightness, motion, thumb = clip_signals([jpg for _, jpg in captions])
                similarity = 0.0 if previous_thumb is None else float(
                    1.0 - np.abs(thumb - previous_thumb).mean() / 255.0)
                previous_thumb = thumb
                file_path, file_s = clip_files.get(index, (None, None))
                yield {
                    "clip_id": clip_id(vid, index), "video_id": vid, "clip_index": index,
                    "start_s": start, "end_s": end,
                    "train_frames": [jpg for _, jpg in train], "train_frame_times_s": [t for t, _ in train],
                    "caption_frames": [jpg for _, jpg in captions], "caption_frame_times_s": [t for t, _ in captions],
                    "brightness": brightness, "motion": motion, "dup_similarity": similarity,
                    "clip_path": file_path, "clip_file_s": file_s,
                }
        if self.decode_warning:
            yield ErrorRow(vid, source, "partial_decode", self.decode_warning)

    def _decode(self, path: str, wins: list[tuple[int, float, float]]):
        """Yield (index, start, end, [(t, jpeg)] training, [(t, jpeg)] caption) per window."""
        cfg = self.config
        args = decode_command(path, cfg.frames.fps, cfg.frames.size,
                              Fraction(cfg.caption.frames_per_clip) / Fraction(self.seconds).limit_denominator(1000),
                              cfg.caption.frame_size, cfg.frames.jpeg_quality, cfg.frames.ffmpeg_threads)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        frames: queue.Queue = queue.Queue(maxsize=256)  # bounds memory: ffmpeg waits when we fall behind
        stderr_lines: list[bytes] = []
        readers = [
            threading.Thread(target=_demux_jpegs, args=(proc.stdout, frames), daemon=True),
            threading.Thread(target=lambda: stderr_lines.extend(proc.stderr.readlines()[-20:]), daemon=True),
        ]
        for thread in readers:
            thread.start()
        # A total deadline: a decode that runs past frames.deadline_s is killed.
        timed_out = threading.Event()
        watchdog = threading.Timer(cfg.frames.deadline_s, lambda: (timed_out.set(), proc.kill()))
        watchdog.daemon = True
        watchdog.start()
        train: dict[int, list] = {}
        caption: dict[int, list] = {}
        done = False
        seen = {0: -1.0, 1: -1.0}  # time of the latest frame of each stream
        next_window = 0
        emitted = 0
        self.decode_warning = None
        try:
            while next_window < len(wins):
                index, t, jpeg = frames.get()
                if index is None:
                    done = True
                else:
                    seen[index] = t
                    clip_index = int(t // self.seconds)
                    (train if index == 0 else caption).setdefault(clip_index, []).append((round(t, 3), jpeg))
                # Emit every window both streams have passed.
                while next_window < len(wins):
                    k, start, end = wins[next_window]
                    if not (done or (seen[0] >= end and seen[1] >= end)):
                        break
                    clip_train, clip_caption = train.pop(k, []), caption.pop(k, [])
                    next_window += 1
                    if clip_train or clip_caption:  # a window past a truncated end has no frames
                        emitted += 1
                        yield k, start, end, clip_train, clip_caption
        finally:
            watchdog.cancel()
            if proc.poll() is None and next_window < len(wins):
                proc.kill()  # the consumer stopped early
            proc.wait()
            for thread in readers:
                thread.join(timeout=5)
        if timed_out.is_set():
            raise MediaError("timeout", f"decoding took over frames.deadline_s={cfg.frames.deadline_s:g} s")
        if proc.returncode != 0 or emitted < len(wins):
            lines = b"".join(stderr_lines).decode(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"ffmpeg exited with {proc.returncode}"
            if emitted == 0:
                raise MediaError("decode_failed", reason)
            self.decode_warning = f"decoded {emitted} of {len(wins)} windows: {reason}"

    def _clip_files(self, vid: str, path: str) -> dict[int, tuple[str, float]]:
        """Optional clip files: 'copy' cuts on keyframes, 'exact' re-encodes to exact windows."""
        mode = self.config.clips.write_files
        with tempfile.TemporaryDirectory(prefix="vico-clips-") as tmp:
            pattern = os.path.join(tmp, "%05d.mp4")
            listing = os.path.join(tmp, "segments.csv")
            run(segment_command(path, pattern, listing, self.seconds, mode)[1:], timeout=self.config.frames.deadline_s)
            out = {}
            for line in open(listing).read().splitlines():
                name, start, end = line.rsplit(",", 2)
                # Stream copy cuts on keyframes: a segment belongs to the window it starts in.
                index = int((float(start) + 1e-3) // self.seconds)
                if index in out:
                    continue
                target = storage.join(self.clip_root, vid, f"{clip_id(vid, index)}.mp4")
                storage.upload_file(os.path.join(tmp, name), target)
                out[index] = (target, round(float(end) - float(start), 3))
            return out
