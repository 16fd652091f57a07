"""The clue stage: the engine's answer validated by code, order from timestamps."""
import json
from collections import Counter

from stages.base import ErrorRow
from stages.clues import CluesStage, clue_prompt, validate
from vico_pipeline.config import Config
from vico_pipeline.engines import Result


def _captions(n=6):
    return [{"clip_id": f"v-{i:05d}", "video_id": "v", "start_s": 14.0 * i, "end_s": 14.0 * (i + 1),
             "caption": f"caption {i}", "key_event": text}
            for i, text in enumerate(["a man opens the door", "a dog runs across the yard",
                                      "the kettle boils over", "a car parks outside the house",
                                      "two children play chess", "the lights go out"][:n])]


def _answer(events):
    return json.dumps({"events": [{"clip_id": c, "clue": t} for c, t in events]})


def test_validator_keeps_valid_clues_in_time_order_and_counts_the_rest():
    by_clip = {c["clip_id"]: c for c in _captions()}
    cfg = Config().clues
    answer = _answer([
        ("v-00004", "Two children play a game of chess"),
        ("v-00000", "A man opens the front door"),
        ("v-00099", "A clip that does not exist happens"),
        ("v-00002", "At 00:30 the kettle boils over"),
        ("v-00000", "A man closes the door again"),
        ("v-00001", "The man opens the front door"),        # a near-duplicate of the second
        ("v-00003", "\x04es\ufffd creen"),
        ("v-00005", "The lights in the room go out"),
    ])
    valid, dropped = validate("Here you go: " + answer, by_clip, cfg)
    assert [v["clip_id"] for v in valid] == ["v-00000", "v-00004", "v-00005"]  # by timestamp
    assert valid[0]["start_s"] == 0.0 and valid[1]["end_s"] == 70.0
    assert dropped == Counter({"unknown clip id": 1, "clue names a time or clip id": 1,
                               "second clue for one clip": 1, "near-duplicate clue": 1,
                               "clue is empty or not text": 1})
    assert validate("no json at all", by_clip, cfg)[1] == Counter({"answer is not JSON with an events list": 1})
    cfg.max_clues = 2
    assert len(validate(answer, by_clip, cfg)[0]) == 2


def test_template_clues_for_a_video():
    stage = CluesStage(Config())
    stage.setup()
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()[::-1]}))
    assert [r["clue_index"] for r in rows] == list(range(6))
    assert [r["clip_id"] for r in rows] == [f"v-{i:05d}" for i in range(6)]
    assert rows[0]["text"] == "A man opens the door" and rows[0]["engine"] == "template"


class _Scripted:
    """Stands in for an LLM: answers from a script, records the prompts it got."""
    kind, model = "scripted", "script"

    def __init__(self, answers):
        self.answers, self.prompts = list(answers), []

    def __call__(self, requests):
        self.prompts.append(requests[0].prompt)
        return [Result(text=self.answers.pop(0))]


def test_too_few_valid_clues_asks_again_then_writes_an_error_row():
    stage = CluesStage(Config())
    stage.engine = _Scripted(["not json", _answer([("v-00000", "a man opens the door")])])
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()}))
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow) and rows[0].error_type == "too_few_clues"
    assert "after 2 attempt(s)" in rows[0].message and "not JSON" in rows[0].message
    assert "1 valid" in rows[0].message
    assert "could not be used" in stage.engine.prompts[1]  # the second ask says what went wrong


def test_a_second_answer_that_validates_is_used():
    stage = CluesStage(Config())
    good = _answer([("v-00005", "the lights go out"), ("v-00001", "a dog runs across the yard"),
                    ("v-00003", "a car parks outside the house")])
    stage.engine = _Scripted(["garbage", good])
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()}))
    assert [r["clip_id"] for r in rows] == ["v-00001", "v-00003", "v-00005"]


def test_too_few_captions_is_an_error_row_without_asking():
    stage = CluesStage(Config())
    stage.engine = _Scripted([])
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions(2)}))
    assert isinstance(rows[0], ErrorRow) and rows[0].error_type == "too_few_captions"
    assert stage.engine.prompts == []


def test_prompt_lists_clips_in_time_order_with_ids_and_ranges():
    prompt = clue_prompt("v1", _captions(3), 5, 600)
    assert "[v-00001] 00:14-00:28: caption 1 Key event: a dog runs across the yard" in prompt
    assert prompt.index("v-00000") < prompt.index("v-00001") < prompt.index("v-00002")
