"""Event spans and keys a viewer agrees with (issue 19).

Shots come from the frames stage's one decode; a caption's event span is the shots of the frames
that show its key event; question keys are judged on spans. The property test generates scene
scripts, captions whose key events show some of their clip's frames, clues and subtitle cues, and
checks every key against the script with tests/scenes.py (a viewer who sees only which scene is
on screen when), not against clip windows.
"""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stages.caption import caption_rows, key_event_frames
from stages.questions import build_questions
from tests.scenes import judge
from vico_pipeline.engines import Result
from vico_pipeline.spans import event_span, overlaps, shots_from_cuts, video_shots

TASKS = ["event_order", "clue_time", "next_event", "before_after", "timeline", "at_time", "gap", "said_when"]


def test_the_frames_a_model_names_make_the_span_widened_to_their_shots():
    assert key_event_frames('{"caption": "x", "key_event_frames": [2, 3, 9, "a", 0]}', 8) == [2, 3]
    assert key_event_frames('{"caption": "x", "key_event_frames": 5}', 8) == [5]
    assert key_event_frames('{"caption": "x"}', 4) == [1, 2, 3, 4]  # none named: the whole clip
    shots = shots_from_cuts([10.0, 31.5, 50.0], 60.0)
    assert shots == [(0.0, 10.0), (10.0, 31.5), (31.5, 50.0), (50.0, 60.0)]
    # Frames at 29 and 30 s lie in the shot 10-31.5: the span runs into the clip before and the next one.
    assert event_span([29.0, 30.0], shots, (28.0, 42.0)) == (10.0, 31.5)
    assert event_span([33.0, 41.0], shots, (28.0, 42.0)) == (31.5, 50.0)
    assert event_span([], shots, (28.0, 42.0)) == (10.0, 50.0)  # no frame named: the window's shots
    assert event_span([30.0], [], (28.0, 42.0)) == (28.0, 42.0)  # no shots known: the window
    assert not overlaps((10.0, 31.5), (31.5, 50.0)) and overlaps((10.0, 31.5), (31.0, 50.0))


def test_a_caption_row_carries_the_span_of_the_frames_its_answer_names():
    clip = {"clip_id": "v-00002", "video_id": "v", "clip_index": 2, "start_s": 28.0, "end_s": 42.0,
            "caption_frame_times_s": [28.0 + 1.75 * k for k in range(8)]}
    answer = json.dumps({"caption": "A man walks in and sits down by the window.", "key_event": "a man sits down",
                         "key_event_frames": [6, 7]})  # 36.75 s and 38.5 s
    (row,) = caption_rows(clip, Result(text=answer, finish_reason="stop"), "src", "openai", "m", "v2",
                          shots_from_cuts([31.5, 50.0], 60.0))
    assert row["key_event_frames"] == [6, 7] and (row["event_start_s"], row["event_end_s"]) == (31.5, 50.0)


def test_the_one_decode_finds_the_cuts_of_a_demo_video(tmp_path):
    from stages.ffmpeg import probe
    from stages.frames import FramesStage
    from vico_pipeline.config import load_config
    from vico_pipeline.demo import script, write_video

    scenes = script(5, 75.0)
    path = str(tmp_path / "demo.mp4")
    write_video(path, scenes, size=(320, 180))
    stage = FramesStage(load_config("configs/demo.yaml"))
    video = {"video_id": "v", "source": path, "duration_s": probe(path).duration_s, "media_path": path}
    clips = list(stage.process({"video": video}))
    cuts = [t for c in clips for t in c["cuts_s"]]
    # The first frame of each new scene (10 fps): at most one frame after the script's cut.
    assert len(cuts) == len(scenes) - 1
    assert all(0 <= cut - s.start_s < 0.1 + 1e-6 for cut, s in zip(cuts, scenes[1:]))
    assert [(r["start_s"], r["end_s"]) for r in stage.shots] == video_shots(clips, video["duration_s"])
    assert all(len(c["train_frame_hashes"]) == len(c["train_frames"]) for c in clips)


@st.composite
def scripted_videos(draw):
    """A scene script, captions whose key events show a run of their clip's frames (the span: the
    shots of those frames), clues on some of them, and subtitle cues; `shows` is what each clip's
    key event shows (scene indices), which only the viewer uses."""
    lengths = draw(st.lists(st.floats(3.0, 60.0), min_size=2, max_size=30))
    bounds = [0.0]
    for length in lengths:
        bounds.append(round(bounds[-1] + length, 2))
    duration = bounds[-1]
    scenes = list(zip(bounds, bounds[1:]))
    shots = shots_from_cuts(bounds[1:-1], duration)
    words = ["red", "car", "dog", "runs", "street", "door", "opens", "chef", "cooks", "crowd", "cheers", "bird"]
    captions, shows = [], {}
    for k in range(int(duration // 14)):
        times = [14.0 * k + 1.75 * f for f in range(8)]
        first = draw(st.integers(0, 7))
        named = list(range(first, draw(st.integers(first, 7)) + 1))
        start, end = event_span([times[f] for f in named], shots, (14.0 * k, 14.0 * k + 14))
        clip_id = f"v-{k:05d}"
        shows[clip_id] = {i for i, (a, b) in enumerate(scenes) if any(a <= times[f] < b for f in named)}
        shows[clip_id] = set(range(min(shows[clip_id]), max(shows[clip_id]) + 1))  # the scenes in between too
        text = " ".join(draw(st.lists(st.sampled_from(words), min_size=2, max_size=5))) + f" marker{k}"
        captions.append({"clip_id": clip_id, "start_s": 14.0 * k, "end_s": 14.0 * k + 14, "key_event": text,
                         "event_start_s": start, "event_end_s": end})
    picked = draw(st.lists(st.sampled_from(captions), min_size=min(2, len(captions)), max_size=12, unique_by=lambda c: c["clip_id"])) \
        if captions else []
    clues = [{"clip_id": c["clip_id"], "start_s": c["start_s"], "end_s": c["end_s"], "text": f"clue {c['key_event']}",
              "event_start_s": c["event_start_s"], "event_end_s": c["event_end_s"]} for c in picked]
    subtitles = []
    for n in range(draw(st.integers(0, 25))):
        begin = draw(st.floats(0, duration))
        subtitles.append({"start_s": begin, "end_s": begin + draw(st.floats(0.5, 6.0)),
                          "text": f"someone says line number {n} {draw(st.sampled_from(words))}",
                          "source": "sidecar", "language": "en"})
    return scenes, shows, captions, clues, subtitles, duration


@settings(max_examples=120, deadline=None)
@given(scripted_videos(), st.integers(1, 6), st.integers(0, 10_000))
def test_every_key_is_right_against_the_scene_script(video, per_task, seed):
    scenes, shows, captions, clues, subtitles, duration = video
    rows = build_questions("v", clues, TASKS, per_task, seed, 14.0, duration, 0.1,
                           captions=captions, subtitles=subtitles)
    for q in rows:
        assert judge(q, scenes, shows, clues, captions, subtitles) == [], q["question"]
    # No repeats: one question a (task, evidence); before_after and gap share one a pair of clues.
    keys = [(q["task"] if q["task"] not in ("before_after", "gap") else "pair", frozenset(q["evidence_clip_ids"]))
            for q in rows if q["task"] != "timeline"]
    assert len(keys) == len(set(keys))


def test_keys_and_repeats_on_a_long_scene_that_spans_clips():
    """One 40-second scene over three clips: its clues overlap, so they are never compared, and
    no at_time asks a second of it for one of them."""
    scenes = [(0.0, 20.0), (20.0, 60.0), (60.0, 90.0), (90.0, 130.0), (130.0, 170.0), (170.0, 200.0)]
    shots = list(scenes)
    clues = []
    for k in range(14):
        start, end = event_span([14.0 * k + 7], shots, (14.0 * k, 14.0 * k + 14))
        clues.append({"clip_id": f"v-{k:05d}", "start_s": 14.0 * k, "end_s": 14.0 * k + 14,
                      "text": f"event {k} of the video", "event_start_s": start, "event_end_s": end})
    shows = {c["clip_id"]: {i for i, (a, b) in enumerate(scenes) if a <= c["start_s"] + 7 < b} for c in clues}
    for seed in range(30):
        for q in build_questions("v", clues, TASKS, 8, seed, 14.0, 200.0, 0.1):
            assert judge(q, scenes, shows, clues) == [], q["question"]
            if q["task"] in ("before_after", "event_order", "next_event", "gap"):
                spans = [(c["event_start_s"], c["event_end_s"]) for c in clues if c["clip_id"] in q["evidence_clip_ids"]]
                assert not any(overlaps(a, b) for i, a in enumerate(spans) for b in spans[i + 1:])
