"""Clue and summary prompts fit the context: an OpenAI-compatible server with vLLM's limit.

The server (stdlib http.server on 127.0.0.1) answers HTTP 400 "This model's maximum
context length is N tokens..." when the prompt plus max_tokens passes N, as vLLM does,
and otherwise valid summary or clue JSON. It counts tokens more harshly than common
byte-level BPE tokenizers do on English captions: one token per digit, per punctuation
mark and per started run of 6 letters. Every request is recorded.
"""
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.clues import CluesStage, clue_target
from stages.context import Budget, TooLong
from stages.summaries import SummariesStage
from tests.procs import send_json
from vico_pipeline.config import Config
from vico_pipeline.engines import Request
from vico_pipeline.engines.base import estimate_tokens

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "brown", "pink"]
ANIMALS = ["fox", "horse", "rabbit", "goose", "badger", "otter"]
ACTIONS = ["jumps over a fence", "drinks from a pond", "sleeps under a tree", "digs a hole",
           "chases a ball"]


def hour_of_captions(n: int = 257) -> list[dict]:
    """A 60-minute video's caption rows (257 clips of 14 s), each with a distinct key event."""
    combos = [(c, a, x) for x in ACTIONS for a in ANIMALS for c in COLOURS]
    rows = []
    for i in range(n):
        colour, animal, action = combos[i]
        key = f"a {colour} {animal} {action}"
        rows.append({"clip_id": f"hour-{i:05d}", "video_id": "hour", "start_s": 14.0 * i,
                     "end_s": min(14.0 * (i + 1), 3600.0), "caption": f"In this clip {key}, seen from a distance "
                     "on a windy day while leaves blow across the grass.", "key_event": key})
    return rows


def server_tokens(text: str) -> int:
    return sum(1 if not piece.isalpha() else math.ceil(len(piece) / 6)
               for piece in re.findall(r"\d|[^\W\d_]+|[^\w\s]", text))


_LINE = re.compile(r"^\s*\[(?P<clip>[\w-]+)\] \d\d:\d\d-\d\d:\d\d: (?P<text>.*)$", re.M)


def answer_for(prompt: str) -> str:
    """Valid JSON for the prompt: a summary, or up to the asked number of events from its lines."""
    if '"summary"' in prompt:
        return json.dumps({"summary": "Animals of many colours move about a windy meadow, one scene after "
                                      "another, seen from a distance."})
    wanted = int(re.search(r"Pick up to (\d+)", prompt).group(1))
    lines = [(m["clip"], m["text"].split(",")[0]) for m in _LINE.finditer(prompt)]
    step = max(1, len(lines) // wanted)
    return json.dumps({"events": [{"clip_id": clip, "clue": text.rstrip(".")} for clip, text in lines[::step][:wanted]]})


class ContextServer:
    def __init__(self, limit: int):
        self.limit, self.requests, self.refused = limit, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = "".join(m["content"] for m in body["messages"])
                used = sum(server_tokens(m["content"]) + 4 for m in body["messages"])
                outer.requests.append({"prompt_tokens": used, "max_tokens": body["max_tokens"],
                                       "estimate": estimate_tokens(Request(prompt=prompt))})
                if used + body["max_tokens"] > outer.limit:
                    outer.refused += 1
                    message = (f"This model's maximum context length is {outer.limit} tokens. However, you requested "
                               f"{used + body['max_tokens']} tokens ({used} in the messages, {body['max_tokens']} "
                               "in the completion). Please reduce the length of the messages or completion.")
                    return self.send(400, {"object": "error", "message": message, "type": "BadRequestError",
                                           "param": None, "code": 400})
                self.send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": answer_for(prompt)}}],
                                "usage": {"prompt_tokens": used, "completion_tokens": 40, "total_tokens": used + 40}})

            def send(self, status, payload):
                send_json(self, status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def server():
    running = ContextServer(limit=2048)
    yield running
    running.server.shutdown()
    running.server.server_close()


def _config(base_url: str, context_tokens: int) -> Config:
    return Config.model_validate({"clues": {
        "engine": "openai", "model": "small-context", "base_url": base_url, "max_tokens": 256,
        "context_tokens": context_tokens, "retries": 0, "concurrency": 4}})


def _run(config: Config, captions: list[dict]):
    summaries = SummariesStage(config)
    summaries.setup()
    summary_rows = list(summaries.process({"video_id": "hour", "source": "s", "caption": captions}))
    clues = CluesStage(config)
    clues.setup()
    item = {"video_id": "hour", "source": "s", "caption": captions,
            "summaries": [r for r in summary_rows if not isinstance(r, ErrorRow)]}
    return summary_rows, list(clues.process(item)), clues


def test_an_hour_of_captions_gets_its_clues_and_no_request_passes_the_limit(server):
    captions = hour_of_captions()
    config = _config(server.base_url, 2048)
    whole = sum(server_tokens(c["caption"]) for c in captions)
    assert whole > 3 * 2048  # one prompt with every caption would be refused
    summary_rows, clue_rows, stage = _run(config, captions)

    assert server.refused == 0 and server.requests
    assert max(r["prompt_tokens"] + r["max_tokens"] for r in server.requests) <= 2048
    assert all(r["estimate"] >= r["prompt_tokens"] for r in server.requests)  # the estimate is on the safe side
    levels = [r["level"] for r in summary_rows if not isinstance(r, ErrorRow)]
    assert levels.count("segment") == 26 and levels.count("video") == 1  # 257 clips, 10 a segment
    kept = [r for r in clue_rows if not isinstance(r, ErrorRow)]
    assert len(kept) == clue_target(captions, config.clues) == 24  # 60 minutes at one per 120 s, max 24
    assert [r["start_s"] for r in kept] == sorted(r["start_s"] for r in kept)
    assert kept[-1]["start_s"] - kept[0]["start_s"] > 1800  # spread over the hour, not its first part
    rounds = {c["round"] for c in stage.candidates}
    assert rounds == {"segment", "narrow", "final"}  # candidates per part, thinned to fit, then the final pick
    assert {c["clip_id"] for c in stage.candidates if c["kept"]} == {r["clip_id"] for r in kept}


def test_a_server_context_smaller_than_configured_is_a_clear_error_row(server):
    """The estimate (or clues.context_tokens) is wrong: the 400 becomes an error row that says what to do."""
    config = _config(server.base_url, 8192)
    config.summaries.segment_clips = 200  # one segment: its prompt is refused too
    summary_rows, clue_rows, _ = _run(config, hour_of_captions(120))
    assert server.refused > 0
    assert len(clue_rows) == 1 and isinstance(clue_rows[0], ErrorRow)
    row = clue_rows[0]
    assert row.error_type == "context_exceeded"
    assert "clues.context_tokens" in row.message and "maximum context length is 2048" in row.message
    assert [(r.error_type, "clues.context_tokens" in r.message) for r in summary_rows] == [("context_exceeded", True)]


def test_a_caption_that_cannot_fit_alone_is_an_error_row_never_cut(server):
    captions = hour_of_captions(60)
    captions[30]["caption"] = " ".join(["The crowd sings along with the band on the stage."] * 300)
    config = _config(server.base_url, 2048)
    config.clues.max_caption_chars = 100_000  # no stated cap either
    summary_rows, clue_rows, _ = _run(config, captions)
    assert server.refused == 0
    errors = [r for r in clue_rows if isinstance(r, ErrorRow)]
    assert [e.error_type for e in errors] == ["context_too_small"] and len(clue_rows) == 1
    assert "hour-00030" in errors[0].message and "nothing is cut" in errors[0].message
    summary_errors = [r for r in summary_rows if isinstance(r, ErrorRow)]
    assert [e.error_type for e in summary_errors] == ["summary_too_long"]
    assert "segment 07:00-09:20" in summary_errors[0].message  # the segment holding clip 30, by its times


def test_the_number_of_clues_scales_with_length_between_min_and_max():
    cfg = Config().clues  # one per 120 s, between 3 and 24
    assert [clue_target(hour_of_captions(n), cfg) for n in (4, 30, 60, 257)] == [3, 4, 7, 24]
    assert clue_target(hour_of_captions(2), cfg) == 2  # never more than the clips


def test_pack_keeps_order_and_raises_on_a_piece_that_cannot_fit():
    from vico_pipeline.engines.template import TemplateEngine

    config = Config.model_validate({"clues": {"context_tokens": 300, "max_tokens": 100}})
    budget = Budget(TemplateEngine(config.clues), config.clues)
    words = [f"word{i} " * 10 for i in range(12)]
    runs = budget.pack(words, lambda run: Request(prompt="".join(run)), str)
    assert [w for run in runs for w in run] == words and len(runs) > 1
    assert all(budget.fits(Request(prompt="".join(run))) for run in runs)
    with pytest.raises(TooLong, match="nothing is cut"):
        budget.pack(["x " * 1000], lambda run: Request(prompt="".join(run)), lambda w: "the long one")
