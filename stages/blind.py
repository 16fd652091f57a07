"""The blind-answer filter: questions a model answers without watching the video are dropped.

A question that can be answered from its text alone teaches nothing about the
video. For every multiple-choice question of a video, `blind.engine` is asked
the question WITHOUT the video, once under every rotation of its options (a
question with 4 options is asked 4 times, the right option at each letter in
turn). Then:

- answered right in every rotation: the question is dropped;
- otherwise it is kept and carries `blind_correct`, the rotations answered right;
- the engine failed on it: kept, `blind_correct` null, and an error row
  (`blind_unanswered`): a failure never drops a question silently.

Every multiple-choice task is asked (`event_order`, `clue_time`, `next_event`,
`before_after`, `at_time`, `gap`, `said_when`); open questions (`timeline`,
`summary`: no options, `answer_index` -1) are kept with `blind_correct` null. The stage's
output is the version's `questions` table (the last stage filling a table wins,
vico_pipeline/registry.py). `blind_accuracy` turns the stage's input and output
into the per-task accuracy before and after the filter, for the manifest and
the report. No Ray import.
"""
from __future__ import annotations

import re
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.common import QUESTIONS_SCHEMA
from vico_pipeline.engines import Request, Result, build_engine

LETTERS = "ABCDEFGH"
BLIND_SCHEMA = QUESTIONS_SCHEMA if "blind_correct" in QUESTIONS_SCHEMA.names \
    else QUESTIONS_SCHEMA.append(pa.field("blind_correct", pa.int32()))
PROMPT = ("You cannot see the video this question is about. Answer it anyway, with the option "
          "you find most likely.\n{question}\n{options}\nAnswer with the option's letter only.")
_BRACKETED = re.compile(r"\(([A-H])\)")
_LEADING = re.compile(r"^\W*([A-H])(?:\W|$)")


def asked(question: dict) -> bool:
    """Multiple-choice questions are asked blind; open ones (no options) are not."""
    options = question.get("options") or []
    index = question.get("answer_index")
    return len(options) >= 2 and index is not None and 0 <= index < len(options)


def rotate(options: list[str], shift: int) -> list[str]:
    """The options moved `shift` places: rotation k shows option (i + k) mod n at letter i."""
    return options[shift:] + options[:shift]


def blind_request(question: dict, shift: int) -> Request:
    options = rotate(list(question["options"]), shift)
    text = question["question"].replace("<video>", "").strip()
    listed = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return Request(PROMPT.format(question=text, options=listed), data={"question": text, "options": options})


def parse_letter(text: str, count: int) -> int | None:
    """The option index an answer names ("(B)" anywhere, or "B" / "B." / "B) ..." first), or None."""
    match = _BRACKETED.search(text or "") or _LEADING.match(text or "")
    if match and LETTERS.index(match.group(1)) < count:
        return LETTERS.index(match.group(1))
    return None


def rotations_right(question: dict, results: list[Result]) -> int:
    """How many rotations the blind answers got right (result k answers rotation k)."""
    n, answer = len(question["options"]), question["answer_index"]
    return sum(1 for shift, result in enumerate(results) if parse_letter(result.text, n) == (answer - shift) % n)


class BlindStage(Stage):
    name = "blind"
    schema = BLIND_SCHEMA

    def __init__(self, config):
        super().__init__(config)
        self.engine = None

    def setup(self) -> None:
        if self.config.blind.enabled:
            self.engine = build_engine(self.config.blind, "blind")

    def answer(self, requests: list[Request]) -> list[Result]:
        """The engine's answers; an engine that raises fails every request, the questions stay."""
        try:
            results = self.engine(requests)
        except Exception as exc:  # a dead endpoint or a crashed model must not drop questions
            return [Result(error_type=type(exc).__name__, error=str(exc)[:300]) for _ in requests]
        if len(results) != len(requests):
            return [Result(error_type="engine_error", error=f"{len(results)} answers for {len(requests)} requests")
                    for _ in requests]
        return results

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        questions = sorted(item["questions"], key=lambda q: q["question_id"])
        if self.engine is None:  # blind.enabled: false
            yield from ({**q, "blind_correct": None} for q in questions)
            return
        mc = [q for q in questions if asked(q)]
        requests = [blind_request(q, shift) for q in mc for shift in range(len(q["options"]))]
        results = iter(self.answer(requests) if requests else [])
        verdicts = {q["question_id"]: [next(results) for _ in q["options"]] for q in mc}
        for question in questions:
            answers = verdicts.get(question["question_id"])
            if answers is None:
                yield {**question, "blind_correct": None}
                continue
            failed = next((r for r in answers if not r.ok), None)
            if failed is not None:
                yield ErrorRow(item["video_id"], item["source"], "blind_unanswered",
                               f"{question['question_id']} kept without a blind verdict: "
                               f"{failed.error_type}: {failed.error}")
                yield {**question, "blind_correct": None}
                continue
            right = rotations_right(question, answers)
            if right < len(answers):  # answered right in every rotation: dropped
                yield {**question, "blind_correct": right}


# --------------------------------------------------------------------------- statistics
def blind_accuracy(before: list[dict], after: list[dict]) -> dict[str, dict]:
    """Per task: blind accuracy (share of rotations answered right) of the questions before the
    filter and of those it kept, with counts. A question missing from `after` was dropped, so it
    was answered right in every rotation; questions without a verdict are counted apart."""
    kept = {q["question_id"]: q for q in after}
    out: dict[str, dict] = {}
    for question in before:
        if not asked(question):
            continue
        task = out.setdefault(question["task"], {"questions": 0, "dropped": 0, "unanswered": 0,
                                                 "_before": 0.0, "_after": 0.0})
        task["questions"] += 1
        mine = kept.get(question["question_id"])
        if mine is None:
            task["dropped"] += 1
            task["_before"] += 1.0
        elif mine.get("blind_correct") is None:
            task["unanswered"] += 1
        else:
            share = mine["blind_correct"] / len(question["options"])
            task["_before"] += share
            task["_after"] += share
    for task in out.values():
        answered = task["questions"] - task["unanswered"]
        kept_answered = answered - task["dropped"]
        right_before, right_after = task.pop("_before"), task.pop("_after")
        task["before"] = round(right_before / answered, 4) if answered else None
        task["after"] = round(right_after / kept_answered, 4) if kept_answered else None
    return dict(sorted(out.items()))


__all__ = ["BlindStage", "BLIND_SCHEMA", "blind_request", "parse_letter", "rotate", "rotations_right",
           "blind_accuracy"]
