"""One copy of each video (vico_pipeline/dedup.py): the training frames' perceptual hashes, from
the real frames stage on real demo videos, find a copy re-encoded at another size and bitrate,
cropped by 5% and trimmed by 10 s, and no match among 20 different demo videos; a run keeps the
longest copy and drops the other with a `duplicate_of` error row."""
from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from stages.ffmpeg import ffmpeg_exe, probe
from stages.frames import FramesStage
from vico_pipeline import storage
from vico_pipeline.config import load_config
from vico_pipeline.dedup import duplicates, find_matches, video
from vico_pipeline.demo import script, write_video

SIZE = (640, 360)  # the demo size (on a 320x180 picture the caption bar is most of what pHash sees)


def _clips(path: str, vid: str) -> tuple[dict, list[dict]]:
    meta = probe(path)
    row = {"video_id": vid, "source": path, "duration_s": meta.duration_s, "media_path": path,
           "width": meta.width, "height": meta.height}
    return row, list(FramesStage(load_config("configs/demo.yaml")).process({"video": row}))


def _video(path: str, vid: str):
    row, clips = _clips(path, vid)
    return video(vid, row["duration_s"], row["width"] * row["height"],
                 [h for c in clips for h in c["train_frame_hashes"]], [h for c in clips for h in c["train_frame_colours"]])


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dedup")
    paths = []
    for k in range(20):
        path = str(folder / f"demo-{k:02d}.mp4")
        write_video(path, script(500 + k, 75.0), size=SIZE)
        paths.append(path)
    # The first one again: trimmed by 10 s, cropped by 5%, another size and bitrate.
    copy = str(folder / "reupload.mp4")
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-ss", "10", "-i", paths[0],
                    "-vf", "crop=iw*0.95:ih*0.95,scale=480:-2", "-c:v", "libx264", "-b:v", "120k", copy], check=True)
    return paths, copy


@pytest.mark.slow
def test_a_trimmed_resized_reencoded_copy_is_caught_and_different_videos_never_match(demo_files):
    paths, copy = demo_files
    videos = [_video(p, f"v{k:02d}") for k, p in enumerate(paths)]
    assert find_matches(videos) == []  # 20 different demo videos (190 pairs): no false match
    reupload = _video(copy, "reupload")
    found = duplicates(videos + [reupload])
    assert set(found) == {"reupload"}
    kept, match = found["reupload"]
    assert kept == "v00" and match.share >= 0.9 and abs(abs(match.offset) - 10) <= 1  # the 10-s trim


def _write_parts(tmp_path, vid: str, row: dict, clips: list[dict]) -> dict:
    from stages.base import rows_to_table
    from stages.download import VIDEOS_SCHEMA
    from stages.frames import CLIPS_SCHEMA

    parts = {"download": str(tmp_path / f"download-{vid}.parquet"), "frames": str(tmp_path / f"frames-{vid}.parquet"),
             "questions": str(tmp_path / f"questions-{vid}.parquet")}
    storage.write_parquet(rows_to_table([row], VIDEOS_SCHEMA), parts["download"])
    storage.write_parquet(rows_to_table(clips, CLIPS_SCHEMA), parts["frames"])
    return {"video_id": vid, "source": row["source"], "refs": json.dumps(parts),
            "stats": json.dumps({"download": {}, "frames": {}, "questions": {}}), "error_parts": json.dumps([])}


@pytest.mark.slow
def test_a_run_drops_the_shorter_copy_with_a_duplicate_of_row(demo_files, tmp_path):
    """vico_pipeline/assemble.py drop_duplicates on the parts the frames stage wrote for each video."""
    from vico_pipeline.assemble import drop_duplicates

    paths, copy = demo_files
    refs = [_write_parts(tmp_path, vid, *_clips(path, vid)) for vid, path in (("orig", paths[0]), ("copy", copy),
                                                                               ("other", paths[1]))]
    out, dropped, _ = drop_duplicates(str(tmp_path / "version"), refs)
    assert dropped == {"copy": "orig"}  # the longer one is kept
    copy_row = next(r for r in out if r["video_id"] == "copy")
    assert set(json.loads(copy_row["refs"])) == {"download", "frames"}  # no questions: never in train or val
    (error,) = storage.read_parquet(json.loads(copy_row["error_parts"])).to_pylist()
    assert (error["stage"], error["error_type"]) == ("dedup", "duplicate_of") and "orig" in error["message"]
    assert [r for r in out if r["video_id"] != "copy"] == [r for r in refs if r["video_id"] != "copy"]
    assert os.path.basename(os.path.dirname(json.loads(copy_row["error_parts"])[0])) == ".dedup"


def test_vico_run_keeps_one_copy_of_a_reuploaded_video(demo_files, tmp_path):
    """Through `vico run` (issue 19: on the demo and in CI): a manifest of a video, its trimmed,
    cropped, re-encoded copy and another video. The copy is dropped with a `duplicate_of` row and
    says so on stderr; no question, shard row or export record comes from it."""
    import pyarrow.parquet as pq

    from tests.conftest import run_vico

    paths, copy = demo_files
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{paths[0]}\n{copy}\n{paths[1]}\n")
    done = run_vico("run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                    "--set", f"output.root={tmp_path / 'out'}", "--set", "ray.progress=false",
                    env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    version = done.stdout.strip().splitlines()[-1]
    videos = pq.read_table(os.path.join(version, "videos")).to_pylist()
    ids = {os.path.basename(v["source"]): v["video_id"] for v in videos}
    orig, dup, other = ids["demo-00.mp4"], ids["reupload.mp4"], ids["demo-01.mp4"]
    assert f"dedup: video {dup} is a copy of {orig}: dropped (kept {orig})" in done.stderr
    errors = pq.read_table(os.path.join(version, "errors")).to_pylist()
    assert [(e["item_id"], e["error_type"]) for e in errors if e["stage"] == "dedup"] == [(dup, "duplicate_of")]
    asked = {q["video_id"] for q in pq.read_table(os.path.join(version, "questions")).to_pylist()}
    assert dup not in asked and {orig, other} <= asked
    shard_ids = {row["video_id"] for path in glob.glob(os.path.join(version, "shards", "*", "*.parquet"))
                 for row in pq.read_table(path, columns=["video_id"]).to_pylist()}
    assert dup not in shard_ids and orig in shard_ids
