"""The caption gates (vico.md "Quality gates"): what a model wrote becomes a caption only when
it is whole, parseable JSON with a readable caption, no refusal and no degenerate repetition."""
import json

import pytest

from stages.base import ErrorRow
from stages.caption import CaptionStage, gate
from stages.common import refusal, repetitive
from vico_pipeline.config import Config
from vico_pipeline.engines import Result
from vico_pipeline.engines.parse import extract_json
from vico_pipeline.engines.tiny import synthetic_clips

GOOD = json.dumps({"caption": "A woman in a red coat crosses the street and waves at a taxi.",
                   "key_event": "The woman waves down a taxi."})


@pytest.mark.parametrize("result, error_type", [
    (Result(text=GOOD[:40], finish_reason="length", completion_tokens=12), "caption_truncated"),
    (Result(text=GOOD, finish_reason="length"), "caption_truncated"),  # whole-looking, but cut: not trusted
    (Result(text="I'm sorry, but I can't help with describing these images."), "caption_refusal"),
    (Result(text='{"caption": "I cannot describe people in images.", "key_event": "none"}'), "caption_refusal"),
    (Result(text="As an AI, I am unable to view frames."), "caption_refusal"),
    (Result(text='{"caption": "the the the the the the the the the the the", "key_event": "the"}'), "caption_repetitive"),
    (Result(text=json.dumps({"caption": "A dog runs in the park. " * 8, "key_event": "A dog runs."})), "caption_repetitive"),
    (Result(text='{"description": "A man walks in the rain.", "event": "he walks"}'), "caption_unparsed"),
    (Result(text='{"caption": "", "key_event": ""}'), "caption_unparsed"),
    (Result(text="{}"), "caption_unparsed"),
    (Result(text=""), "caption_unparsed"),
    (Result(text="A man walks into a kitchen and opens the fridge."), "caption_unparsed"),  # text, not JSON
    (Result(text='{"caption": "\x04\x05 \ufffd\ufffd"}'), "caption_unparsed"),
    (Result(text="[" * 200000), "caption_unparsed"),  # nested brackets: a verdict, not a RecursionError
])
def test_each_gate_rejects_what_it_names(result, error_type):
    parsed, kind, why = gate(result)
    assert parsed is None and kind == error_type and why


def test_a_good_answer_passes_every_gate():
    parsed, kind, why = gate(Result(text=GOOD, finish_reason="stop"))
    assert parsed == ("A woman in a red coat crosses the street and waves at a taxi.", "The woman waves down a taxi.")
    assert (kind, why) == ("", "")


def test_refusal_and_repetition_do_not_fire_on_ordinary_captions():
    assert not refusal("A sorry-looking dog sits by the door. I cannot see its owner.".replace("A sorry", "A sad"))
    assert refusal("I\u2019m sorry, I can\u2019t do that.")
    assert not repetitive("A man walks in, walks out, and walks in again; the door stays open the whole time.")
    assert repetitive("go go go go go go go go")
    describe = ("describe engine: measured over 8 frames, not a VLM caption. Dominant colours: red (61%), white (20%). "
                "Brightness 120/255 (medium); motion 1.2/255 (slow); no shot change. "
                "A white region moves left to right on the red background.")
    assert not repetitive(describe)


def test_deeply_nested_brackets_never_raise():
    assert extract_json("[" * 100000) is None
    assert extract_json('{"a": ' * 20000 + "1") is None
    assert extract_json("[[[[ " + GOOD) == json.loads(GOOD)


class _Engine:
    """Answers each clip from a script keyed by clip time; records every prompt it got."""
    kind, model = "scripted", "script-1"

    def __init__(self, script):
        self.script, self.prompts = script, []

    def prepare(self, requests):
        return requests

    def generate(self, requests):
        out = []
        for request in requests:
            self.prompts.append(request.prompt)
            key = next(k for k in self.script if k in request.prompt)
            answers = self.script[key]
            out.append(answers.pop(0) if len(answers) > 1 else answers[0])
        return out


def _item(clips):
    return {"video_id": "v", "source": "src", "video": {}, "frames": clips,
            "filter": [{"clip_id": c["clip_id"], "kept": True, "reason": ""} for c in clips]}


def test_rejected_answers_are_retried_bounded_then_error_rows_and_the_batch_goes_on():
    clips = synthetic_clips("v", [(200, 40, 40)] * 5)
    config = Config()
    config.caption.answer_retries = 2
    stage = CaptionStage(config)
    stage.setup()
    stage.engine = _Engine({
        "00:00 to 00:14": [Result(text=GOOD)],
        "00:14 to 00:28": [Result(text="not json at all, sorry"), Result(text=GOOD)],  # good on the retry
        "00:28 to 00:42": [Result(text="[" * 100000)],                             # never parses
        "00:42 to 00:56": [Result(text=GOOD[:30], finish_reason="length")],        # always cut
        "00:56 to 01:10": [Result(text="I'm sorry, I cannot help with that.")],
    })
    rows = list(stage.process(_item(clips)))
    captions = [r for r in rows if not isinstance(r, ErrorRow)]
    errors = {r.item_id: r.error_type for r in rows if isinstance(r, ErrorRow)}
    assert [c["clip_id"] for c in captions] == ["v-00000", "v-00001"]
    assert all(c["answer_format"] == "json" and c["caption"].startswith("A woman") for c in captions)
    # What a retry fixed is still counted: the caption row names the rejected answer's gate.
    assert [c["rejected"] for c in captions] == [[], ["caption_unparsed"]]
    assert errors == {"v-00002": "caption_unparsed", "v-00003": "caption_truncated", "v-00004": "caption_refusal"}
    asked = lambda key: sum(key in p for p in stage.engine.prompts)
    assert asked("00:00 to 00:14") == 1 and asked("00:14 to 00:28") == 2
    assert asked("00:28 to 00:42") == 3 and asked("00:42 to 00:56") == 3  # 1 try + answer_retries
    retry = next(p for p in stage.engine.prompts if "00:14 to 00:28" in p and "could not be used" in p)
    assert "not JSON" in retry  # the second ask says what was wrong


def test_the_transformers_engine_says_when_it_stopped_at_the_token_limit():
    from vico_pipeline.engines.transformers import finish_reason

    assert finish_reason([5, 6, 7, 8], 4, 4, eos_token_id=2) == "length"
    assert finish_reason([5, 6, 2, 0], 2, 4, eos_token_id=2) == "stop"
    assert finish_reason([5, 6, 7, 2], 3, 4, eos_token_id=2) == "stop"


def test_rejections_a_retry_fixed_are_counted_by_type(tmp_path):
    """The manifest's stages.caption.rejected_then_retried, from the caption parts' `rejected`."""
    from stages.base import rows_to_table
    from stages.caption import CAPTIONS_SCHEMA
    from vico_pipeline import storage
    from vico_pipeline.summary import rejected_then_retried

    refs = []
    for vid, rejected in (("a", [["caption_refusal"], []]), ("b", [["caption_unparsed", "caption_refusal"]])):
        part = str(tmp_path / f"{vid}.parquet")
        storage.write_parquet(rows_to_table([{"clip_id": f"{vid}-{i}", "rejected": r} for i, r in enumerate(rejected)],
                                            CAPTIONS_SCHEMA), part)
        refs.append({"refs": json.dumps({"caption": part})})
    refs.append({"refs": json.dumps({"download": "x"})})  # a video that never reached the captions
    assert rejected_then_retried(refs) == {"caption_refusal": 2, "caption_unparsed": 1}


def test_the_report_stage_table_shows_what_a_retry_fixed():
    from vico_pipeline.report import _stage_table

    html = _stage_table({"stages": {"caption": {"items_in": 2, "items_out": 5, "failed": 1,
                                                "error_types": {"caption_unparsed": 1},
                                                "rejected_then_retried": {"caption_refusal": 2}}}})
    assert "caption_unparsed 1; rejected, then fixed by a retry: caption_refusal 2" in html
