"""The clue stage: the engine's answer validated by code, order from timestamps."""
import json

import pytest

from stages.base import ErrorRow
from stages.clues import CluesStage, clue_prompt, validate
from vico_pipeline.text import TIME_WORDS, gives_time
from vico_pipeline.config import Config
from stages.context import Budget
from vico_pipeline.engines import Engine, Result


KEY_EVENTS = ["a man opens the door", "a dog runs across the yard", "the kettle boils over",
              "a car parks outside the house", "two children play chess", "the lights go out"]


def _captions(n=6):
    return [{"clip_id": f"v-{i:05d}", "video_id": "v", "start_s": 14.0 * i, "end_s": 14.0 * (i + 1),
             "caption": f"In this clip {text}, seen from across the room.", "key_event": text}
            for i, text in enumerate(KEY_EVENTS[:n])]


def _answer(events):
    return json.dumps({"events": [{"clip_id": c, "clue": t} for c, t in events]})


def test_validator_keeps_valid_clues_in_time_order_and_says_why_for_every_other_candidate():
    by_clip = {c["clip_id"]: c for c in _captions()}
    cfg = Config().clues
    answer = _answer([
        ("v-00004", "Two children play a game of chess"),
        ("v-00000", "A man opens the front door"),
        ("v-00099", "A clip that does not exist happens"),
        ("v-00002", "At 00:30 the kettle boils over"),
        ("v-00000", "A man closes the door quietly"),
        ("v-00001", "The man opens the front door"),        # a near-duplicate of the second
        ("v-00003", "\x04es\ufffd creen"),
        ("v-00005", "The lights in the room go out"),
    ])
    valid, candidates = validate("Here you go: " + answer, by_clip, cfg)
    assert [v["clip_id"] for v in valid] == ["v-00000", "v-00004", "v-00005"]  # by timestamp
    assert valid[0]["start_s"] == 0.0 and valid[1]["end_s"] == 70.0
    assert [(c["clip_id"], c["kept"], c["reject_reason"]) for c in candidates] == [
        ("v-00004", True, ""), ("v-00000", True, ""), ("v-00099", False, "unknown_clip"),
        ("v-00002", False, "gives_time"), ("v-00000", False, "same_clip"), ("v-00001", False, "not_unique"),
        ("v-00003", False, "unreadable"), ("v-00005", True, "")]
    assert validate("no json at all", by_clip, cfg) == ([], [])
    cfg.max_clues = 2
    valid, candidates = validate(answer, by_clip, cfg)
    assert len(valid) == 2 and candidates[-1]["reject_reason"] == "over_max_clues"


def test_a_clue_must_fit_its_own_clip_better_than_any_other():
    by_clip = {c["clip_id"]: c for c in _captions()}
    cfg = Config().clues
    valid, candidates = validate(_answer([
        ("v-00003", "A dragon flies over the castle"),       # fits no caption at all
        ("v-00000", "A dog is running about in the yard"),   # fits clip 1, not its own clip 0
        ("v-00005", "The lights suddenly go out"),           # fits its own clip
    ]), by_clip, cfg)
    assert [c["reject_reason"] for c in candidates] == ["ungrounded", "ungrounded", ""]


def test_a_clue_equal_to_another_clips_key_event_is_not_unique():
    captions = _captions()
    captions[4]["key_event"] = "a man opens the door"  # clip 4 shows the same event: a clue both clips answer
    by_clip = {c["clip_id"]: c for c in captions}
    valid, candidates = validate(_answer([("v-00000", "A man opens the door"),
                                          ("v-00001", "A dog runs across the yard"),
                                          ("v-00002", "The kettle boils over")]), by_clip, Config().clues)
    assert [c["reject_reason"] for c in candidates] == ["not_unique", "", ""]
    assert [v["clip_id"] for v in valid] == ["v-00001", "v-00002"]


@pytest.mark.parametrize("word", TIME_WORDS)
def test_every_relative_time_word_gives_time(word):
    assert gives_time(f"A man in a hat {word} waves at the camera")
    assert gives_time(f"{word.capitalize()} a man in a hat waves")


@pytest.mark.parametrize("clue, gives", [
    ("A man opens the door", False), ("Two children play chess by the window", False),
    ("A woman is opening a parcel", False), ("The man thinks and frowns", False),
    ("Scene 3: a car stops", True), ("At 01:20 a car stops", True), ("Finally the car stops", True),
    ("The car stops at the end", True), ("The dog barks again", True), ("A car stops; then it turns", True),
])
def test_gives_time_on_ordinary_clues(clue, gives):
    assert gives_time(clue) == gives


def test_template_clues_for_a_video():
    stage = CluesStage(Config.model_validate({"clues": {"seconds_per_clue": 14}}))  # one clue a clip
    stage.setup()
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()[::-1]}))
    assert [r["clue_index"] for r in rows] == list(range(6))
    assert [r["clip_id"] for r in rows] == [f"v-{i:05d}" for i in range(6)]
    assert rows[0]["text"] == "A man opens the door" and rows[0]["engine"] == "template"
    assert [c["kept"] for c in stage.candidates] == [True] * 6 and stage.candidates[0]["attempt"] == 1


class _Scripted(Engine):
    """Stands in for an LLM: answers from a script, records the prompts it got."""
    kind = "scripted"

    def __init__(self, answers):
        self.model, self.answers, self.prompts = "script", list(answers), []

    def __call__(self, requests):
        self.prompts.append(requests[0].prompt)
        return [Result(text=self.answers.pop(0))]


def _with(engine, config=None) -> CluesStage:
    stage = CluesStage(config or Config())
    stage.engine, stage.budget = engine, Budget(engine, stage.config.clues)
    return stage


def test_too_few_valid_clues_asks_again_then_writes_an_error_row():
    stage = _with(_Scripted(["not json", _answer([("v-00000", "a man opens the door")])]))
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()}))
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow) and rows[0].error_type == "too_few_clues"
    assert "after 2 attempt(s)" in rows[0].message and "not JSON" in rows[0].message
    assert "1 valid" in rows[0].message
    assert "could not be used" in stage.engine.prompts[1]  # the second ask says what went wrong


def test_a_second_answer_that_validates_is_used():
    good = _answer([("v-00005", "the lights go out"), ("v-00001", "a dog runs across the yard"),
                    ("v-00003", "a car parks outside the house")])
    stage = _with(_Scripted(["garbage", good]))
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions()}))
    assert [r["clip_id"] for r in rows] == ["v-00001", "v-00003", "v-00005"]


def test_too_few_captions_is_an_error_row_without_asking():
    stage = _with(_Scripted([]))
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {}, "caption": _captions(2)}))
    assert isinstance(rows[0], ErrorRow) and rows[0].error_type == "too_few_captions"
    assert stage.engine.prompts == []


def test_prompt_lists_clips_in_time_order_with_ids_and_ranges():
    prompt = clue_prompt("v2", _captions(3), 5, 600)
    assert "[v-00001] 00:14-00:28: In this clip a dog runs across the yard, seen from across the room.\n" in prompt
    assert "no number" in prompt and "first" in prompt  # v2 names what the gates reject
    assert prompt.index("v-00000") < prompt.index("v-00001") < prompt.index("v-00002")


def test_the_cues_of_each_clip_go_into_the_clue_prompt_and_ground_clues_behind_the_switch():
    from test_captions import CUES

    captions = _captions(4)
    cue = {**CUES[0], "start_s": 30.0, "end_s": 33.0, "text": "The referee blows the whistle loudly."}
    item = {"video_id": "v", "source": "s", "video": {}, "caption": captions, "subtitles": [cue]}
    answer = _answer([("v-00002", "The referee blows the whistle"), ("v-00000", "A man opens the door"),
                      ("v-00001", "A dog runs across the yard")])
    stage = _with(_Scripted([answer]))
    rows = list(stage.process(item))
    prompt = stage.engine.prompts[0]
    assert '[v-00002] 00:28-00:42: In this clip the kettle boils over, seen from across the room. Said: "The referee' \
           in prompt and '"Said:" quotes what is said' in prompt and prompt.count("Said:") == 2
    assert [r["clip_id"] for r in rows] == ["v-00000", "v-00001", "v-00002"]  # grounded in what is said
    off = _with(_Scripted([answer, answer]), Config.model_validate({"clues": {"use_subtitles": False}}))
    rows = list(off.process(item))
    assert "Said" not in off.engine.prompts[0] and "referee" not in off.engine.prompts[0]
    assert [c["reject_reason"] for c in off.candidates][0] == "ungrounded"  # the speech clue fits no caption
    assert rows[0].error_type == "too_few_clues"


def test_the_prompt_asks_for_up_to_the_number_for_the_videos_length():
    prompt = clue_prompt("v3", _captions(3), 5, 600)
    assert "Pick up to 5 of the most salient events of the video" in prompt and "one video" in prompt
    part = clue_prompt("v3", _captions(3), 2, 600, part=True)
    assert "one part (00:00 to 00:42) of a longer video" in part and "Pick up to 2" in part
    assert "Said" not in part
