"""The four tasks of issue 11 (at_time, gap, summary, said_when) on an hour-long video's tables:
all nine tasks made, every key recomputed from the tables, inputs that a video lacks skipped
without an error, letters and gap options that tell nothing without the video, and the blind
filter asking every multiple-choice task under every rotation while open ones pass."""
from __future__ import annotations

import random
import re
from collections import Counter

from stages.base import ErrorRow
from stages.blind import BlindStage
from stages.questions import GAP_MINUTES, QuestionsStage, build_questions, tasks_without_input
from tests.test_questions import TASKS, check_question
from vico_pipeline.config import Config
from vico_pipeline.engines import Result

HOUR = 3600.0


def hour_video(seed: int = 0, clues: int = 24, engine: str = "openai"):
    """A 60-minute video's tables: 257 captioned clips, `clues` clues, a cue every 5th clip (one
    said twice, one across a clip border), segment summaries and a video summary by `engine`."""
    rng = random.Random(seed)
    clips = int(HOUR // 14) + 1
    captions = [{"clip_id": f"hour-{k:05d}", "start_s": 14.0 * k, "end_s": min(14.0 * (k + 1), HOUR),
                 "key_event": f"scene {k} on screen", "caption": f"caption {k}"} for k in range(clips)]
    picked = sorted(rng.sample(range(clips - 1), clues))
    clue_rows = [{"clip_id": f"hour-{k:05d}", "start_s": 14.0 * k, "end_s": 14.0 * (k + 1),
                  "text": f"event {k} happens"} for k in picked]
    # The lines name their topic apart from the key events' words ("t5", not "5"): a key sharing
    # words with its line can only be asked at the place by overlap that the deal gives it.
    subtitles = [{"start_s": 14.0 * k + 2, "end_s": 14.0 * k + 6, "text": f"we talk about topic t{k} here",
                  "source": "sidecar", "language": "en"} for k in range(0, clips, 5)]
    subtitles += [{"start_s": 14.0 * 7 + 1, "end_s": 14.0 * 7 + 3, "text": "we talk about topic t0 here",
                   "source": "sidecar", "language": "en"},  # topic 0 is said in two clips: never quoted
                  {"start_s": 14.0 * 9 - 1, "end_s": 14.0 * 9 + 2, "text": "this line crosses a border",
                   "source": "sidecar", "language": "en"}]
    summaries = [{"level": "segment", "start_s": 140.0 * s, "end_s": 140.0 * (s + 1), "text": f"segment {s}",
                  "engine": engine, "model": f"{engine}-model"} for s in range(26)]
    summaries.append({"level": "video", "start_s": 0.0, "end_s": HOUR, "text": "An hour of scenes.",
                      "engine": engine, "model": f"{engine}-model"})
    return clue_rows, captions, subtitles, summaries


def test_an_hour_long_video_gets_all_nine_tasks_and_every_key_checks_out():
    clues, captions, subtitles, summaries = hour_video()
    for seed in range(5):
        rows = build_questions(f"hour{seed}", clues, TASKS, 2, seed, 14.0, HOUR, 0.1,
                               captions=captions, summaries=summaries, subtitles=subtitles)
        made = Counter(r["task"] for r in rows)
        assert set(made) == set(TASKS) and made["summary"] == made["timeline"] == 1
        assert all(made[t] == 2 for t in TASKS if t not in ("summary", "timeline"))
        for q in rows:
            check_question(q, clues, captions, summaries, subtitles, HOUR)
            assert q["conversations"][0]["value"].startswith("<video>\n")
            assert "The video lasts" not in q["conversations"][0]["value"]  # consumers add the time header
        said = [q for q in rows if q["task"] == "said_when"]
        assert all("topic t0 " not in q["question"] and "border" not in q["question"] for q in said)
        at = [q for q in rows if q["task"] == "at_time"]
        assert all(re.search(r"\b\d:\d\d:\d\d\b|\b\d\d:\d\d\b", q["question"]) for q in at)


def test_a_video_without_a_summary_or_subtitles_gets_the_other_tasks_and_no_error():
    clues, captions, _, summaries = hour_video()
    config = Config()
    assert set(config.questions.tasks) == set(TASKS)  # all nine on by default
    item = {"video_id": "v", "source": "s", "video": {"duration_s": HOUR}, "clues": clues, "caption": captions}
    rows = list(QuestionsStage(config).process(item))
    assert rows and not any(isinstance(r, ErrorRow) for r in rows)
    assert {r["task"] for r in rows} == set(TASKS) - {"summary", "said_when"}
    assert tasks_without_input(list(TASKS), [], []) == ["summary", "said_when"]
    # Segment summaries alone are no video summary.
    segments = [s for s in summaries if s["level"] == "segment"]
    assert tasks_without_input(list(TASKS), segments, [{"text": "hi"}]) == ["summary"]
    with_both = list(QuestionsStage(config).process({**item, "summaries": summaries,
                                                     "subtitles": hour_video()[2]}))
    assert {r["task"] for r in with_both} == set(TASKS)


def test_summary_answers_are_marked_as_written_by_a_model_or_a_stand_in():
    for engine, source in (("template", "stand-in"), ("openai", "model"), ("vllm", "model")):
        clues, captions, subtitles, summaries = hour_video(engine=engine)
        rows = build_questions("v", clues, TASKS, 1, 0, 14.0, HOUR, 0.1, captions=captions,
                               summaries=summaries, subtitles=subtitles)
        (summary,) = [r for r in rows if r["task"] == "summary"]
        assert (summary["answer_source"], summary["answer_engine"]) == (source, engine)
        assert summary["options"] == [] and summary["answer_index"] == -1
        assert summary["conversations"][1]["value"] == "An hour of scenes."
        assert {r["answer_source"] for r in rows if r["task"] != "summary"} == {"timestamps"}


def _dataset(videos: int = 300):
    rng = random.Random(5)
    out = []
    for v in range(videos):
        minutes = rng.choice([5, 12, 30, 60])
        clips = int(minutes * 60 // 14)
        clues = [{"clip_id": f"c-{k:05d}", "start_s": 14.0 * k, "end_s": 14.0 * k + 14, "text": f"event {k} happens"}
                 for k in sorted(rng.sample(range(clips), rng.randint(4, 12)))]
        out += build_questions(f"video{v}", clues, ["at_time", "gap"], 2, 0, 14.0, minutes * 60.0, 0.1)
    return out


def test_gap_options_do_not_say_where_the_truth_is():
    questions = [q for q in _dataset() if q["task"] == "gap"]
    assert len(questions) > 400
    letters = Counter(q["answer_index"] for q in questions)
    assert all(abs(letters[i] / len(questions) - 0.25) < 0.04 for i in range(4))
    for q in questions:  # 4 consecutive buckets, the options alone do not single out the key
        minutes = [int(re.search(r"\d+", o).group()) for o in q["options"]]
        start = GAP_MINUTES.index(minutes[0])
        assert minutes == list(GAP_MINUTES[start:start + 4])
    # Blind rules on the numbers alone (smallest, largest, a middle one) stay near chance.
    for pick in (0, 3, 1, 2):
        right = sum(q["answer_index"] == pick for q in questions) / len(questions)
        assert abs(right - 0.25) < 0.05, (pick, right)


def test_letters_of_every_lettered_task_are_even_over_a_dataset():
    letters = Counter(q["answer"] for q in _dataset())
    total = sum(letters.values())
    assert total > 1000 and all(abs(letters[l] / total - 0.25) < 0.03 for l in "ABCD")


class Recorder:
    """A blind engine that answers (A) and remembers every prompt."""

    def __init__(self):
        self.requests = []

    def __call__(self, requests):
        self.requests += requests
        return [Result(text="(A)") for _ in requests]


def test_blind_filter_asks_every_multiple_choice_task_under_every_rotation_and_passes_open_ones():
    clues, captions, subtitles, summaries = hour_video()
    rows = build_questions("v", clues, TASKS, 2, 0, 14.0, HOUR, 0.1, captions=captions,
                           summaries=summaries, subtitles=subtitles)
    stage = BlindStage(Config())
    stage.engine = Recorder()
    out = list(stage.process({"video_id": "v", "source": "s", "questions": rows}))
    kept = {r["question_id"]: r for r in out if isinstance(r, dict)}
    asked = Counter()
    for request in stage.engine.requests:
        asked[request.data["question"]] += 1
    for q in rows:
        if q["task"] in ("summary", "timeline"):
            assert asked[q["question"]] == 0 and kept[q["question_id"]]["blind_correct"] is None
        else:  # a letter prior is right in one rotation: every multiple-choice question is kept
            assert asked[q["question"]] == len(q["options"])
            assert kept[q["question_id"]]["blind_correct"] == 1
    assert {q["task"] for q in rows if asked[q["question"]]} == {"event_order", "clue_time", "next_event",
                                                                  "before_after", "at_time", "gap", "said_when"}


def test_the_report_says_who_wrote_a_summary_and_which_tasks_lacked_their_input():
    from vico_pipeline.report import _question_html, _without_input

    clues, captions, subtitles, summaries = hour_video(engine="template")
    rows = build_questions("v", clues, TASKS, 1, 0, 14.0, HOUR, 0.1, captions=captions,
                           summaries=summaries, subtitles=subtitles)
    (summary,) = [r for r in rows if r["task"] == "summary"]
    assert "answer written by template template-model (stand-in)" in _question_html(summary)
    assert "written by" not in _question_html(next(r for r in rows if r["task"] == "gap"))
    manifest = {"stages": {"questions": {"tasks_without_input": {"summary": 0, "said_when": 2}}}}
    assert "said_when 2 videos" in _without_input(manifest)
    assert _without_input({"stages": {"questions": {"tasks_without_input": {"summary": 0}}}}) == ""
