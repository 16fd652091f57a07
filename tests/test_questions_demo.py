"""End to end: `vico run configs/demo.yaml` on two 2-minute demo videos (describe + template,
offline) yields captions, clues and question sets for every video; a 5-minute demo video with a
sidecar .srt gets all nine tasks. Every key of both versions is recomputed from their tables."""
import glob
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.test_questions import TASKS, check_question

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_version(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    vico = [sys.executable, "-m", "vico_pipeline.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    subprocess.run(vico + ["demo-videos", str(tmp / "videos"), "--count", "2", "--minutes", "2"],
                   check=True, capture_output=True, env=env, cwd=ROOT)
    done = subprocess.run(vico + ["run", "configs/demo.yaml", "--set", f"sources.manifest={tmp}/videos/manifest.txt",
                                  "--set", f"output.root={tmp}/out", "--set", "ray.progress=false"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _rows(version, table):
    return pq.read_table(os.path.join(version, table)).to_pylist()


def check_every_key(version: str) -> list[dict]:
    """Recompute each question's key from the version's tables (clips, captions, clues, summaries,
    subtitles) and compare; the questions, for more checks."""
    questions = _rows(version, "questions")
    tables = {t: _rows(version, t) for t in ("videos", "captions", "clues", "summaries", "subtitles")}
    clips = pq.read_table(os.path.join(version, "clips"), columns=["clip_id", "video_id", "start_s", "end_s"]).to_pylist()
    for video in tables["videos"]:
        vid = video["video_id"]
        mine = {t: [r for r in rows if r["video_id"] == vid] for t, rows in tables.items()}
        window = {c["clip_id"]: [c["start_s"], c["end_s"]] for c in clips if c["video_id"] == vid}
        span = {c["clip_id"]: [c["event_start_s"], c["event_end_s"]] for c in mine["captions"]}
        for q in (q for q in questions if q["video_id"] == vid):
            # The evidence windows are the evidence events' spans (the captions table's), around their clips.
            assert q["evidence_windows_s"] == [span[c] for c in q["evidence_clip_ids"]]
            assert all(span[c][0] <= window[c][1] and span[c][1] >= window[c][0] for c in q["evidence_clip_ids"])
            check_question(q, mine["clues"], mine["captions"], mine["summaries"], mine["subtitles"], video["duration_s"])
    return questions


def _srt(cues: list[tuple[float, float, str]]) -> str:
    def stamp(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    return "\n".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n" for i, (a, b, text) in enumerate(cues, 1))


@pytest.fixture(scope="module")
def subtitled_version(tmp_path_factory):
    """One 5-minute demo video with a sidecar .srt: a line in every clip, one said in two clips,
    one across a clip border."""
    tmp = tmp_path_factory.mktemp("subtitled")
    vico = [sys.executable, "-m", "vico_pipeline.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    subprocess.run(vico + ["demo-videos", str(tmp / "videos"), "--count", "1", "--minutes", "5"],
                   check=True, capture_output=True, env=env, cwd=ROOT)
    cues = [(14.0 * k + 3, 14.0 * k + 7, f"now we look at part number {k} of the tour") for k in range(21)]
    cues += [(14.0 * 5 + 9, 14.0 * 5 + 11, "now we look at part number 2 of the tour"),
             (14.0 * 4 - 2, 14.0 * 4 + 2, "this sentence crosses a clip border")]
    (tmp / "videos" / "demo-00.srt").write_text(_srt(sorted(cues)))
    done = subprocess.run(vico + ["run", "configs/demo.yaml", "--set", f"sources.manifest={tmp}/videos/manifest.txt",
                                  "--set", f"output.root={tmp}/out", "--set", "ray.progress=false"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_every_key_of_a_real_version_is_the_fact_its_tables_give(demo_version, subtitled_version):
    import json

    questions = check_every_key(demo_version)
    # Demo videos have no subtitles: no said_when, counted in the manifest, never an error row.
    assert "said_when" not in {q["task"] for q in questions} and "summary" in {q["task"] for q in questions}
    manifest = json.load(open(os.path.join(demo_version, "manifest.json")))
    assert manifest["stages"]["questions"]["tasks_without_input"] == {"summary": 0, "said_when": 2}
    questions = check_every_key(subtitled_version)
    assert {q["task"] for q in questions} == set(TASKS)  # all nine, from a real version's tables
    said = [q for q in questions if q["task"] == "said_when"]
    assert all("number 2 " not in q["question"] and "border" not in q["question"] for q in said)
    (summary,) = [q for q in questions if q["task"] == "summary"]
    assert summary["answer_source"] == "stand-in" and summary["answer_engine"] == "template"
    assert {q["answer_source"] for q in questions if q["task"] != "summary"} == {"timestamps"}


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
        # A demo clip showing a cut has a span over both shots (describe measured both), so on a
        # 2-minute video few clues are apart enough to be compared: event_order may not be made.
        assert {"before_after", "timeline"} <= {q["task"] for q in video_questions}
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


@pytest.fixture(scope="module")
def tiny_model_version(demo_version, tmp_path_factory):
    """The same videos again with the caption stage on a tiny random LLaVA in an actor
    (download, frames and filter are reused from the demo run)."""
    from vico_pipeline.engines.tiny import build_tiny_vlm

    model = build_tiny_vlm(str(tmp_path_factory.mktemp("tiny") / "llava"))
    out = os.path.dirname(os.path.dirname(demo_version))
    manifest = os.path.join(os.path.dirname(out), "videos", "manifest.txt")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml",
                           "--set", f"sources.manifest={manifest}", "--set", f"output.root={out}",
                           "--set", "ray.progress=false", "--set", "caption.engine=transformers",
                           "--set", f"caption.model={model}", "--set", "caption.max_tokens=16",
                           "--set", "caption.device=cpu", "--set", "caption.num_cpus=0.5"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    # The random model's answers all fail the caption gates: the version is complete and has no
    # question, which is exit status 3 (contract.md), not a run of garbage captions.
    assert done.returncode == 3, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_model_caption_stage_in_an_actor_and_its_garbage_caught(tiny_model_version, demo_version):
    import json

    assert tiny_model_version != demo_version
    manifest = json.load(open(os.path.join(tiny_model_version, "manifest.json")))
    assert {"download", "frames", "filter"} <= set(manifest["reused"])  # only the caption stage on ran again
    captions = _rows(tiny_model_version, "captions")
    errors = [e for e in _rows(tiny_model_version, "errors") if e["stage"] == "caption"]
    filtered = _rows(tiny_model_version, "filtered")
    # Every kept clip was answered: a caption row from the model, or an error row saying why not.
    assert len(captions) + len(errors) == sum(r["kept"] for r in filtered)
    assert all(c["engine"] == "transformers" and c["completion_tokens"] > 0 for c in captions)
    # The random model's answers are stopped by the caption gates, each with the gate's name.
    assert all(e["error_type"] in ("caption_truncated", "caption_unparsed", "caption_repetitive") for e in errors)
    assert captions == [] and sum(manifest["stages"]["caption"]["error_types"].values()) == len(errors)
    # Nothing unreadable reached the clues or the questions.
    clue_clips = {c["clip_id"] for c in _rows(tiny_model_version, "clues")}
    assert clue_clips <= {c["clip_id"] for c in captions}
    for q in _rows(tiny_model_version, "questions"):
        assert set(q["evidence_clip_ids"]) <= clue_clips


# --------------------------------------------------------------------------- against the scene script
def _script_of(version: str):
    """{video_id: (scenes, clips {clip_id: caption frame times})} from the demo's .scenes.json files."""
    out = {}
    clips = pq.read_table(os.path.join(version, "clips"), columns=["clip_id", "video_id", "caption_frame_times_s"]).to_pylist()
    for video in _rows(version, "videos"):
        script = json.load(open(video["source"][:-4] + ".scenes.json"))
        scenes = [(s["start_s"], s["end_s"]) for s in script]
        times = {c["clip_id"]: c["caption_frame_times_s"] for c in clips if c["video_id"] == video["video_id"]}
        out[video["video_id"]] = (scenes, times)
    return out


def _shows(scenes, times):
    """The scenes a describe caption measured: those of its clip's caption frames."""
    return {clip: {i for i, (a, b) in enumerate(scenes) if any(a <= t < b for t in ts)} for clip, ts in times.items()}


def test_event_spans_are_the_script_scenes_within_a_second(demo_version, subtitled_version):
    within = total = 0
    for version in (demo_version, subtitled_version):
        script = _script_of(version)
        for clue in _rows(version, "clues"):
            scenes, times = script[clue["video_id"]]
            shown = _shows(scenes, times)[clue["clip_id"]]
            truth = (scenes[min(shown)][0], scenes[max(shown)][1])
            total += 1
            within += abs(clue["event_start_s"] - truth[0]) <= 1 and abs(clue["event_end_s"] - truth[1]) <= 1
    assert total >= 10 and within / total >= 0.9, (within, total)


def test_no_key_a_viewer_of_the_demo_would_call_wrong(demo_version, subtitled_version):
    from tests.scenes import judge

    judged = 0
    for version in (demo_version, subtitled_version):
        script = _script_of(version)
        tables = {t: _rows(version, t) for t in ("questions", "clues", "captions", "subtitles")}
        for vid, (scenes, times) in script.items():
            mine = {t: [r for r in rows if r["video_id"] == vid] for t, rows in tables.items()}
            for q in mine["questions"]:
                assert judge(q, scenes, _shows(scenes, times), mine["clues"], mine["captions"], mine["subtitles"]) == []
                judged += 1
    assert judged >= 20


def test_at_16_frames_every_evidence_event_is_in_a_shown_frame(demo_version, subtitled_version):
    """Under a budget like 128 frames on an hour, each sample shows every evidence event."""
    from vico_pipeline.samples import question_sample

    shown_events = 0
    for version in (demo_version, subtitled_version):
        script = _script_of(version)
        for shard in sorted(glob.glob(os.path.join(version, "shards", "*", "*.parquet"))):
            for row in pq.read_table(shard).to_pylist():
                scenes, times = script[row["video_id"]]
                shows = _shows(scenes, times)
                for q in row["questions"]:
                    sample = question_sample(row, q, 16)
                    if sample is None:
                        continue  # left out and counted (its evidence cannot fit 16 frames)
                    for clip in q["evidence_clip_ids"]:
                        seen = {i for t in sample["frame_times_s"] for i, (a, b) in enumerate(scenes) if a <= t < b}
                        assert seen & shows[clip], (q["question_id"], clip)
                        shown_events += 1
    assert shown_events >= 20
