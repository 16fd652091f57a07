"""Windows and frames: one ffmpeg decode per video yields every frame we keep.

One ffmpeg process decodes the video once and splits the picture stream in
two: training frames (`frames.fps`, short side `frames.size`) and caption frames
(`caption.frames_per_clip` spread over each window, short side
`caption.frame_size`), both JPEG-encoded by ffmpeg into two pipes. We read the
pipes as they fill and yield each clip as soon as both streams have passed its
end, so memory holds a few clips, never the decoded video.
"""
from __future__ import annotations

import io
import math
import os
import queue
import subprocess
import tempfile
import threading
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


def _scale(size: int) -> str:
    """Short side to `size`, aspect kept, even dimensions (ffmpeg rotates first)."""
    return f"scale='if(gt(iw,ih),-2,{size})':'if(gt(iw,ih),{size},-2)':flags=bilinear"


def _split_jpegs(stream, out: queue.Queue, tag: str, chunk: int = 1 << 16) -> None:
    """Cut an MJPEG byte stream into JPEG files (each ends with the EOI marker)."""
    buf = bytearray()
    index = 0
    try:
        while True:
            data = stream.read(chunk)
            if not data:
                break
            buf += data
            while True:
                end = buf.find(b"\xff\xd9")
                if end < 0:
                    break
                out.put((tag, index, bytes(buf[: end + 2])))
                index += 1
                del buf[: end + 2]
    finally:
        out.put((tag, None, None))


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
        """`item["video"]` is a videos row; yields one row per window."""
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
        per_clip = cfg.caption.frames_per_clip
        caption_step = self.seconds / per_clip
        train_step = 1.0 / cfg.frames.fps
        graph = (f"[0:v]split=2[a][b];"
                 f"[a]fps={cfg.frames.fps},{_scale(cfg.frames.size)}[train];"
                 f"[b]fps={per_clip}/{self.seconds},{_scale(cfg.caption.frame_size)}[cap]")
        read_fd, write_fd = os.pipe()
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
                "-threads", str(cfg.frames.ffmpeg_threads), "-i", path, "-filter_complex", graph,
                "-map", "[train]", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", str(cfg.frames.jpeg_quality), "pipe:1",
                "-map", "[cap]", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", str(cfg.frames.jpeg_quality), f"pipe:{write_fd}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_fd,))
        os.close(write_fd)
        frames: queue.Queue = queue.Queue(maxsize=256)  # bounds memory: ffmpeg waits when we fall behind
        stderr_lines: list[bytes] = []
        readers = [
            threading.Thread(target=_split_jpegs, args=(proc.stdout, frames, "train"), daemon=True),
            threading.Thread(target=_split_jpegs, args=(os.fdopen(read_fd, "rb"), frames, "cap"), daemon=True),
            threading.Thread(target=lambda: stderr_lines.extend(proc.stderr.readlines()[-20:]), daemon=True),
        ]
        for thread in readers:
            thread.start()
        train: dict[int, list] = {}
        caption: dict[int, list] = {}
        done = {"train": False, "cap": False}
        seen = {"train": -1.0, "cap": -1.0}  # time of the latest frame of each stream
        next_window = 0
        emitted = 0
        self.decode_warning = None
        try:
            while next_window < len(wins):
                tag, index, jpeg = frames.get()
                if index is None:
                    done[tag] = True
                else:
                    t = index * (train_step if tag == "train" else caption_step)
                    seen[tag] = t
                    clip_index = int(t // self.seconds)
                    (train if tag == "train" else caption).setdefault(clip_index, []).append((round(t, 3), jpeg))
                # Emit every window both streams have passed.
                while next_window < len(wins):
                    k, start, end = wins[next_window]
                    if not ((done["train"] or seen["train"] >= end) and (done["cap"] or seen["cap"] >= end)):
                        break
                    clip_train, clip_caption = train.pop(k, []), caption.pop(k, [])
                    next_window += 1
                    if clip_train or clip_caption:  # a window past a truncated end has no frames
                        emitted += 1
                        yield k, start, end, clip_train, clip_caption
        finally:
            if proc.poll() is None and next_window < len(wins):
                proc.kill()  # the consumer stopped early
            proc.wait()
            for thread in readers:
                thread.join(timeout=5)
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
            codec = (["-c", "copy"] if mode == "copy" else
                     ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                      "-bf", "0", "-force_key_frames", f"expr:gte(t,n_forced*{self.seconds})"])
            run(["-i", path, "-map", "0:v:0", "-map", "0:a?", *codec, "-f", "segment",
                 "-segment_time", str(self.seconds), "-segment_list", listing, "-segment_list_type", "csv",
                 "-reset_timestamps", "1", pattern])
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
