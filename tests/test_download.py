"""The download stage on its own (no Ray): limits, retries, metadata, naming."""
from __future__ import annotations

import os

from stages.base import ErrorRow
from stages.download import DownloadStage, classify
from stages.manifest import normalise_source, read_manifest, video_id_for
from tests.conftest import LOOPBACK
from vico_pipeline.config import load_config


def _run(tmp_path, source, *overrides):
    config = load_config("configs/demo.yaml", ["download.backoff_s=0.05", "download.retries=2", LOOPBACK, *overrides])
    stage = DownloadStage(config, media_root=str(tmp_path / "media"))
    return list(stage.safe_process({"url": source, "line": 1}, "x", source))


def test_http_video_is_stored_under_its_id(tmp_path, http_server):
    url = f"{http_server}/good.mp4"
    [row] = _run(tmp_path, url)
    assert not isinstance(row, ErrorRow), row
    assert os.path.basename(row["media_path"]) == video_id_for(url) + ".mp4"
    assert row["duration_s"] == 40.0 and row["has_audio"]


def test_transient_errors_are_retried_with_backoff(tmp_path, http_server):
    [row] = _run(tmp_path, f"{http_server}/flaky/2/h264.mkv")
    assert not isinstance(row, ErrorRow), row  # two 503s, then the file
    [row] = _run(tmp_path, f"{http_server}/flaky/5/short.mp4", "download.retries=1")
    assert isinstance(row, ErrorRow) and row.error_type == "server_error"


def test_byte_and_duration_limits_reject_with_a_reason(tmp_path, http_server, media):
    [row] = _run(tmp_path, f"{http_server}/good.mp4", "download.max_bytes=10000")
    assert isinstance(row, ErrorRow) and row.error_type == "too_large", row
    assert not os.listdir(tmp_path / "media") if (tmp_path / "media").exists() else True
    [row] = _run(tmp_path, media["good"], "download.max_duration_s=30")
    assert isinstance(row, ErrorRow) and row.error_type == "too_long"
    [row] = _run(tmp_path, media["good"], "download.max_bytes=1000")
    assert isinstance(row, ErrorRow) and row.error_type == "too_large"


def test_video_id_is_stable_and_ignores_spelling():
    assert video_id_for("HTTP://Example.COM/v.mp4#t=3") == video_id_for("http://example.com/v.mp4")
    assert video_id_for("/tmp/a.mp4") == video_id_for("file:///tmp/a.mp4")
    assert normalise_source("/tmp/../tmp/a.mp4") == "file:///tmp/a.mp4"
    assert len(video_id_for("x.mp4")) == 16


def test_error_classification_tells_throttling_from_dead_links():
    assert classify("ERROR: HTTP Error 429: Too Many Requests") == "throttled"
    assert classify("Sign in to confirm you're not a bot") == "throttled"
    assert classify("HTTP Error 404: Not Found") == "not_found"


def test_manifest_tables(tmp_path):
    (tmp_path / "m.csv").write_text("url,title\nhttp://a/1.mp4,One\nhttp://a/2.mp4,\n")
    (tmp_path / "m.jsonl").write_text('{"url": "http://a/1.mp4", "id": "x"}\n')
    assert [r["title"] for r in read_manifest(str(tmp_path / "m.csv"))] == ["One", None]
    assert read_manifest(str(tmp_path / "m.jsonl"))[0]["id"] == "x"
