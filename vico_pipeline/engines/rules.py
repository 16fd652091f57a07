"""The `rules` blind engine: a multiple-choice question answered from its text alone, no model.

It is the offline baseline of the blind-answer filter (stages/blind.py) and
says what it is in its `model` name. It reads `Request.data` ({question,
options} in the order shown) and answers like a test-taker who never saw the
video, with the cheapest cues a model could learn:

1. word overlap: the option sharing clearly the most words with the question
   (at least 2, and at least twice as many as any other option);
2. length: the clearly longest option (1.5 times the next one, and 10 characters more);
3. a position prior: otherwise, the first option.

Rules 1 and 2 do not move when the options rotate, so a question they answer is
answered right in every rotation and the filter drops it; rule 3 is right in one
rotation of a question, never all of them. The cues count only when they are
clear: "before" is longer than "after", but a rule that dropped every question
answered "before" would leave a data set where "after" is always right.
"""
from __future__ import annotations

import time

from vico_pipeline.engines.base import Engine, Request, Result
from vico_pipeline.text import overlap

LETTERS = "ABCDEFGH"


def clear_winner(values: list[float], least: float, ratio: float, gap: float) -> int | None:
    """Index of the largest value when it is at least `least`, `ratio` times and `gap` above the
    runner-up; None when no option stands out."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    best = values[order[0]]
    second = values[order[1]] if len(values) > 1 else 0.0
    if best >= least and best >= ratio * second and best - second >= gap:
        return order[0]
    return None


def rule_choice(question: str, options: list[str]) -> int:
    """Index of the option the rules pick: a clear overlap, else a clearly longest option, else the first."""
    by_overlap = clear_winner([overlap(question, o) for o in options], least=2, ratio=2.0, gap=1)
    if by_overlap is not None:
        return by_overlap
    by_length = clear_winner([len(o) for o in options], least=1, ratio=1.5, gap=10)
    return by_length if by_length is not None else 0


class RulesEngine(Engine):
    kind = "rules"

    def __init__(self, section):
        super().__init__(section)
        self.model = "rules-v1 (clear word overlap, clearly longest option, else the first; no model)"

    def generate(self, prepared: list[Request]) -> list[Result]:
        out = []
        for request in prepared:
            started = time.perf_counter()
            data = request.data or {}
            options = list(data.get("options") or [])
            if not options:
                out.append(Result(error_type="no_options", error="the rules engine answers multiple-choice questions only"))
                continue
            choice = rule_choice(data.get("question") or "", options)
            out.append(Result(text=f"({LETTERS[choice]})", latency_s=time.perf_counter() - started))
        return out
