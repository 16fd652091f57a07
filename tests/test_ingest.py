"""Ingest end to end: a manifest of good, odd and broken sources through the real CLI,
real yt-dlp against a loopback HTTP server, real ffmpeg and a real local Ray."""
from __future__ import annotations

import io
import json
import os
import socket

import pyarrow.dataset as pads
import pytest
from PIL import Image

from stages.manifest import video_id_for


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ingest_run(media, http_server, tmp_path_factory, ):
    from tests.conftest import run_vico

    work = tmp_path_factory.mktemp("ingest")
    sources = {
        "good": media["good"], "webm": media["webm"], "mkv": "file://" + media["mkv"], "vfr": media["vfr"],
        "rotated": media["rotated"], "short": media["short"], "corrupt": media["corrupt"], "empty": media["empty"],
        "truncated": media["truncated"], "audio_only": media["audio_only"], "image": media["image"],
        "html_as_mp4": media["html_as_mp4"],
        "http_good": f"{http_server}/good.mp4",
        "http_cut": f"{http_server}/cut/good.mp4",
        "http_404": f"{http_server}/status/404",
        "http_page": f"{http_server}/page.html",
        "http_refused": f"http://127.0.0.1:{_closed_port()}/video.mp4",
        "http_playlist": f"{http_server}/playlist.html",
        "http_hls": f"{http_server}/hls/index.m3u8",
        "not_a_source": "this line is neither a URL nor a path",
    }
    manifest = work / "manifest.txt"
    manifest.write_text("# ingest test\n" + "\n".join(sources.values()) + "\n")
    proc = run_vico("run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
                    "--set", f"output.root={work / 'out'}", "--set", "dataset.name=ingest",
                    "--set", "download.retries=1", "--set", "download.backoff_s=0.1",
                    "--set", "download.timeout_s=10", "--set", "ray.num_cpus=2",
                    "--set", "download.allowed_networks=[127.0.0.0/8]")  # the test server is on loopback
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = proc.stdout.strip().splitlines()[-1]
    read = lambda t: pads.dataset(os.path.join(version, t)).to_table().to_pylist()  # noqa: E731
    return {"sources": sources, "version": version, "videos": read("videos"), "clips": read("clips"),
            "errors": read("errors"), "stdout": proc.stdout, "stderr": proc.stderr}


def _video(run, name):
    vid = video_id_for(run["sources"][name])
    rows = [v for v in run["videos"] if v["video_id"] == vid]
    assert rows, f"no videos row for {name}"
    return rows[0]


def _errors(run, name):
    vid = video_id_for(run["sources"][name]) if name != "not_a_source" else None
    return [e for e in run["errors"] if e["item_id"] == vid or (vid is None and e["error_type"] == "bad_manifest_line")]


def test_version_folder_is_last_stdout_line_and_complete(ingest_run):
    manifest = json.load(open(os.path.join(ingest_run["version"], "manifest.json")))
    assert manifest["status"] == "complete"
    assert ingest_run["version"].endswith("/ingest/v1")


@pytest.mark.parametrize("name", ["good", "webm", "mkv", "vfr", "rotated", "http_good", "http_hls"])
def test_playable_sources_become_clips(ingest_run, name):
    video = _video(ingest_run, name)
    clips = [c for c in ingest_run["clips"] if c["video_id"] == video["video_id"]]
    expected = int(video["duration_s"] // 14) + (1 if video["duration_s"] % 14 >= 4 else 0)
    assert len(clips) == expected
    assert [c["clip_index"] for c in sorted(clips, key=lambda c: c["clip_index"])] == list(range(expected))
    for clip in clips:
        assert clip["start_s"] == clip["clip_index"] * 14
        assert all(clip["start_s"] <= t < clip["end_s"] + 1e-6 for t in clip["train_frame_times_s"])
        assert len(clip["caption_frames"]) >= 1


@pytest.mark.parametrize("name,error_type", [
    ("short", "too_short"), ("corrupt", "corrupt"), ("empty", "empty_file"), ("truncated", "truncated"),
    ("audio_only", "no_video_stream"), ("image", "not_a_video"), ("html_as_mp4", "html_not_video"),
    ("http_cut", "truncated"), ("http_404", "not_found"), ("http_page", "not_a_video"),
    ("http_refused", "connection_refused"), ("not_a_source", "bad_manifest_line"),
])
def test_bad_inputs_get_a_clear_error_row(ingest_run, name, error_type):
    errors = _errors(ingest_run, name)
    assert [e["error_type"] for e in errors][:1] == [error_type], errors
    assert errors[0]["message"]
    if name != "not_a_source":
        assert _video(ingest_run, name)["status"].startswith("failed:")


def test_playlist_expands_to_its_videos(ingest_run):
    page = ingest_run["sources"]["http_playlist"]
    http = page.rsplit("/", 1)[0]
    for entry in (f"{http}/good.mp4", f"{http}/h264.mkv"):
        rows = [v for v in ingest_run["videos"] if v["video_id"] == video_id_for(entry)]
        assert len(rows) == 1, (entry, rows)  # good.mp4 is also a manifest line of its own: one row
        assert any(c["video_id"] == rows[0]["video_id"] for c in ingest_run["clips"])


def test_rotated_phone_video_frames_are_upright(ingest_run):
    video = _video(ingest_run, "rotated")
    assert video["rotation"] in (90, 270)
    clip = next(c for c in ingest_run["clips"] if c["video_id"] == video["video_id"])
    image = Image.open(io.BytesIO(clip["train_frames"][0]))
    assert image.height > image.width  # stored landscape, shown portrait
    assert min(image.size) == 336


def test_variable_frame_rate_is_detected_and_sampled_on_the_clock(ingest_run):
    video = _video(ingest_run, "vfr")
    assert video["variable_frame_rate"]
    clips = [c for c in ingest_run["clips"] if c["video_id"] == video["video_id"]]
    times = sorted(t for c in clips for t in c["train_frame_times_s"])
    assert times[:3] == [0.0, 1.0, 2.0] and len(times) >= 28


def test_video_metadata_in_videos_table(ingest_run):
    video = _video(ingest_run, "http_good")
    assert video["title"] and video["codec"] == "h264" and video["width"] == 320 and video["height"] == 180
    assert video["media_path"].endswith(video["video_id"] + ".mp4")  # named by id, never by title
    assert os.path.getsize(video["media_path"]) == video["bytes"]
