"""No byte from outside the egress policy, whoever fetches it: yt-dlp hands live HLS, SAMPLE-AES
HLS and live DASH to an ffmpeg subprocess. Each test serves the playlist or manifest from the
"public" loopback server (127.0.0.1, allowed) and points its segments (and keys) at a canary server
on 127.0.0.2 (forbidden). The canary must see no request; the row is `forbidden_address`; and no
process the download started is left."""
from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.base import ErrorRow
from stages.download import DownloadStage
from vico_pipeline.config import load_config

PUBLIC_ONLY = "download.allowed_networks=['127.0.0.1/32']"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def _serve(host: str, routes: dict, hits: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            kind, body = route() if callable(route) else route
            data = body.encode() if isinstance(body, str) else body
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = _Server((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers(media):
    canary_hits: list[str] = []
    segment = open(media["short"], "rb").read()  # anything: no byte of it may arrive
    canary = _serve("127.0.0.2", {f"/seg{i}.ts": ("video/mp2t", segment) for i in range(4)}
                    | {"/key": ("application/octet-stream", b"k" * 16), "/init.mp4": ("video/mp4", segment)}
                    | {f"/seg{i}.m4s": ("video/mp4", segment) for i in range(1, 5)}, canary_hits)
    base = f"http://127.0.0.2:{canary.server_address[1]}"
    segments = "".join(f"#EXTINF:2.0,\n{base}/seg{i}.ts\n" for i in range(4))
    head = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
    mpd = f"""<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="{{kind}}" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     availabilityStartTime="2020-01-01T00:00:00Z" minimumUpdatePeriod="PT2S" minBufferTime="PT2S"
     mediaPresentationDuration="PT8S">
 <Period id="0" start="PT0S">
  <AdaptationSet mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">
   <Representation id="v" bandwidth="100000" codecs="avc1.42c00d" width="64" height="64">
    <SegmentTemplate media="{base}/seg$Number$.m4s" initialization="{base}/init.mp4" startNumber="1"
                     duration="2" timescale="1"/>
   </Representation>
  </AdaptationSet>
 </Period>
</MPD>"""
    public_hits: list[str] = []
    public = _serve("127.0.0.1", {
        "/live.m3u8": ("application/vnd.apple.mpegurl", head + segments),  # no #EXT-X-ENDLIST: live
        "/sample-aes.m3u8": ("application/vnd.apple.mpegurl", head + '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="'
                             f'{base}/key",KEYFORMAT="identity"\n' + segments + "#EXT-X-ENDLIST\n"),
        "/live.mpd": ("application/dash+xml", mpd.replace("{kind}", "dynamic")),
        "/static.mpd": ("application/dash+xml", mpd.replace("{kind}", "static")),
    }, public_hits)
    yield {"public": f"http://127.0.0.1:{public.server_address[1]}", "canary_hits": canary_hits,
           "public_hits": public_hits}
    for server in (canary, public):
        server.shutdown()
        server.server_close()


def _children() -> set[int]:
    """PIDs whose parent is this process, or whose process group a child of ours leads."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == os.getpid() and stat[0] != "Z":
                out.add(int(entry))
    return out


def _download(tmp_path, url: str, *overrides: str):
    config = load_config("configs/demo.yaml", ["download.backoff_s=0.01", "download.retries=0", PUBLIC_ONLY,
                                               "download.deadline_s=60", *overrides])
    stage = DownloadStage(config, media_root=str(tmp_path / "media"))
    before = _children()
    rows = list(stage.safe_process({"url": url, "line": 1}, "x", url))
    return rows, _children() - before


@pytest.mark.parametrize("path", ["/live.m3u8", "/sample-aes.m3u8", "/live.mpd"])
def test_what_ffmpeg_fetches_is_under_the_policy(tmp_path, servers, path):
    rows, left = _download(tmp_path, servers["public"] + path, "download.allow_live=true")
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["forbidden_address"], rows
    assert "127.0.0.2" in rows[0].message
    assert servers["canary_hits"] == []  # not one request reached the forbidden address
    assert left == set()  # ffmpeg (and anything else the download started) is gone
    assert not (tmp_path / "media").exists()


def test_a_static_dash_manifest_with_forbidden_segments(tmp_path, servers):
    """Static DASH is fetched by yt-dlp itself, segment by segment: the socket guard refuses them."""
    rows, left = _download(tmp_path, servers["public"] + "/static.mpd")
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["forbidden_address"], rows
    assert servers["canary_hits"] == [] and left == set()


@pytest.mark.parametrize("path", ["/live.m3u8", "/live.mpd"])
def test_live_streams_are_refused_unless_allowed(tmp_path, servers, path):
    rows, left = _download(tmp_path, servers["public"] + path)
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["live_not_allowed"], rows
    assert servers["canary_hits"] == [] and left == set()


@pytest.fixture
def live_public(media):
    """A live stream on the allowed server: real segments (the test video's HLS), a playlist that
    never ends (no #EXT-X-ENDLIST, ever)."""
    hls = media["hls_dir"]
    playlist = open(os.path.join(hls, "index.m3u8")).read().replace("#EXT-X-ENDLIST", "")
    playlist = playlist.replace("#EXT-X-PLAYLIST-TYPE:VOD\n", "")
    routes = {"/live.m3u8": ("application/vnd.apple.mpegurl", playlist)}
    for name in os.listdir(hls):
        if name.endswith(".ts"):
            routes[f"/{name}"] = ("video/mp2t", open(os.path.join(hls, name), "rb").read())
    hits: list[str] = []
    server = _serve("127.0.0.1", routes, hits)
    yield f"http://127.0.0.1:{server.server_address[1]}/live.m3u8"
    server.shutdown()
    server.server_close()


def test_an_allowed_live_stream_is_recorded_for_at_most_max_duration_s(tmp_path, live_public):
    rows, left = _download(tmp_path, live_public, "download.allow_live=true", "download.max_duration_s=6")
    [row] = rows
    assert not isinstance(row, ErrorRow), row
    assert 0 < row["duration_s"] <= 6 + 4.5, row  # ffmpeg stops at 6 s, at the next segment boundary (4 s)
    assert left == set()


def test_a_live_stream_that_never_ends_is_cut_at_the_deadline_with_its_ffmpeg(tmp_path, live_public):
    rows, left = _download(tmp_path, live_public, "download.allow_live=true", "download.deadline_s=4",
                           "download.max_duration_s=3600")
    assert [r.error_type for r in rows if isinstance(r, ErrorRow)] == ["timeout"], rows
    assert left == set()  # ffmpeg was polling the playlist; its process group was killed with the deadline


_WORKER = """
import sys
sys.path.insert(0, {repo!r})
from stages.download import DownloadStage
from vico_pipeline.config import load_config
config = load_config("configs/demo.yaml", ["download.allowed_networks=['127.0.0.1/32']", "download.allow_live=true",
                                           "download.max_duration_s=3600", "download.retries=0"])
stage = DownloadStage(config, media_root={media!r})
list(stage.safe_process({{"url": {url!r}, "line": 1}}, "x", {url!r}))
"""


def test_ffmpeg_dies_with_a_killed_worker(tmp_path, live_public):
    """A worker killed with SIGKILL cannot clean up: its ffmpeg dies with it all the same."""
    import signal
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = subprocess.Popen([sys.executable, "-c", _WORKER.format(repo=repo, media=str(tmp_path / "m"),
                                                                     url=live_public)])
    ffmpeg = []
    for _ in range(600):  # wait (up to a minute) for the worker's ffmpeg to start
        ffmpeg = [pid for pid in _children_of(worker.pid) if "ffmpeg" in _cmdline(pid)]
        if ffmpeg or worker.poll() is not None:
            break
        time.sleep(0.1)
    assert ffmpeg, "the worker never started ffmpeg"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    for _ in range(100):
        if not any(_alive(pid) for pid in ffmpeg):
            break
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in ffmpeg), ffmpeg


def _children_of(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
