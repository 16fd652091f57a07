"""Windows, the one-pass frame decode and optional clip files, on real ffmpeg output."""
from __future__ import annotations

import io
import subprocess

import pytest
from PIL import Image

from stages.ffmpeg import probe
from stages.frames import FramesStage, windows
from vico_pipeline.config import load_config


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
    assert clips[1]["caption_frame_times_s"] == [14 + i * 1.75 for i in range(8)]
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
