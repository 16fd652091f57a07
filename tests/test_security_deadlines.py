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
