"""Downloads at scale, against a loopback HTTP server: throttling told apart from
dead links, a cookies file for sites that need a session, per-domain caps."""
from __future__ import annotations

import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.download import TRANSIENT, DownloadStage, _DomainGate, classify
from vico_pipeline.config import load_config

COOKIE = "session=letmein"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: str):
        super().__init__(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, directory=directory, **k))
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.served: list[tuple[str, float, float]] = []  # (query, start, end) of each "slow" request

    def handle_error(self, request, client_address):
        pass


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server: _Server = self.server
        route, _, name = self.path.lstrip("/").partition("/")
        with server.lock:
            server.hits[route] = server.hits.get(route, 0) + 1
        if route == "throttle":
            self.send_error(429, "Too Many Requests")
            return
        if route == "gone":
            self.send_error(404, "Not Found")
            return
        if route == "members" and COOKIE not in (self.headers.get("Cookie") or ""):
            self.send_error(403, "Forbidden")
            return
        if route == "slow":  # each request held 0.3 s, its time span recorded
            started = time.monotonic()
            try:
                time.sleep(0.3)
                self.path = "/" + name
                super().do_GET()
            finally:
                with server.lock:
                    server.served.append((name.partition("?")[2], started, time.monotonic()))
            return
        self.path = "/" + name
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.media import testsrc

    directory = tmp_path_factory.mktemp("served")
    testsrc(str(directory / "clip.mp4"), 3)
    srv = _Server(str(directory))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _stage(tmp_path, *overrides):
    from tests.conftest import LOOPBACK

    config = load_config("configs/demo.yaml", ["download.backoff_s=0.01", LOOPBACK, *overrides])
    return DownloadStage(config, media_root=str(tmp_path / "media"))


def _one(stage, url):
    rows = list(stage.safe_process({"url": url, "line": 1}, "x", url))
    assert len(rows) == 1, rows
    return rows[0]


def test_throttling_is_retried_and_dead_links_are_not(server, tmp_path):
    srv, base = server
    stage = _stage(tmp_path, "download.retries=2")
    throttled = _one(stage, f"{base}/throttle/clip.mp4")
    gone = _one(stage, f"{base}/gone/clip.mp4")
    assert isinstance(throttled, ErrorRow) and throttled.error_type == "throttled", throttled
    assert isinstance(gone, ErrorRow) and gone.error_type == "not_found", gone
    assert "429" in throttled.message and "404" in gone.message
    # A 429 is worth another try (three attempts with retries=2); a 404 is final.
    assert srv.hits["throttle"] >= 3 > srv.hits["gone"], srv.hits


@pytest.mark.parametrize("message, error_type", [
    ("ERROR: HTTP Error 429: Too Many Requests", "throttled"),
    ("ERROR: [youtube] abc123: Sign in to confirm you’re not a bot. Use --cookies-from-browser", "throttled"),
    ("ERROR: [youtube] abc123: Sign in to confirm your age. This video may be inappropriate", "forbidden"),
    ("ERROR: unable to download video data: HTTP Error 404: Not Found", "not_found"),
    ("ERROR: HTTP Error 410: Gone", "not_found"),
    ("ERROR: [youtube] abc123: Video unavailable. This video has been removed by the uploader", "not_found"),
    ("ERROR: [youtube] abc123: Private video. Sign in if you've been granted access", "forbidden"),
    ("ERROR: HTTP Error 403: Forbidden", "forbidden"),
    ("ERROR: HTTP Error 503: Service Unavailable", "server_error"),
])
def test_error_table(message, error_type):
    assert classify(message) == error_type
    # Throttling and server trouble are retried; a dead or private video is not.
    assert (error_type in TRANSIENT) == (error_type in ("throttled", "server_error"))


def test_cookies_file_opens_a_members_only_video(server, tmp_path):
    _, base = server
    url = f"{base}/members/clip.mp4"
    without = _one(_stage(tmp_path, "download.retries=0"), url)
    assert isinstance(without, ErrorRow) and without.error_type == "forbidden", without

    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n"
                       "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tletmein\n")
    row = _one(_stage(tmp_path, "download.retries=0", f"download.cookies_file={cookies}"), url)
    assert not isinstance(row, ErrorRow), row
    assert row["duration_s"] == pytest.approx(3.0, abs=0.2) and os.path.exists(row["media_path"])


def test_per_domain_cap_holds_across_threads(server, tmp_path):
    srv, base = server
    stage = _stage(tmp_path, "download.per_domain_concurrency=1", "download.retries=0")
    # The stage's gate is per process: a host of its own, so no other test's cap is in the way.
    base = base.replace("127.0.0.1", "localhost")
    results = []

    def fetch(index):
        results.append(_one(stage, f"{base}/slow/clip.mp4?copy={index}"))

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3 and not any(isinstance(r, ErrorRow) for r in results), results
    assert srv.hits["slow"] >= 3
    # Three threads, one download from the host at a time: requests of different downloads never
    # overlap by more than a moment (each is held 0.3 s; two let in at once would overlap by that
    # much; a moment is the server's handler ending after the client had its bytes and went on).
    spans = [span for span in srv.served if span[0].startswith("copy=")]
    assert {query for query, _, _ in spans} == {"copy=0", "copy=1", "copy=2"}
    overlaps = [min(a[2], b[2]) - max(a[1], b[1]) for a in spans for b in spans if a[0] < b[0]]
    assert max(overlaps) < 0.15, overlaps


def test_domain_gate_spaces_starts_and_keeps_hosts_apart():
    gate = _DomainGate()
    starts, in_flight, most = [], [0], [0]
    lock = threading.Lock()

    def worker():
        sem = gate.acquire("a.example", 2, 0.2)
        with lock:
            starts.append(time.monotonic())
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.3)
        with lock:
            in_flight[0] -= 1
        sem.release()

    threads = [threading.Thread(target=worker) for _ in range(5)]
    begun = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(starts) == 5 and most[0] <= 2
    # Five starts 0.2 s apart: the last cannot come before 0.8 s (a lower bound only: a busy
    # machine makes threads late, never early).
    assert max(starts) - begun >= 4 * 0.2 - 0.01, [s - begun for s in sorted(starts)]

    # A host at its cap does not hold up another host.
    held = gate.acquire("b.example", 1, 0.0)
    done = threading.Event()
    other = threading.Thread(target=lambda: (gate.acquire("c.example", 1, 0.0).release(), done.set()))
    other.start()
    other.join(timeout=30)
    held.release()
    assert done.is_set()
