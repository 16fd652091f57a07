"""Windows and frames: one ffmpeg decode per video yields every frame we keep, and its shots.

One ffmpeg process decodes the video once and splits the picture stream in
three: training frames (`frames.fps`, short side `frames.size`) and caption frames
(`caption.frames_per_clip` spread over each window, short side
`caption.frame_size`), both JPEG-encoded by ffmpeg, and every frame shrunk to a
few hundred raw RGB pixels for the shot changes (`cuts_s`, the `shots` table),
all in one NUT stream on a pipe. Each training frame also gets a perceptual hash and a
colour code (`train_frame_hashes`, `train_frame_colours`) for finding the same footage
uploaded twice (vico_pipeline/dedup.py).
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
from vico_pipeline.spans import shots_from_cuts

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
    # Shot changes (scene cuts) inside the window: the presentation time of each cut's first frame.
    ("cuts_s", pa.list_(pa.float64())),
    # A perceptual hash (pHash, 64 bits) and a colour code of each training frame, for finding
    # the same footage uploaded twice (vico_pipeline/dedup.py).
    ("train_frame_hashes", pa.list_(pa.int64())),
    ("train_frame_colours", pa.list_(pa.int64())),
])

# One row per shot of a video (contract.md `shots`): the stretch between two cuts.
SHOTS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("shot_index", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
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


# Shot changes: every decoded frame, shrunk to SCENE_SIZE RGB pixels, comes out raw (stream 2)
# and is scored against the one before (`scene_score`). A dense stream: a sparse one (only the
# cut frames) is held back by ffmpeg and reached the pipe up to a shot late.
SCENE_SIZE = (32, 18)


def _scene_frames(stream):
    """Every frame, small (cheap to score), RGB: a change of colour at one brightness is a cut too."""
    return stream.filter("scale", SCENE_SIZE[0], SCENE_SIZE[1], flags="area").filter("format", "rgb24")


def scene_score(previous: np.ndarray, current: np.ndarray, previous_mafd: float) -> tuple[float, float]:
    """(score 0-1, mean absolute difference) of a frame against the one before, as ffmpeg's
    `select=scene` scores it: the change, less a steady change (motion, fades) of the frame before."""
    mafd = float(np.abs(current.astype(np.int16) - previous.astype(np.int16)).mean())
    return min(max(min(mafd, abs(mafd - previous_mafd)) / 100.0, 0.0), 1.0), mafd


def decode_graph(path: str, train_fps: float, train_size: int, caption_rate: Fraction, caption_size: int,
                 threads: int = 0):
    """The decode's three branches (ffmpeg-python streams): training frames, caption frames, scene frames."""
    import ffmpeg as ffmpeg_python

    video = ffmpeg_python.input(path, threads=threads).video.split()
    train = _scale(_every(video[0], Fraction(train_fps).limit_denominator(1000)), train_size)
    caption = _scale(_every(video[1], caption_rate), caption_size)
    return train, caption, _scene_frames(video[2])


def decode_command(path: str, train_fps: float, train_size: int, caption_rate: Fraction, caption_size: int,
                   jpeg_quality: int, threads: int) -> list[str]:
    """One decode, split in three: training frames (stream 0) and caption frames (stream 1) as JPEGs,
    every frame small and raw (stream 2, for shot changes), in NUT on stdout."""
    import ffmpeg as ffmpeg_python

    branches = decode_graph(path, train_fps, train_size, caption_rate, caption_size, threads)
    # enc_time_base demux: the encoders keep the source's time base. By default it is 1/frame rate,
    # and ffmpeg's guess of a VFR source's rate (10 for one mostly at 10 fps with bursts at 30)
    # rounded a frame at 33.267 s to 33.300 s (issue 19).
    return ffmpeg_command(ffmpeg_python.output(*branches, "pipe:1", format="nut", fps_mode="passthrough",
                                               enc_time_base="demux",
                                               **{"c:v:0": "mjpeg", "c:v:1": "mjpeg", "q:v": jpeg_quality,
                                                  "c:v:2": "rawvideo"}))


def frame_hash(jpeg: bytes) -> tuple[int, int]:
    """A training frame's perceptual hash (pHash, 64 bits) and colour code (the mean colour of each
    quarter of the picture, 5 bits a channel: pHash sees only light and shade), both as signed
    int64 (Parquet has no uint64). vico_pipeline/dedup.py compares them."""
    import imagehash
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    image.draft("RGB", (64, 64))  # DCT-domain downscale: pHash looks at 32x32 anyway
    image = image.convert("RGB")
    value = int(str(imagehash.phash(image)), 16)
    quarters = np.asarray(image.resize((2, 2), Image.BOX), np.uint8).reshape(-1) >> 3  # 12 values, 5 bits
    colour = sum(int(v) << (5 * k) for k, v in enumerate(quarters))
    return (value - (1 << 64) if value >= 1 << 63 else value), colour


def frame_hashes(jpegs: list[bytes]) -> dict[str, list[int]]:
    pairs = [frame_hash(jpg) for jpg in jpegs]
    return {"train_frame_hashes": [h for h, _ in pairs], "train_frame_colours": [c for _, c in pairs]}


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

    def __init__(self, config, clip_root: str | None = None, shots_root: str | None = None):
        super().__init__(config)
        self.seconds = config.clips.seconds
        self.clip_root = clip_root
        # Where each video's `shots` part goes (None: kept in `self.shots` only).
        self.shots_root = shots_root
        self.shots: list[dict] = []

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        """`item["video"]` is a videos row; yields one row per window, or an error row naming why not."""
        self.shots = []
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
            cuts_seen: list[float] = []
            for index, start, end, train, captions, cuts in self._decode(path, wins):
                cuts_seen += cuts
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
                    "clip_path": file_path, "clip_file_s": file_s, "cuts_s": cuts,
                    **frame_hashes([jpg for _, jpg in train]),
                }
        self.shots = [{"video_id": vid, "shot_index": i, "start_s": a, "end_s": b}
                      for i, (a, b) in enumerate(shots_from_cuts(cuts_seen, video["duration_s"]))]
        self.write_shots(vid)
        if self.decode_warning:
            yield ErrorRow(vid, source, "partial_decode", self.decode_warning)

    def write_shots(self, video_id: str) -> None:
        """The video's shots part, written before the clips part (whose existence marks it done)."""
        if self.shots_root is None:
            return
        from stages.base import rows_to_table
        from vico_pipeline import layout

        storage.write_parquet(rows_to_table(self.shots, SHOTS_SCHEMA), layout.part_uri(self.shots_root, video_id))

    def _decode(self, path: str, wins: list[tuple[int, float, float]]):
        """Yield (index, start, end, [(t, jpeg)] training, [(t, jpeg)] caption, [cut times]) per window."""
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
        cuts: dict[int, list] = {}
        done = False
        seen = {0: -1.0, 1: -1.0, 2: -1.0}  # time of the latest frame of each stream
        previous, mafd = None, 0.0  # the scene stream's last frame and its difference to the one before
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
                    if index == 2:
                        pixels = np.frombuffer(jpeg, np.uint8)
                        if previous is not None and pixels.size == previous.size:
                            score, mafd = scene_score(previous, pixels, mafd)
                            if score > cfg.frames.scene_threshold:
                                cuts.setdefault(clip_index, []).append(round(t, 3))
                        previous = pixels
                    else:
                        (train if index == 0 else caption).setdefault(clip_index, []).append((round(t, 3), jpeg))
                # Emit every window all three streams have passed.
                while next_window < len(wins):
                    k, start, end = wins[next_window]
                    if not (done or min(seen.values()) >= end):
                        break
                    clip_train, clip_caption = train.pop(k, []), caption.pop(k, [])
                    next_window += 1
                    if clip_train or clip_caption:  # a window past a truncated end has no frames
                        emitted += 1
                        yield k, start, end, clip_train, clip_caption, sorted(cuts.pop(k, []))
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
