"""Shared fixtures: test media, a loopback HTTP server, a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

# Every local Ray in the tests binds to loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Downloads refuse internal addresses by default (the egress policy); tests opt in to loopback.
LOOPBACK = "download.allowed_networks=['127.0.0.0/8', '::1/128']"


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    from tests.media import make_hls, make_media

    directory = str(tmp_path_factory.mktemp("media"))
    out = make_media(directory)
    out["hls_dir"] = os.path.dirname(make_hls(out["good"], os.path.join(directory, "hls")))
    return out


class _Handler(SimpleHTTPRequestHandler):
    """Static files, plus the misbehaving routes the ingest tests need."""

    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):  # promises the whole file, sends half, hangs up
            path = os.path.join(self.directory, self.path[len("/cut/"):])
            data = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        if self.path.startswith("/flaky/"):  # /flaky/N/name: 503 for the first N requests, then the file
            _, _, count, name = self.path.split("/", 3)
            seen = _Handler.hits.get(self.path, 0)
            _Handler.hits[self.path] = seen + 1
            if seen < int(count):
                self.send_error(503)
                return
            self.path = "/" + name
        if self.path.startswith("/until/"):  # /until/FLAG/name: 503 until a file FLAG exists in tmp
            _, _, flag, name = self.path.split("/", 3)
            if not os.path.exists(os.path.join(tempfile.gettempdir(), flag)):
                self.send_error(503)
                return
            self.path = "/" + name
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.rsplit("/", 1)[-1]))
            return
        if self.path == "/page.html":
            self._html("<html><head><title>Not a video</title></head><body><p>Nothing here.</p></body></html>")
            return
        if self.path == "/playlist.html":
            self._html("<html><head><title>Two videos</title></head><body>"
                       '<video src="/good.mp4"></video><video src="/h264.mkv"></video></body></html>')
            return
        super().do_GET()

    def _html(self, text: str):
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up early (size limits, retries) are part of the tests


@pytest.fixture(scope="session")
def http_server(media):
    """A server on 127.0.0.1 serving the media folder; yields its base URL."""
    directory = os.path.dirname(media["good"])
    server = _QuietServer(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, directory=directory, **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_vico(*args: str, cwd: str | None = None, timeout: float = 600, env: dict | None = None):
    """Run the real `vico` CLI in a subprocess; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "vico_pipeline.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def vico():
    return run_vico
