"""The egress policy of downloads, against loopback servers that misbehave on purpose.

Two servers: a "public" one on 127.0.0.1 (the tests allow 127.0.0.1/32 only) and an
"internal" one on 127.0.0.2, which stands for everything a crawler must not reach.
The public one redirects, drips, omits Content-Length and lists feeds of internal URLs.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.download import DownloadStage
from stages.ffmpeg import probe
from tests.media import ffmpeg
from vico_pipeline.config import load_config

PUBLIC_ONLY = "download.allowed_networks=['127.0.0.1/32']"
FORGED_TITLE = "Duration: 00:00:01.00, Stream #0:9: Video: h264, 640x480"


class _Handler(SimpleHTTPRequestHandler):
    internal_port = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/redirect/"):  # 302 to the same path on the internal server
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{self.internal_port}/{self.path[len('/redirect/'):]}")
            self.end_headers()
            return
        if self.path.startswith("/drip/"):  # the whole length promised, then one byte every 0.2 s
            data = open(os.path.join(self.directory, self.path[len("/drip/"):]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if self.path.startswith("/nolength/"):  # no Content-Length: the body ends when the connection does
            data = open(os.path.join(self.directory, self.path[len("/nolength/"):]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            try:
                for start in range(0, len(data), 4096):
                    self.wfile.write(data[start:start + 4096])
            except OSError:
                pass
            self.close_connection = True
            return
        if self.path.startswith("/feed/"):  # /feed/HOST/N: an RSS feed of N video entries on HOST
            _, _, host, count = self.path.split("/")
            items = "".join(f"<item><title>v{i}</title><link>http://{host}/good.mp4?i={i}</link>"
                            f'<enclosure url="http://{host}/good.mp4?i={i}" type="video/mp4"/></item>'
                            for i in range(int(count)))
            body = (f'<?xml version="1.0"?><rss version="2.0"><channel><title>feed</title>'
                    f"<link>http://{host}/</link>{items}</channel></rss>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture(scope="module")
def servers(media, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("egress"))
    shutil.copy(media["good"], os.path.join(directory, "good.mp4"))
    shutil.copy(media["short"], os.path.join(directory, "short.mp4"))
    # 60 s of 64x64 whose container title reads like ffmpeg's own log line for a 1 s 640x480 video.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x64:r=5:d=60", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", "-metadata", f"title={FORGED_TITLE}", os.path.join(directory, "forged.mp4"))
    started = []
    for host in ("127.0.0.2", "127.0.0.1"):
        srv = _Server((host, 0), lambda *a, **k: _Handler(*a, directory=directory, **k))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
    internal, public = started
    _Handler.internal_port = internal.server_address[1]
    yield {"public": f"http://127.0.0.1:{public.server_address[1]}",
           "internal": f"http://127.0.0.2:{internal.server_address[1]}",
           "internal_host": f"127.0.0.2:{internal.server_address[1]}", "dir": directory}
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _rows(tmp_path, url, *overrides):
    config = load_config("configs/demo.yaml", ["download.backoff_s=0.01", "download.retries=0", *overrides])
    stage = DownloadStage(config, media_root=str(tmp_path / "media"))
    return list(stage.safe_process({"url": url, "line": 1}, "x", url))


def test_internal_addresses_are_refused_by_default(tmp_path, servers):
    for url in (f"{servers['public']}/good.mp4", "http://169.254.169.254/latest/meta-data/iam/x.mp4",
                "http://[::1]:9/x.mp4", "http://10.0.0.1/x.mp4", "http://0.0.0.0:9/x.mp4"):
        [row] = _rows(tmp_path, url)
        assert isinstance(row, ErrorRow) and row.error_type == "forbidden_address", (url, row)
    assert not (tmp_path / "media").exists()


def test_an_allowed_network_is_fetched_and_others_still_refused(tmp_path, servers):
    [row] = _rows(tmp_path, f"{servers['public']}/good.mp4", PUBLIC_ONLY)
    assert not isinstance(row, ErrorRow), row
    [row] = _rows(tmp_path, f"{servers['internal']}/good.mp4", PUBLIC_ONLY)
    assert isinstance(row, ErrorRow) and row.error_type == "forbidden_address", row


def test_a_redirect_to_an_internal_address_is_refused(tmp_path, servers):
    [row] = _rows(tmp_path, f"{servers['public']}/redirect/good.mp4", PUBLIC_ONLY)
    assert isinstance(row, ErrorRow) and row.error_type == "forbidden_address", row
    assert "127.0.0.2" in row.message
    assert not (tmp_path / "media").exists()


def test_feed_entries_on_an_internal_host_are_refused_and_the_feed_is_capped(tmp_path, servers):
    rows = _rows(tmp_path, f"{servers['public']}/feed/{servers['internal_host']}/30", PUBLIC_ONLY,
                 "download.max_playlist_entries=4")
    kinds = [r.error_type for r in rows if isinstance(r, ErrorRow)]
    assert kinds.count("too_many_entries") == 1, rows
    assert kinds.count("forbidden_address") == 4, rows  # each entry checked, only the first 4 tried
    assert not any(isinstance(r, dict) for r in rows)


def test_a_feed_on_an_allowed_host_is_capped(tmp_path, servers):
    host = servers["public"].split("//")[1]
    rows = _rows(tmp_path, f"{servers['public']}/feed/{host}/30", PUBLIC_ONLY, "download.max_playlist_entries=2")
    videos = [r for r in rows if isinstance(r, dict)]
    assert len(videos) == 2 and [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["too_many_entries"]


def test_max_bytes_counts_bytes_received_without_content_length(tmp_path, servers):
    size = os.path.getsize(os.path.join(servers["dir"], "good.mp4"))
    [row] = _rows(tmp_path, f"{servers['public']}/nolength/good.mp4", PUBLIC_ONLY, f"download.max_bytes={size // 4}")
    assert isinstance(row, ErrorRow) and row.error_type == "too_large", row
    # The same file without a cap arrives whole.
    [row] = _rows(tmp_path, f"{servers['public']}/nolength/good.mp4", PUBLIC_ONLY)
    assert not isinstance(row, ErrorRow) and row["bytes"] == size, row


def test_a_dripping_server_is_cut_at_the_deadline(tmp_path, servers):
    [row] = _rows(tmp_path, f"{servers['public']}/drip/short.mp4", PUBLIC_ONLY,
                  "download.deadline_s=2", "download.timeout_s=30", "download.retries=2")
    assert isinstance(row, ErrorRow) and row.error_type == "timeout", row
    assert "deadline_s" in row.message
    # At this pace the file takes minutes, and each byte comes well within timeout_s: only a total
    # deadline ends it (before, the download went on to the end and succeeded).
    assert os.path.getsize(os.path.join(servers["dir"], "short.mp4")) * 0.2 > 60


def test_object_store_sources_only_from_allowed_buckets(tmp_path):
    [row] = _rows(tmp_path, "s3://someone-elses-bucket/private/video.mp4", "download.allowed_buckets=[ours]")
    assert isinstance(row, ErrorRow) and row.error_type == "forbidden_bucket", row


def test_forged_container_metadata_does_not_fool_the_probe(tmp_path, servers):
    meta = probe(os.path.join(servers["dir"], "forged.mp4"))
    assert (meta.duration_s, meta.width, meta.height) == (60.0, 64, 64)
    # Served over HTTP: the 60 s video is refused by max_duration_s, not read as 1 s.
    [row] = _rows(tmp_path, f"{servers['public']}/forged.mp4", PUBLIC_ONLY, "download.max_duration_s=30")
    assert isinstance(row, ErrorRow) and row.error_type == "too_long", row


def test_the_probe_has_a_deadline(servers):
    from stages.ffmpeg import MediaError

    with pytest.raises(MediaError) as caught:
        probe(os.path.join(servers["dir"], "good.mp4"), deadline_s=1e-6)  # any real open takes longer
    assert caught.value.error_type == "timeout"


def test_a_container_that_overstates_its_duration_is_measured(tmp_path):
    """A 30 s MKV whose Segment Duration says 3,000 s: the videos row holds the measured 30 s, and
    the declared 3,000 s beside it; an honest file keeps its container's duration."""
    from tests.media import forge_mkv_duration, testsrc

    honest = testsrc(str(tmp_path / "honest.mkv"), 30, size="64x64", rate=5)
    forged = forge_mkv_duration(honest, str(tmp_path / "forged.mkv"), 100)
    meta = probe(forged)
    assert (meta.duration_s, meta.declared_duration_s) == (30.0, 3000.0)
    [row] = _rows(tmp_path, forged, "sources.allow_local=true")
    assert not isinstance(row, ErrorRow), row
    assert (row["duration_s"], row["declared_duration_s"]) == (30.0, 3000.0)
    [row] = _rows(tmp_path, honest, "sources.allow_local=true")
    assert (row["duration_s"], row["declared_duration_s"]) == (30.0, 30.0)
