"""Engine requests have a total deadline: a loopback chat server that drips its answer a byte at a
time (each byte well within timeout_s) is cut at deadline_s, retries and waits included."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vico_pipeline.config import Config
from vico_pipeline.engines import Request, build_engine


class _Drip(BaseHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Drip.requests += 1
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "a caption " * 200}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:  # minutes at this pace
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


@pytest.fixture
def drip_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_engine_request_is_cut_at_its_deadline(drip_server):
    config = Config.model_validate({"caption": {"engine": "openai", "model": "m", "base_url": drip_server,
                                                "timeout_s": 30, "deadline_s": 2, "retries": 3, "backoff_s": 0.01}})
    engine = build_engine(config.caption, "caption")
    try:
        [result] = engine.generate([Request(prompt="describe")])
    finally:
        engine.close()
    assert result.error_type == "timeout" and "deadline_s=2" in result.error, result
    assert _Drip.requests >= 1


# -------------------------------------------------------------- one client, one deadline (issue 18)
_CHAT = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}]}).encode()


class _SecondDrips(BaseHTTPRequestHandler):
    """Keep-alive (HTTP/1.1): the first request of a connection is answered at once, the next one's
    status line and headers come a byte every 0.2 s (about a minute)."""

    protocol_version = "HTTP/1.1"
    served = 0
    connections: set = set()

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _SecondDrips.served += 1
        _SecondDrips.connections.add(self.client_address)
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: {'p' * 300}\r\n"
                f"Content-Length: {len(_CHAT)}\r\n\r\n").encode()
        if _SecondDrips.served == 1:
            self.wfile.write(head + _CHAT)
            self.wfile.flush()
            return
        try:
            for byte in head:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(_CHAT)
        except OSError:
            pass


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_reused_connection_dripping_its_headers_is_cut_at_the_deadline():
    server = _serve(_SecondDrips)
    config = Config.model_validate({"caption": {
        "engine": "openai", "model": "m", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "timeout_s": 30, "deadline_s": 2, "retries": 0, "backoff_s": 0.01}})
    engine = build_engine(config.caption, "caption")
    try:
        [first] = engine.generate([Request(prompt="one")])
        assert first.error_type is None and first.text == "ok", first
        started = time.monotonic()
        [second] = engine.generate([Request(prompt="two")])
        elapsed = time.monotonic() - started
    finally:
        engine.close()
        server.shutdown()
        server.server_close()
    assert len(_SecondDrips.connections) == 1  # the second request did reuse the first's connection
    assert second.error_type == "timeout", second
    # The headers alone take a minute at this pace; the deadline (2 s) ends it. Generous bound: a loaded machine.
    assert elapsed < 2 + 3, elapsed


class _BodyDrips(BaseHTTPRequestHandler):
    """A transcription endpoint whose answer (headers at once) drips its body a byte every 0.2 s."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"text": "words " * 100, "language": "english", "segments": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


def test_asr_has_a_total_deadline_against_a_dripping_body(tmp_path):
    from stages.asr import AsrStage
    from stages.base import ErrorRow
    from tests.media import testsrc

    video = testsrc(str(tmp_path / "speech.mp4"), 4, audio=True)
    server = _serve(_BodyDrips)
    config = Config.model_validate({"asr": {
        "enabled": True, "model": "whisper", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "timeout_s": 30, "deadline_s": 3, "retries": 2, "chunk_s": 10.0}})
    stage = AsrStage(config)
    stage.setup()
    item = {"video_id": "v", "source": video, "video": {"video_id": "v", "media_path": video, "has_audio": True}}
    try:
        started = time.monotonic()
        rows = list(stage.safe_process(item, "v", video))
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow) and rows[0].error_type in ("timeout", "asr_timeout"), rows
    assert elapsed < 3 + 3, elapsed  # the body alone takes minutes at this pace (each byte within timeout_s)
