"""Data that stand-in engines made says so in the first lines of its card and its report."""
from vico_pipeline.card import card_text, stand_in_lines
from vico_pipeline.report import _stand_in


def _manifest(caption="describe", clues="template", blind="rules", enabled=True):
    return {"dataset": "demo", "version": "v1", "tables": {}, "stages": {},
            "config": {"caption": {"engine": caption}, "clues": {"engine": clues},
                       "blind": {"engine": blind, "enabled": enabled}}}


def test_the_card_opens_with_the_stand_in_engines():
    lines = card_text(_manifest(), {}).splitlines()
    assert lines[0] == "# demo v1"
    assert lines[2].startswith("**Stand-in data: no model made the captions or the clues.**")
    assert "captions by `describe`" in lines[2] and "clues by `template`" in lines[2]
    assert "train.allow_stand_in_data" in lines[2]
    assert lines[4].startswith("The blind-answer filter was `rules`")


def test_model_made_data_has_no_warning_and_one_stand_in_is_named_alone():
    assert stand_in_lines(_manifest("openai", "vllm", "openai")["config"]) == []
    assert stand_in_lines(_manifest("openai", "vllm", "rules", enabled=False)["config"]) == []
    (line,) = stand_in_lines(_manifest("vllm", "template", "openai")["config"])
    assert "no model made the clues." in line and "describe" not in line
    lines = card_text(_manifest("openai", "openai", "openai"), {}).splitlines()
    assert "Stand-in" not in "\n".join(lines[:6]) and "VICO-style" in lines[2]


def test_the_report_header_carries_the_same_warning():
    html = _stand_in(_manifest())
    assert html.count('<p class="standin">') == 2 and "no model made the captions or the clues" in html
    assert _stand_in(_manifest("openai", "openai", "openai")) == ""


def test_the_card_counts_the_gates_rejections():
    manifest = _manifest("openai", "openai", "openai")
    manifest["stages"] = {"caption": {"error_types": {"caption_refusal": 2, "caption_http_503": 1,
                                                      "caption_truncated": 1}}}
    text = card_text(manifest, {"candidates": {"": 5, "ungrounded": 2, "gives_time": 1}})
    assert "- captions rejected: caption_refusal 2, caption_truncated 1" in text
    assert "- clue candidates: kept 5, ungrounded 2, gives_time 1" in text
