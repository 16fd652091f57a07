"""The blind-answer filter with real text engines: a tiny local model through `transformers`, and
`transformers serve` on 127.0.0.1 through `openai`. The tiny models answer at random; what is
checked is the filter's bookkeeping on real answers: every rotation asked, every multiple-choice
question given a verdict, nothing dropped that was not right in every rotation."""
from __future__ import annotations

import pytest

from stages.base import ErrorRow
from stages.blind import BlindStage, parse_letter
from tests.test_blind import LONG, OPEN, SIDES, TIED
from tests.test_engines_openai import serve  # noqa: F401  (the module's `transformers serve` fixture)
from vico_pipeline.config import Config

QUESTIONS = [LONG, TIED, SIDES, OPEN]


class Recording:
    """Wraps an engine and keeps every request and answer."""

    def __init__(self, engine):
        self.engine, self.requests, self.results = engine, [], []

    def __call__(self, requests):
        results = self.engine(requests)
        self.requests += requests
        self.results += results
        return results


def run_filter(config: Config):
    stage = BlindStage(config)
    stage.setup()
    stage.engine = recording = Recording(stage.engine)
    out = list(stage.process({"video_id": "vid", "source": "demo", "questions": QUESTIONS}))
    return [r for r in out if isinstance(r, dict)], [r for r in out if isinstance(r, ErrorRow)], recording


def check_verdicts(kept, errors, recording):
    assert not errors, [e.message for e in errors]
    # Every rotation of every multiple-choice question was asked, without the video.
    asked = [q for q in QUESTIONS if q["options"]]
    assert len(recording.requests) == sum(len(q["options"]) for q in asked) == 10
    assert all(not r.images and "cannot see the video" in r.prompt for r in recording.requests)
    assert all(r.ok for r in recording.results)
    # Recount each question's verdict from the raw answers: kept ones carry it, dropped ones were 4/4.
    kept_by_id = {q["question_id"]: q for q in kept}
    answers = iter(recording.results)
    for q in asked:
        n = len(q["options"])
        right = sum(parse_letter(next(answers).text, n) == (q["answer_index"] - k) % n for k in range(n))
        if right == n:
            assert q["question_id"] not in kept_by_id
        else:
            assert kept_by_id[q["question_id"]]["blind_correct"] == right
    assert kept_by_id[OPEN["question_id"]]["blind_correct"] is None


def test_blind_filter_with_a_tiny_local_text_model(tmp_path):
    from vico_pipeline.engines.tiny import build_tiny_lm

    config = Config()
    blind = config.blind
    blind.engine, blind.model, blind.device, blind.max_tokens = "transformers", build_tiny_lm(str(tmp_path / "lm")), "cpu", 4
    kept, errors, recording = run_filter(config)
    assert recording.engine.kind == "transformers"
    assert all(0 < r.completion_tokens <= 4 for r in recording.results)
    check_verdicts(kept, errors, recording)


def test_blind_filter_through_openai_against_transformers_serve(serve):  # noqa: F811
    base_url, model = serve
    config = Config()
    blind = config.blind
    blind.engine, blind.base_url, blind.model, blind.max_tokens = "openai", base_url, model, 4
    blind.retries, blind.backoff_s, blind.timeout_s = 1, 0.05, 60
    kept, errors, recording = run_filter(config)
    assert recording.engine.kind == "openai"
    assert all(r.prompt_tokens > 0 and 0 < r.completion_tokens <= 4 for r in recording.results)
    check_verdicts(kept, errors, recording)
