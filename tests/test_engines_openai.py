"""The openai engine against real servers on 127.0.0.1:

- `transformers serve` started here, serving a tiny random LLaVA built here: a real
  OpenAI-compatible server whose model writes garbage, which the caption parser and
  the clue validator must catch (nothing invalid reaches the questions);
- a scripted HTTP server that answers 429, then 500, then times out, then succeeds.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.caption import CaptionStage
from stages.clues import CluesStage
from stages.questions import QuestionsStage
from vico_pipeline.config import Config
from tests.procs import send_json, transformers_serve
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.tiny import build_tiny_vlm, jpeg, synthetic_clips


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """`transformers serve` on a tiny model; yields its base URL and model name; ended by PID."""
    root = tmp_path_factory.mktemp("serve")
    model = build_tiny_vlm(str(root / "tiny-llava"))
    for base_url in transformers_serve(root, model):
        yield base_url, model


def _config(base_url, model) -> Config:
    config = Config()
    for section in (config.caption, config.clues):
        section.engine, section.base_url, section.model = "openai", base_url, model
        section.concurrency, section.retries, section.backoff_s, section.timeout_s = 2, 1, 0.05, 60
    config.caption.max_tokens = 12
    config.clues.max_tokens = 24
    return config


def test_captions_from_a_real_server_with_tokens(serve):
    base_url, model = serve
    config = _config(base_url, model)
    engine = build_engine(config.caption, "caption")
    results = engine([Request("describe the clip", images=[jpeg((200, 40, 40))] * 2) for _ in range(3)])
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(0 < r.completion_tokens <= 12 and r.prompt_tokens > 0 and r.latency_s > 0 for r in results)
    # The server's finish reason is passed on: the random model runs to the token limit.
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert any(r.finish_reason == "length" for r in results if r.completion_tokens == 12)


def test_garbage_from_a_real_model_never_reaches_the_questions(serve):
    base_url, model = serve
    config = _config(base_url, model)
    clips = synthetic_clips("vid", [(200, 40, 40), (40, 70, 200), (40, 160, 60), (230, 120, 30)])
    item = {"video_id": "vid", "source": "demo", "video": {"duration_s": 56.0}, "frames": clips,
            "filter": [{"clip_id": c["clip_id"], "kept": True, "reason": ""} for c in clips]}
    captioner = CaptionStage(config)
    captioner.setup()
    out = list(captioner.process(item))
    # Every clip is accounted for, and the random model's answers are never captions: each is
    # an error row naming the gate that stopped it (cut at 12 tokens, or not the JSON asked for).
    assert len(out) == len(clips) and all(isinstance(row, ErrorRow) for row in out)
    assert {row.error_type for row in out} <= {"caption_truncated", "caption_unparsed", "caption_repetitive"}

    # The clue stage gets honest captions; the tiny model's clue answer is garbage.
    describe = Config()
    describer = CaptionStage(describe)
    describer.setup()
    captions = list(describer.process(item))
    assert len(captions) == 4 and not any(isinstance(r, ErrorRow) for r in captions)
    clue_stage = CluesStage(config)
    clue_stage.setup()
    clues = list(clue_stage.process({"video_id": "vid", "source": "demo", "video": {}, "caption": captions}))
    assert len(clues) == 1 and isinstance(clues[0], ErrorRow)
    error = clues[0]
    assert error.error_type == "too_few_clues"
    assert "after 2 attempt(s)" in error.message  # validation_retries = 1: asked twice
    assert "not JSON" in error.message or "unknown clip id" in error.message or "not text" in error.message
    # What reaches the questions stage is the clue stage's (empty) rows: no question.
    questions = list(QuestionsStage(config).process({"video_id": "vid", "source": "demo",
                                                     "video": {"duration_s": 56.0}, "clues": []}))
    assert all(isinstance(r, ErrorRow) for r in questions)


# --------------------------------------------------------------------------- faults
class _Script:
    def __init__(self, steps):
        self.steps, self.seen, self.lock = list(steps), [], threading.Lock()


def _handler(script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = json.dumps(body["messages"])
            with script.lock:
                script.seen.append((self.headers.get("Authorization"), prompt))
                step = script.steps.pop(0) if script.steps else "ok"
            if callable(step):
                step = step(prompt)
            try:
                if step == "timeout":
                    time.sleep(2.0)
                    return
                if step == "ok":
                    content = json.dumps({"caption": "a red clip where a box moves across", "key_event": "a box moves"})
                    self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": content}}],
                                     "usage": {"prompt_tokens": 17, "completion_tokens": 9, "total_tokens": 26}})
                    return
                status = int(step)
                self._send(status, {"error": {"message": f"status {status} for key {self.headers.get('Authorization')}",
                                              "type": "test"}})
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, status, payload):
            send_json(self, status, payload)
    return Handler


@pytest.fixture()
def scripted():
    servers = []

    def start(steps):
        script = _Script(steps)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _engine(base_url, **fields):
    config = Config()
    section = config.caption
    section.engine, section.base_url, section.model = "openai", base_url, "m"
    section.retries, section.backoff_s, section.timeout_s, section.concurrency = 3, 0.01, 0.5, 2
    for key, value in fields.items():
        setattr(section, key, value)
    return config, build_engine(section, "caption")


def test_429_then_500_then_a_timeout_then_success(scripted):
    base_url, script = scripted(["429", "500", "timeout", "ok"])
    _, engine = _engine(base_url)
    waits = []
    engine.sleep = waits.append  # the backoff delays, recorded instead of slept
    result = engine([Request("describe", images=[jpeg((1, 2, 3))])])[0]
    assert result.ok and result.completion_tokens == 9 and result.prompt_tokens == 17
    assert len(script.seen) == 4 and engine.retried == 3
    assert waits[0] < waits[2] and all(w > 0 for w in waits)  # exponential backoff


def test_a_request_that_keeps_failing_becomes_an_error_row_and_the_rest_go_on(scripted):
    # Requests for the second clip (00:14 to 00:28) always get a 503; the others succeed.
    base_url, script = scripted([])
    script.steps = [lambda prompt: "503" if "00:14 to 00:28" in prompt else "ok" for _ in range(20)]
    config, _ = _engine(base_url, retries=2)
    stage = CaptionStage(config)
    stage.setup()
    stage.engine.sleep = lambda s: None
    clips = synthetic_clips("vid", [(200, 40, 40)] * 3)
    rows = list(stage.process({"video_id": "vid", "source": "s", "video": {}, "frames": clips,
                               "filter": [{"clip_id": c["clip_id"], "kept": True, "reason": ""} for c in clips]}))
    errors = [r for r in rows if isinstance(r, ErrorRow)]
    captions = [r for r in rows if not isinstance(r, ErrorRow)]
    assert [c["clip_id"] for c in captions] == ["vid-00000", "vid-00002"]
    assert captions[0]["answer_format"] == "json" and captions[0]["key_event"] == "a box moves"
    assert len(errors) == 1 and errors[0].item_id == "vid-00001" and errors[0].error_type == "caption_http_503"
    assert sum("00:14 to 00:28" in p for _, p in script.seen) == 3  # 1 try + 2 retries


def test_client_errors_are_not_retried_and_the_key_is_never_shown(scripted, monkeypatch):
    monkeypatch.setenv("VICO_TEST_API_KEY", "sk-very-secret-key")
    base_url, script = scripted(["401"])
    _, engine = _engine(base_url, api_key_env="VICO_TEST_API_KEY")
    result = engine([Request("hi")])[0]
    assert script.seen[0][0] == "Bearer sk-very-secret-key"  # the key was sent...
    assert result.error_type == "http_401" and len(script.seen) == 1
    assert "sk-very-secret-key" not in result.error and "***" in result.error  # ...and never shown
