"""Windows, the one-pass frame decode and optional clip files, on real ffmpeg output."""
from __future__ import annotations

import io
import subprocess

import pytest
from PIL import Image

from stages.ffmpeg import probe
from stages.frames import FramesStage, windows
from tests.media import ffmpeg
from vico_pipeline.config import load_config

BITS = 16  # a frame's index, drawn as 16 black or white blocks side by side (survives JPEG and scaling)


def _video_row(path: str, vid: str = "vid") -> dict:
    meta = probe(path)
    return {"video_id": vid, "source": path, "duration_s": meta.duration_s, "media_path": path}


def test_windows_follow_the_14_second_grid():
    assert windows(40, 14, 4) == [(0, 0, 14), (1, 14, 28), (2, 28, 40)]
    assert windows(30, 14, 4) == [(0, 0, 14), (1, 14, 28)]  # a 2 s tail is dropped
    assert windows(28, 14, 4) == [(0, 0, 14), (1, 14, 28)]


def test_one_decode_pass_yields_training_and_caption_frames(media, monkeypatch):
    config = load_config("configs/demo.yaml")
    stage = FramesStage(config)
    row = _video_row(media["good"])
    launched = []
    real_popen = subprocess.Popen

    def counting_popen(args, *a, **k):
        launched.append(args)
        return real_popen(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    clips = list(stage.process({"video": row}))
    assert len(launched) == 1, "one ffmpeg decode per video"
    assert [c["clip_index"] for c in clips] == [0, 1, 2]
    assert [len(c["train_frames"]) for c in clips] == [14, 14, 12]  # 1 fps over 14, 14 and 12 s
    assert [len(c["caption_frames"]) for c in clips][:2] == [8, 8]
    # The first frame at or after each 1.75 s instant (a 10 fps source: within 0.1 s), at its own time.
    assert all(0 <= t - (14 + i * 1.75) < 0.1 for i, t in enumerate(clips[1]["caption_frame_times_s"]))
    train = Image.open(io.BytesIO(clips[0]["train_frames"][0]))
    caption = Image.open(io.BytesIO(clips[0]["caption_frames"][0]))
    assert train.format == "JPEG" and min(train.size) == 336
    assert caption.format == "JPEG" and min(caption.size) == 448
    # testsrc2 moves every frame: motion is measured, brightness is mid-grey-ish.
    assert all(c["motion"] > 0 for c in clips) and all(20 < c["brightness"] < 235 for c in clips)


def test_frames_settings_come_from_the_config(media):
    config = load_config("configs/demo.yaml", ["frames.fps=2", "frames.size=112", "caption.frames_per_clip=4"])
    clips = list(FramesStage(config).process({"video": _video_row(media["good"])}))
    assert len(clips[0]["train_frames"]) == 28 and len(clips[0]["caption_frames"]) == 4
    assert min(Image.open(io.BytesIO(clips[0]["train_frames"][0])).size) == 112


@pytest.mark.parametrize("mode", ["copy", "exact"])
def test_clip_files(media, tmp_path, mode):
    config = load_config("configs/demo.yaml", [f"clips.write_files={mode}"])
    clips = list(FramesStage(config, clip_root=str(tmp_path)).process({"video": _video_row(media["good"])}))
    lengths = [c["clip_file_s"] for c in clips]
    assert all(c["clip_path"] and c["clip_path"].startswith(str(tmp_path)) for c in clips)
    if mode == "exact":  # forced keyframes: every clip 14 s but the last
        assert [round(x, 1) for x in lengths] == [14.0, 14.0, 12.0]
    else:  # stream copy cuts on keyframes (every 2 s here): lengths recorded, not promised
        assert abs(sum(lengths) - 40.0) < 1.0 and all(x > 0 for x in lengths)
        assert all(abs(x - 14) <= 2 for x in lengths[:-1])


def _numbered_video(path: str, rate: str, vfr: bool, seconds: int = 30, keep: str = "lt(n,240)+not(mod(n,3))") -> str:
    """Every frame shows its own index n (in the source's frame grid) in its pixels; its true time is n/rate.
    VFR: the frames `keep` selects (by default every frame for 8 s, then one in three: the gaps vary)."""
    bits = f"255*mod(floor(N/pow(2,floor(X*{BITS}/W))),2)"
    chain = f"geq=lum='{bits}':cb=128:cr=128"
    if vfr:
        chain += f",select='{keep}'"
    ffmpeg("-f", "lavfi", "-i", f"color=c=black:s=256x64:r={rate}:d={seconds}", "-vf", chain,
           *(["-fps_mode", "vfr"] if vfr else []), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "8",
           "-pix_fmt", "yuv420p", path)
    return path


def _index_in(jpeg: bytes) -> int:
    image = Image.open(io.BytesIO(jpeg)).convert("L")
    w, h = image.size
    return sum((image.getpixel((int((i + 0.5) * w / BITS), h // 2)) > 128) << i for i in range(BITS))


@pytest.mark.parametrize("rate, vfr", [("30000/1001", False), ("30", True)])
def test_recorded_frame_times_are_the_frames_presentation_times(tmp_path, rate, vfr):
    from fractions import Fraction

    path = _numbered_video(str(tmp_path / "numbered.mp4"), rate, vfr)
    fps = float(Fraction(rate))
    clips = list(FramesStage(load_config("configs/demo.yaml")).process({"video": _video_row(path)}))
    assert len(clips) == 2
    for branch in ("train", "caption"):
        checked = 0
        for clip in clips:
            for jpeg, t in zip(clip[f"{branch}_frames"], clip[f"{branch}_frame_times_s"]):
                shown = _index_in(jpeg) / fps  # when the frame in the picture is presented
                assert abs(t - shown) <= 0.5 / fps + 1e-3, (branch, t, shown)
                assert clip["start_s"] <= t < clip["end_s"]
                checked += 1
        assert checked >= 16, branch
    # Sampling follows the clock: one training frame per second, the first at or after each second.
    times = [t for c in clips for t in c["train_frame_times_s"]]
    assert [int(t) for t in times] == list(range(28)) and all(t - int(t) < 3 / fps for t in times)


def test_caption_frames_of_a_vfr_source_are_timed_within_half_a_frame_past_half_a_minute(tmp_path):
    """Issue 19's case: a source mostly at 10 fps (one frame in three of 30) with a burst of every
    frame from 33 to 34 s; ffmpeg guesses 10 fps for it, and with the encoders' default time base
    (1/frame rate) the caption frame of 33.267 s was recorded at 33.300 s. At 8 and at 16 caption
    frames a clip, each frame's recorded time is its own within half a frame."""
    path = _numbered_video(str(tmp_path / "vfr40.mp4"), "30", True, seconds=40, keep="not(mod(n,3))+between(t,33,34)")
    for per_clip in (8, 16):
        config = load_config("configs/demo.yaml")
        config.caption.frames_per_clip = per_clip
        clips = list(FramesStage(config).process({"video": _video_row(path)}))
        pairs = [(t, _index_in(jpeg) / 30) for c in clips for jpeg, t in zip(c["caption_frames"], c["caption_frame_times_s"])]
        assert any(32.5 <= t <= 34.0 for t, _ in pairs)
        assert all(abs(t - shown) <= 0.5 / 30 + 1e-3 for t, shown in pairs), [p for p in pairs if abs(p[0] - p[1]) > 0.02]


def test_a_decode_that_stalls_is_killed_at_its_deadline(tmp_path, media):
    """The video is a pipe that delivers half a file and then nothing, never closing: only the
    total deadline ends the decode (before, it waited for ever)."""
    import os
    import threading

    ffmpeg("-i", media["good"], "-c", "copy", "-f", "matroska", str(tmp_path / "good.mkv"))
    data = (tmp_path / "good.mkv").read_bytes()
    fifo = str(tmp_path / "stalled.mkv")
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():
        with open(fifo, "wb") as pipe:
            pipe.write(data[: len(data) // 2])
            pipe.flush()
            release.wait(120)

    threading.Thread(target=writer, daemon=True).start()
    row = {"video_id": "vid", "source": fifo, "duration_s": 40.0, "media_path": fifo}
    try:
        rows = list(FramesStage(load_config("configs/demo.yaml", ["frames.deadline_s=3"])).process({"video": row}))
    finally:
        release.set()
    assert rows[-1].error_type == "timeout" and "frames.deadline_s=3" in rows[-1].message, rows[-1]
