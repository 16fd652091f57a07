"""Summaries: segments of `summaries.segment_clips` captions, then one video summary, gated."""
import json

from stages.base import ErrorRow
from stages.context import Budget
from stages.common import segments
from stages.summaries import SummariesStage, parse_summary
from test_context import hour_of_captions
from vico_pipeline.config import Config
from vico_pipeline.engines import Engine, Result


def _template_rows(n: int, **summaries):
    stage = SummariesStage(Config.model_validate({"summaries": summaries}))
    stage.setup()
    return list(stage.process({"video_id": "hour", "source": "s", "caption": hour_of_captions(n)[::-1]}))


def test_template_writes_honest_stand_in_summaries_for_every_segment_and_the_video():
    rows = _template_rows(25)  # 10 + 10 + 5 clips
    assert [(r["level"], r["start_s"], r["end_s"]) for r in rows] == [
        ("segment", 0.0, 140.0), ("segment", 140.0, 280.0), ("segment", 280.0, 350.0), ("video", 0.0, 350.0)]
    assert all(r["text"].startswith("Stand-in summary (template engine, no model)") for r in rows)
    assert all(r["engine"] == "template" and r["model"] == "template-v1" for r in rows)
    assert "of 10 clip captions" in rows[0]["text"] and "of 3 part summaries" in rows[-1]["text"]
    # built from the level below: a segment's events are its own clips' key events
    assert "red fox jumps over a fence" in rows[0]["text"] and "red fox" not in rows[1]["text"]
    assert _template_rows(25, segment_clips=5)[:5] == [r for r in _template_rows(25, segment_clips=5)
                                                      if r["level"] == "segment"]


def test_stand_in_summary_counts_in_the_singular():
    rows = _template_rows(8)  # one segment: the video summary is made of 1 part summary
    assert "of 8 clip captions" in rows[0]["text"]
    assert "of 1 part summary:" in rows[-1]["text"] and "summaries of parts" not in rows[-1]["text"]


def test_segments_follow_time_order_and_the_configured_size():
    runs = segments(hour_of_captions(23)[::-1], 10)
    assert [len(r) for r in runs] == [10, 10, 3] and runs[0][0]["start_s"] == 0.0


class _Scripted(Engine):
    kind = "scripted"

    def __init__(self, answers):
        self.model, self.answers, self.prompts = "script", list(answers), []

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [self.answers.pop(0) for _ in requests]


def _stage(answers, **clues) -> SummariesStage:
    stage = SummariesStage(Config.model_validate({"clues": clues}))
    stage.engine = _Scripted(answers)
    stage.budget = Budget(stage.engine, stage.config.clues)
    return stage


def _ok(text):
    return Result(text=json.dumps({"summary": text}), finish_reason="stop")


def test_summaries_pass_the_caption_gates_asked_again_then_error_rows():
    good = "Animals of many colours cross a windy meadow one by one, seen from far away."
    answers = [Result(text="I'm sorry, I cannot summarise this.", finish_reason="stop"),   # segment 1: refusal
               _ok("the the the the the the the the the the the"),                        # segment 2: repetition
               _ok(good),                                                                  # segment 1 again
               Result(text='{"summary": "Animals of many', finish_reason="length", completion_tokens=256),
               _ok(good + " The video ends quietly.")]                                     # the video
    stage = _stage(answers, validation_retries=1)
    rows = list(stage.process({"video_id": "v", "source": "s", "caption": hour_of_captions(20)}))
    errors = [r for r in rows if isinstance(r, ErrorRow)]
    kept = [r for r in rows if not isinstance(r, ErrorRow)]
    assert [(e.error_type, e.message.split(":")[0]) for e in errors] == [("summary_truncated", "segment 02")]
    assert "segment 02:20-04:40" in errors[0].message
    assert [(r["level"], r["text"]) for r in kept] == [("segment", good), ("video", good + " The video ends quietly.")]
    assert kept[1]["end_s"] == 140.0  # the video summary spans the segments that passed
    assert "could not be used" in stage.engine.prompts[2] and "declined" in stage.engine.prompts[2]


def test_parse_summary_needs_json_with_text():
    assert parse_summary('{"summary": "  A  dog runs. "}') == ("A dog runs.",)
    assert parse_summary("A dog runs.") is None and parse_summary('{"summary": ""}') is None


def test_the_summaries_fingerprint_follows_captions_not_clue_settings():
    from vico_pipeline.fingerprint import stage_fingerprints
    from vico_pipeline.registry import stage_specs

    def fps(*settings):
        from vico_pipeline.config import load_config
        return stage_fingerprints(load_config(None, list(settings)), stage_specs())

    base = fps()
    assert fps("caption.prompt_version=v1")["summaries"] != base["summaries"]  # captions changed (v2 is the default)
    assert fps("summaries.segment_clips=5")["summaries"] != base["summaries"]
    assert fps("clues.model=another")["summaries"] != base["summaries"]  # the engine that writes them
    assert fps("clues.max_clues=5")["summaries"] == base["summaries"]  # clue selection does not touch them
    assert fps("summaries.segment_clips=5")["clues"] != base["clues"]  # clues read the segment summaries
    assert fps("clues.max_clues=5")["caption"] == base["caption"]
