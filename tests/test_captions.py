"""The caption stage: kept clips only, prompt versions, JSON or plain answers, error rows."""
import pytest

from stages.base import ErrorRow
from stages.caption import CAPTIONS_SCHEMA, CaptionStage, caption_prompt, parse_caption
from vico_pipeline.text import clock
from stages.base import rows_to_table
from vico_pipeline.config import Config
from vico_pipeline.engines.tiny import synthetic_clips


def _item(clips, kept):
    return {"video_id": "v", "source": "src", "video": {}, "frames": clips,
            "filter": [{"clip_id": c["clip_id"], "kept": c["clip_index"] in kept,
                        "reason": "" if c["clip_index"] in kept else "black"} for c in clips]}


def test_describe_captions_for_kept_clips_only_in_time_order():
    clips = synthetic_clips("v", [(200, 40, 40), (5, 5, 5), (40, 70, 200), (40, 160, 60)])
    stage = CaptionStage(Config())
    stage.setup()
    rows = list(stage.process(_item(list(reversed(clips)), kept={0, 2, 3})))
    assert [r["clip_id"] for r in rows] == ["v-00000", "v-00002", "v-00003"]
    assert all(r["engine"] == "describe" and r["model"] == "describe-v1" and r["prompt_version"] == "v2"
               for r in rows)
    # describe measured every frame: its key event's span is the shots of the clip (one colour a shot)
    assert all(r["key_event_frames"] == [1, 2, 3, 4] for r in rows)
    assert all((r["event_start_s"], r["event_end_s"]) == (r["start_s"], r["end_s"]) for r in rows)
    assert "red" in rows[0]["key_event"] and "blue" in rows[1]["key_event"] and "green" in rows[2]["key_event"]
    assert all(r["caption"].startswith("describe engine: measured") for r in rows)
    assert rows[1]["start_s"] == 28.0 and rows[1]["end_s"] == 42.0
    assert rows_to_table(rows, CAPTIONS_SCHEMA).num_rows == 3


def test_batches_are_prepared_ahead_and_every_clip_is_answered():
    config = Config()
    config.caption.batch_size = 2
    stage = CaptionStage(config)
    stage.setup()
    clips = synthetic_clips("v", [(200, 40, 40), (40, 70, 200)] * 3)
    rows = list(stage.process(_item(clips, kept=set(range(6)))))
    assert [r["clip_index"] for r in rows] == list(range(6))


def test_a_video_with_no_kept_clip_gets_an_error_row_that_says_why():
    clips = synthetic_clips("v", [(5, 5, 5)] * 3)
    stage = CaptionStage(Config())
    stage.setup()
    rows = list(stage.process(_item(clips, kept=set())))
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow)
    assert rows[0].error_type == "no_clips_kept" and "3 black" in rows[0].message


@pytest.mark.parametrize("answer, caption, key", [
    ('{"caption": "A man  walks in.", "key_event": "he sits"}', "A man walks in.", "he sits"),
    ('Sure!\n```json\n{"caption": "A dog runs. It jumps."}\n```', "A dog runs. It jumps.", "A dog runs."),
])
def test_parse_caption_reads_the_json_a_model_wrapped(answer, caption, key):
    assert parse_caption(answer) == (caption, key)


@pytest.mark.parametrize("answer", ["A cat sleeps on a sofa. Then it wakes.", '{"caption": ""}',
                                    '{"description": "a cat sleeps"}', '{"caption": "A dog', "[" * 50000])
def test_parse_caption_gives_nothing_for_text_wrong_keys_cut_json_or_deep_brackets(answer):
    assert parse_caption(answer) is None


def test_prompt_is_versioned_and_names_the_clip_time():
    clip = {"caption_frames": [b""] * 8, "start_s": 3614.0, "end_s": 3628.0}
    prompt = caption_prompt("v1", clip)
    assert "8 frames" in prompt and "1:00:14 to 1:00:28" in prompt and '"key_event"' in prompt
    assert clock(75.4) == "01:15"
    with pytest.raises(ValueError, match="unknown caption prompt version"):
        caption_prompt("v9", clip)


# --------------------------------------------------------------------------- subtitles in the prompts
CUES = [{"video_id": "v", "start_s": 3.0, "end_s": 6.0, "text": "Welcome to the workshop.", "source": "sidecar",
         "language": "en"},
        {"video_id": "v", "start_s": 13.0, "end_s": 16.0, "text": "Now grab the saw.", "source": "sidecar",
         "language": "en"},  # spans clips 0 and 1: in both
        {"video_id": "v", "start_s": 44.0, "end_s": 46.0, "text": "Mind your fingers.", "source": "sidecar",
         "language": "en"}]


class _Prompts:
    """A caption engine that records its prompts and answers valid JSON."""
    kind, model = "scripted", "script"

    def __init__(self):
        self.prompts = []

    def prepare(self, requests):
        return requests

    def generate(self, requests):
        from vico_pipeline.engines import Result
        self.prompts += [r.prompt for r in requests]
        return [Result(text='{"caption": "A person stands at a bench in a workshop.", "key_event": "a person '
                            'stands at a bench"}', finish_reason="stop") for _ in requests]


@pytest.mark.parametrize("use", [True, False])
def test_the_cues_of_a_clip_go_into_its_caption_prompt_behind_the_switch(use):
    config = Config()
    config.caption.use_subtitles = use
    stage = CaptionStage(config)
    stage.setup()
    stage.engine = _Prompts()
    clips = synthetic_clips("v", [(200, 40, 40), (40, 70, 200), (40, 160, 60)])
    rows = list(stage.process({**_item(clips, kept={0, 1, 2}), "subtitles": CUES}))
    assert len(rows) == 3
    first, second, third = stage.engine.prompts
    if not use:
        assert "subtitles" not in first + second + third
        return
    assert '"Welcome to the workshop."\n"Now grab the saw."' in first and "Mind your" not in first
    assert '"Now grab the saw."' in second and "Welcome" not in second
    assert third == caption_prompt("v2", clips[2])  # no cue in the clip: the prompt of its version, unchanged


def test_caption_fingerprint_follows_the_subtitles_stage_only_when_it_reads_them():
    from vico_pipeline.config import load_config
    from vico_pipeline.fingerprint import stage_fingerprints
    from vico_pipeline.registry import stage_specs

    def caption_fp(*settings):
        return stage_fingerprints(load_config(None, list(settings)), stage_specs())["caption"]

    assert caption_fp("subtitles.enabled=false") != caption_fp("subtitles.enabled=true")
    off = "caption.use_subtitles=false"
    assert caption_fp(off, "subtitles.enabled=false") == caption_fp(off, "subtitles.enabled=true")
