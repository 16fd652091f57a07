"""End to end: `vico run configs/demo.yaml` on two short demo videos (describe + template,
offline) yields captions, clues and question sets for every video. One pipeline run."""
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_version(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    vico = [sys.executable, "-m", "vico_pipeline.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    subprocess.run(vico + ["demo-videos", str(tmp / "videos"), "--count", "2", "--minutes", "1"],
                   check=True, capture_output=True, env=env, cwd=ROOT)
    done = subprocess.run(vico + ["run", "configs/demo.yaml", "--set", f"sources.manifest={tmp}/videos/manifest.txt",
                                  "--set", f"output.root={tmp}/out", "--set", "ray.progress=false"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _rows(version, table):
    return pq.read_table(os.path.join(version, table)).to_pylist()


def test_every_demo_video_gets_captions_clues_and_questions(demo_version):
    videos = _rows(demo_version, "videos")
    assert len(videos) == 2 and all(v["status"] == "ok" for v in videos)
    captions, clues, questions = (_rows(demo_version, t) for t in ("captions", "clues", "questions"))
    clips = pq.read_table(os.path.join(demo_version, "clips"), columns=["clip_id", "video_id"]).to_pylist()
    for video in videos:
        vid = video["video_id"]
        video_clips = {c["clip_id"] for c in clips if c["video_id"] == vid}
        video_captions = [c for c in captions if c["video_id"] == vid]
        video_clues = sorted((c for c in clues if c["video_id"] == vid), key=lambda c: c["clue_index"])
        video_questions = [q for q in questions if q["video_id"] == vid]
        assert video_captions and {c["clip_id"] for c in video_captions} <= video_clips
        assert all(c["engine"] == "describe" and c["caption"].startswith("describe engine: measured")
                   for c in video_captions)
        assert len(video_clues) >= 3
        assert [c["start_s"] for c in video_clues] == sorted(c["start_s"] for c in video_clues)
        assert len({c["clip_id"] for c in video_clues}) == len(video_clues)
        assert {"event_order", "clue_time", "before_after", "timeline"} <= {q["task"] for q in video_questions}
        clue_clips = {c["clip_id"] for c in video_clues}
        for q in video_questions:
            assert set(q["evidence_clip_ids"]) <= clue_clips
            assert q["conversations"][0]["value"].startswith("<video>\n")
            assert q["split"] in ("train", "val")


def test_filter_table_and_no_errors_on_the_demo(demo_version):
    filtered = _rows(demo_version, "filtered")
    assert filtered and all(r["kept"] for r in filtered)  # the demo has no black or frozen clip
    errors = _rows(demo_version, "errors")
    assert [e for e in errors if e["stage"] in ("filter", "caption", "clues", "questions")] == []
