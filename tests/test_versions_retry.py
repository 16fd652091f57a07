"""Downloads that failed for reasons that may pass (503, 429, timeouts) are not cached as
finished work: the next run retries them, and `vico run --retry-failed` turns a complete
version with such failures into a new version that has the videos. Dead links stay cached."""
from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from tests.conftest import LOOPBACK
from tests.test_versions_support import demo_config
from vico_pipeline import layout, storage
from vico_pipeline.pipeline import DownloadRunner, transient_failure
from vico_pipeline.registry import stage_specs
from vico_pipeline.errors import RunError
from vico_pipeline.run import run
from vico_pipeline.versions import open_version


def _runner(tmp_path, config):
    return DownloadRunner(stage_specs()[0], config, str(tmp_path / "download"))


def _until() -> tuple[str, str]:
    """A flag whose file, once made, lets the server's /until/FLAG/ route answer (503 before)."""
    flag = f"vico-until-{uuid.uuid4().hex}"
    return flag, os.path.join(tempfile.gettempdir(), flag)


def test_transient_download_failure_is_retried_by_the_next_run(tmp_path, http_server):
    config = demo_config("unused", str(tmp_path), "download.retries=0", LOOPBACK, "download.backoff_s=0.01")
    flag, flag_file = _until()
    url = f"{http_server}/until/{flag}/good.mp4"  # 503 until the flag file exists

    [row] = _runner(tmp_path, config)({"url": url, "line": 1})
    root = str(tmp_path / "download")
    part, errors = layout.part_uri(root, row["video_id"]), layout.errors_uri(root, row["video_id"])
    assert row["refs"] == "{}" and storage.parquet_rows(part) == 0
    assert storage.read_parquet([errors])["error_type"].to_pylist() == ["server_error"]
    assert transient_failure(part, errors)

    [row] = _runner(tmp_path, config)({"url": url, "line": 1})  # a new run tries again: 503 again
    assert row["refs"] == "{}" and transient_failure(part, errors)

    open(flag_file, "w").close()  # the server recovers
    try:
        [row] = _runner(tmp_path, config)({"url": url, "line": 1})
    finally:
        os.unlink(flag_file)
    assert "download" in row["refs"] and storage.parquet_rows(part) == 1
    assert not storage.exists(errors)  # the stale error rows went with the failed attempt
    assert row["error_parts"] == "[]"


def test_dead_link_stays_cached(tmp_path, http_server):
    config = demo_config("unused", str(tmp_path), "download.retries=0", LOOPBACK)
    url = f"{http_server}/status/404"
    [row] = _runner(tmp_path, config)({"url": url, "line": 1})
    part = layout.part_uri(str(tmp_path / "download"), row["video_id"])
    before = os.stat(part).st_mtime_ns
    [again] = _runner(tmp_path, config)({"url": url, "line": 1})
    assert os.stat(part).st_mtime_ns == before and '"cached": true' in again["stats"]
    assert not transient_failure(part, layout.errors_uri(str(tmp_path / "download"), row["video_id"]))


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from vico_pipeline.config import RayConfig
    from vico_pipeline.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


def test_retry_failed_makes_a_version_with_the_video(ray_session, tmp_path, http_server):
    manifest = tmp_path / "manifest.txt"
    flag, flag_file = _until()
    manifest.write_text(f"{http_server}/until/{flag}/good.mp4\n")  # 503 until the flag file exists
    settings = ("download.retries=0", LOOPBACK, "ray.progress=false")
    said = []
    v1 = run(demo_config(str(manifest), str(tmp_path / "out"), *settings), log=said.append)
    m1 = open_version(v1)
    assert m1["transient_failures"] == 1 and m1["tables"].get("clips", {}).get("rows", 0) == 0

    # The same command again: nothing to do, and the way to retry is named.
    said.clear()
    assert run(demo_config(str(manifest), str(tmp_path / "out"), *settings), log=said.append) == v1
    assert any("nothing to do" in s and "--retry-failed" in s for s in said), said

    with pytest.raises(RunError, match="--retry-failed writes a new version"):
        run(demo_config(str(manifest), str(tmp_path / "out"), *settings, "dataset.version=v1"), retry_failed=True)

    open(flag_file, "w").close()  # the server recovers
    try:
        v2 = run(demo_config(str(manifest), str(tmp_path / "out"), *settings), log=said.append, retry_failed=True)
    finally:
        os.unlink(flag_file)
    m2 = open_version(v2)
    assert v2.endswith("/v2") and m2["transient_failures"] == 0
    assert m2["tables"]["videos"]["rows"] == 1 and m2["tables"]["clips"]["rows"] >= 2
    assert m2["fingerprint"] == m1["fingerprint"]
    # the plain command now finds the newest version of the config
    assert run(demo_config(str(manifest), str(tmp_path / "out"), *settings), log=said.append) == v2


def test_an_attempt_without_failures_removes_the_error_rows_of_a_killed_one(tmp_path):
    """A stage killed after writing its error rows but before its part runs again on resume; if
    that attempt fails nowhere (a timeout that passed), the old error rows must not stay."""
    import pyarrow as pa

    from stages.base import ErrorRow
    from vico_pipeline.pipeline import write_part

    schema = pa.schema([("video_id", pa.string()), ("n", pa.int64())])
    part, errors = str(tmp_path / "parts" / "v.parquet"), str(tmp_path / "errors" / "v.parquet")
    bad = ErrorRow(item_id="v-0001", error_type="timeout", message="the endpoint timed out", source="s")
    assert write_part([{"video_id": "v", "n": 1}, bad], schema, part, errors, "caption") == (1, 1)
    assert storage.read_parquet([errors])["error_type"].to_pylist() == ["timeout"]
    os.unlink(part)  # as if killed after the error rows, before the part
    assert write_part([{"video_id": "v", "n": 1}, {"video_id": "v", "n": 2}], schema, part, errors, "caption") == (2, 0)
    assert not os.path.exists(errors) and storage.parquet_rows(part) == 2
