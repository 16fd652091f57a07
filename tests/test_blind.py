"""The blind-answer filter with the offline `rules` engine, a scripted engine and engines that fail;
its numbers in the manifest and the report of a real demo version."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.blind import BlindStage, blind_accuracy, blind_request, parse_letter, rotate, rotations_right
from vico_pipeline.config import Config
from vico_pipeline.engines import EngineError, Result, build_engine
from vico_pipeline.engines.rules import rule_choice

QUESTION = "What happens next in the video, after this: \"a red car parks by the river\"?"


def mc(qid: str, task: str, options: list[str], answer: int, question: str = QUESTION) -> dict:
    return {"question_id": qid, "video_id": "vid", "task": task, "question": question, "options": options,
            "answer": "ABCD"[answer], "answer_index": answer, "evidence_clip_ids": ["vid-00001", "vid-00002"],
            "split": "train", "conversations": [{"from": "human", "value": "<video>\n" + question},
                                                {"from": "gpt", "value": f"({'ABCD'[answer]})"}]}


LONG = mc("vid-next_event-01", "next_event", ["a dog", "a man waves at a passing boat on the river bank", "rain",
                                               "a bird"], 1)
TIED = mc("vid-clue_time-01", "clue_time", ["00:14–00:28", "00:42–00:56", "01:10–01:24", "01:38–01:52"], 2,
          "At what time in the video does this happen: \"a bird lands\"?")
SIDES = mc("vid-before_after-01", "before_after", ["before", "after"], 0,
           "Does \"a bird lands\" happen before or after \"a dog runs\"?")
OPEN = {**mc("vid-timeline-01", "timeline", [], 0, "List the main events."), "answer_index": -1, "answer": "..."}


def run_stage(stage: BlindStage, questions: list[dict]) -> tuple[list[dict], list[ErrorRow]]:
    out = list(stage.process({"video_id": "vid", "source": "demo/vid.mp4", "questions": questions}))
    return [r for r in out if isinstance(r, dict)], [r for r in out if isinstance(r, ErrorRow)]


def rules_stage() -> BlindStage:
    stage = BlindStage(Config())
    stage.setup()
    return stage


# --------------------------------------------------------------------------- rules
def test_rules_engine_says_what_it_is_and_answers_blind_questions_only():
    engine = build_engine(Config().blind, "blind")
    assert engine.kind == "rules" and "no model" in engine.model
    with pytest.raises(EngineError, match="blind"):
        build_engine(Config().blind, "caption")


def test_rules_pick_clear_cues_only_else_the_first_option():
    assert rule_choice(QUESTION, LONG["options"]) == 1  # clearly the longest
    assert rule_choice("Is the red car by the river?", ["a red car by the river", "a dog", "a cat"]) == 0
    assert rule_choice("Where is the red car by the river?", ["a dog", "a cat", "the red car and the river"]) == 2
    assert rule_choice(TIED["question"], TIED["options"]) == 0  # no cue: position prior
    assert rule_choice(SIDES["question"], SIDES["options"]) == 0  # "before" is longer, but not clearly


def test_rotations_put_the_right_option_at_every_letter():
    options = ["w", "x", "y", "z"]
    assert [rotate(options, k) for k in range(4)] == [options, ["x", "y", "z", "w"], ["y", "z", "w", "x"],
                                                      ["z", "w", "x", "y"]]
    question = mc("q", "clue_time", options, 2)
    prompts = [blind_request(question, k) for k in range(4)]
    assert "<video>" not in prompts[0].prompt and "cannot see the video" in prompts[0].prompt
    assert "(C) y" in prompts[0].prompt and "(B) y" in prompts[1].prompt and "(A) y" in prompts[2].prompt
    always_a = [Result(text="(A)")] * 4
    assert rotations_right(question, always_a) == 1  # a letter prior is right once, never every time
    following = [Result(text=f"The answer is ({'CBAD'[k]}).") for k in range(4)]
    assert rotations_right(question, following) == 4  # y is at C, B, A, D in rotations 0-3
    assert rotations_right(question, following[:3] + [Result(text="(B)")]) == 3
    assert parse_letter("B) because", 4) == 1 and parse_letter("(D)", 2) is None and parse_letter("A man", 4) == 0
    assert parse_letter("no idea", 4) is None


def test_rules_filter_drops_what_text_gives_away_and_keeps_the_rest():
    kept, errors = run_stage(rules_stage(), [LONG, TIED, SIDES, OPEN])
    assert not errors
    by_id = {q["question_id"]: q for q in kept}
    assert LONG["question_id"] not in by_id  # the clearly longest option is right in every rotation
    assert by_id[TIED["question_id"]]["blind_correct"] == 1  # first-position prior: one rotation of four
    assert by_id[SIDES["question_id"]]["blind_correct"] == 1
    assert by_id[OPEN["question_id"]]["blind_correct"] is None  # open questions are not asked
    # The filter's own numbers: before, the longest-option question counts as 4 of 4 rotations.
    stats = blind_accuracy([LONG, TIED, SIDES, OPEN], kept)
    assert stats["next_event"] == {"questions": 1, "dropped": 1, "unanswered": 0, "before": 1.0, "after": None}
    assert stats["clue_time"] == {"questions": 1, "dropped": 0, "unanswered": 0, "before": 0.25, "after": 0.25}
    assert stats["before_after"]["after"] == 0.5 and "timeline" not in stats


def test_disabled_filter_keeps_everything_without_verdicts():
    config = Config()
    config.blind.enabled = False
    stage = BlindStage(config)
    stage.setup()
    kept, errors = run_stage(stage, [LONG, TIED])
    assert not errors and [q["blind_correct"] for q in kept] == [None, None] and stage.engine is None


# --------------------------------------------------------------------------- engines that fail
class _Raises:
    def __call__(self, requests):
        raise RuntimeError("CUDA error: device lost")


class _HalfFails:
    def __call__(self, requests):
        return [Result(text="(A)") if i % 2 == 0 else Result(error_type="timeout", error="no answer in 60 s")
                for i in range(len(requests))]


@pytest.mark.parametrize("engine", [_Raises(), _HalfFails()], ids=["raises", "some_requests_fail"])
def test_failed_engine_keeps_questions_with_null_and_an_error_row(engine):
    stage = rules_stage()
    stage.engine = engine
    kept, errors = run_stage(stage, [LONG, TIED, SIDES, OPEN])
    assert sorted(q["question_id"] for q in kept) == sorted(q["question_id"] for q in (LONG, TIED, SIDES, OPEN))
    assert all(q["blind_correct"] is None for q in kept)  # never silently dropped, never a made-up verdict
    assert sorted(e.message.split(" ")[0] for e in errors) == sorted(q["question_id"] for q in (LONG, TIED, SIDES))
    assert all(e.error_type == "blind_unanswered" and e.item_id == "vid" for e in errors)
    stats = blind_accuracy([LONG, TIED, SIDES, OPEN], kept)
    assert stats["next_event"] == {"questions": 1, "dropped": 0, "unanswered": 1, "before": None, "after": None}


class _Broken(BaseHTTPRequestHandler):
    """An endpoint that fails every request (HTTP 500)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_error(500)


@pytest.fixture
def broken_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_engine_whose_endpoint_fails_keeps_every_question(broken_endpoint):
    config = Config()
    blind = config.blind
    blind.engine, blind.model, blind.base_url = "openai", "m", broken_endpoint
    blind.retries, blind.backoff_s, blind.timeout_s = 0, 0.01, 10.0
    stage = BlindStage(config)
    stage.setup()
    kept, errors = run_stage(stage, [LONG, TIED, OPEN])
    assert len(kept) == 3 and all(q["blind_correct"] is None for q in kept)
    assert len(errors) == 2 and all(e.error_type == "blind_unanswered" for e in errors)
    assert all("500" in e.message for e in errors), [e.message for e in errors]


# --------------------------------------------------------------------------- in a run
def test_blind_stage_is_fingerprinted_on_its_own_keys():
    from vico_pipeline.fingerprint import stage_fingerprints
    from vico_pipeline.registry import stage_specs

    base = Config()
    other = Config()
    other.blind.engine, other.blind.model = "openai", "some-model"
    runtime = Config()
    runtime.blind.concurrency = 16
    a, b, c = (stage_fingerprints(cfg, stage_specs()) for cfg in (base, other, runtime))
    assert [name for name in a if a[name] != b[name]] == ["blind"]  # only the filter re-runs
    assert a == c
    assert stage_specs()[-1].name == "blind" and stage_specs()[-1].table == "questions"


def test_demo_version_questions_carry_blind_verdicts_in_table_manifest_and_report(tmp_path_factory, tmp_path):
    from tests.test_versions_support import demo_version, read_table
    from vico_pipeline.report import write_report

    version = demo_version(tmp_path_factory)
    questions = read_table(version, "questions").to_pylist()
    assert questions and all("blind_correct" in q for q in questions)
    for q in questions:
        if q["options"]:
            assert 0 <= q["blind_correct"] < len(q["options"])  # kept: wrong in at least one rotation
        else:
            assert q["blind_correct"] is None
    manifest = json.load(open(os.path.join(version, "manifest.json")))
    accuracy = manifest["stages"]["blind"]["accuracy_by_task"]
    tasks = {q["task"] for q in questions if q["options"]}
    assert set(accuracy) == tasks
    for task, entry in accuracy.items():
        kept = [q for q in questions if q["task"] == task]
        assert entry["questions"] == len(kept) + entry["dropped"]
        expected_after = sum(q["blind_correct"] / len(q["options"]) for q in kept) / len(kept)
        assert entry["after"] == round(expected_after, 4)
    html = open(write_report(version, str(tmp_path / "r.html"))).read()
    assert "Blind answers" in html and "blind.engine rules" in html
