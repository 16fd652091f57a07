"""Object storage: output.root and manifest sources on S3, against moto's S3 API on loopback.

moto runs in server mode in this process (a real HTTP S3 endpoint on
127.0.0.1); `vico run` runs as a child process that only knows the endpoint
and credentials from its environment, is killed mid-run, and is run again.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.procs import kill_with_env
from vico_pipeline import storage

REPO = Path(__file__).resolve().parent.parent
VICO = [sys.executable, "-m", "vico_pipeline.cli"]
BUCKET = "vico-test"


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        fs, _ = storage.fs_and_path(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield {"env": env, "endpoint": env["AWS_ENDPOINT_URL"]}
    server.stop()


def _raw_s3(s3):
    """An S3 client of its own (not storage's), to write and look behind storage's back."""
    import s3fs
    return s3fs.S3FileSystem(endpoint_url=s3["endpoint"], skip_instance_cache=True)


# ----------------------------------------------------------------------------- storage on S3
def test_storage_round_trip_on_s3(s3, tmp_path):
    root = f"s3://{BUCKET}/roundtrip"
    storage.makedirs(root)  # the bucket exists: no error
    storage.write_json(storage.join(root, "a", "manifest.json"), {"status": "complete"})
    assert storage.read_json(f"{root}/a/manifest.json") == {"status": "complete"}
    table = pa.table({"video_id": ["a", "b", "c"], "n": [1, 2, 3]})
    nbytes = storage.write_parquet(table, f"{root}/a/t/part-0.parquet")
    assert nbytes > 0 and storage.parquet_rows(f"{root}/a/t/part-0.parquet") == 3
    assert storage.read_parquet([f"{root}/a/t/part-0.parquet"]).equals(table)
    assert storage.listdir(f"{root}/a") == ["manifest.json", "t"]
    assert storage.listdir(f"{root}/nothing-here") == []

    local = tmp_path / "media.bin"
    local.write_bytes(os.urandom(3000))
    storage.upload_file(str(local), f"{root}/media/x.bin")
    with storage.local_copy(f"{root}/media/x.bin") as path:
        assert not path.startswith("s3") and Path(path).read_bytes() == local.read_bytes()
    assert not os.path.exists(path)  # the temporary copy is gone afterwards

    fs, path = storage.pyarrow_filesystem(f"{root}/a/t")
    assert pq.read_table(path, filesystem=fs).num_rows == 3

    storage.remove(f"{root}/a")
    assert not storage.exists(f"{root}/a/manifest.json")
    with pytest.raises(FileNotFoundError, match="no bucket named"):
        storage.makedirs("s3://no-such-bucket/vico")


def test_another_writer_is_seen_at_once(s3):
    """No listing cache: a part another worker wrote is found, not redone."""
    prefix = f"s3://{BUCKET}/shared/parts"
    assert storage.listdir(prefix) == [] and not storage.exists(f"{prefix}/v1.parquet")
    _raw_s3(s3).pipe_file(f"{BUCKET}/shared/parts/v1.parquet", b"x")
    assert storage.exists(f"{prefix}/v1.parquet")
    assert storage.listdir(prefix) == ["v1.parquet"]


def test_endpoint_from_fsspec_variable(s3, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3["endpoint"])
    assert storage.storage_options("s3://b/k")["endpoint_url"] == s3["endpoint"]
    storage.write_bytes(f"s3://{BUCKET}/fsspec-var/k", b"ok")
    assert storage.read_bytes(f"s3://{BUCKET}/fsspec-var/k") == b"ok"
    assert storage.storage_options("/local/path") == {}


# ----------------------------------------------------------------------------- a run on S3
@pytest.fixture(scope="module")
def s3_manifest(s3, tmp_path_factory):
    """Three 1-minute demo videos uploaded to S3, and a manifest on S3 that lists them as s3:// sources."""
    local = tmp_path_factory.mktemp("s3demo")
    subprocess.run([*VICO, "demo-videos", str(local), "--count", "3", "--minutes", "2"], check=True,
                   capture_output=True)
    lines = []
    for video in sorted(local.glob("*.mp4")):
        uri = f"s3://{BUCKET}/inputs/{video.name}"
        storage.upload_file(str(video), uri)
        lines.append(uri)
    assert len(lines) == 3
    manifest = f"s3://{BUCKET}/inputs/manifest.txt"
    storage.write_bytes(manifest, ("# demo videos on S3\n" + "\n".join(lines) + "\n").encode())
    return manifest


def _run_cmd(manifest: str, root: str) -> list[str]:
    # One download and one frames task at a time, so the kill lands with videos still to do.
    return [*VICO, "run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
            "--set", f"output.root={root}", "--set", "ray.progress=false", "--set", "ray.num_cpus=2",
            "--set", "download.concurrency=1", "--set", "frames.concurrency=1"]


def test_run_on_s3_resumes_after_a_kill_and_reads_back(s3, s3_manifest, capsys):
    root = f"s3://{BUCKET}/out"
    raw = _raw_s3(s3)
    ray_tmp = tempfile.mkdtemp(prefix="vs3", dir="/tmp")
    env = {**os.environ, **s3["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    log = Path(ray_tmp, "first.log")
    first = subprocess.Popen(_run_cmd(s3_manifest, root), cwd=REPO, env=env, stdout=open(log, "wb"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Kill the run (SIGKILL, the whole process group) once the first video's frames part is written.
        deadline = time.monotonic() + 300  # a hang guard, not an assertion about speed
        killed_parts: list[str] = []
        while time.monotonic() < deadline and first.poll() is None:
            raw.invalidate_cache()  # s3fs keeps listings: an empty one seen early would be seen again
            killed_parts = raw.glob(f"{BUCKET}/out/demo/_stages/frames-*/parts/*.parquet")
            if killed_parts:
                break
            time.sleep(0.2)
        assert killed_parts, f"no frames part before the run ended: {log.read_text()[-3000:]}"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        kill_with_env(ray_tmp)
    assert not raw.exists(f"{BUCKET}/out/demo/v1/manifest.json"), "the run finished before the kill"
    assert raw.exists(f"{BUCKET}/out/demo/v1/.claim.json")
    before = {p: raw.info(p)["ETag"] for p in killed_parts}

    try:
        # Where it runs does not change what it makes: the dashboard on, the same version resumed.
        second = subprocess.run([*_run_cmd(s3_manifest, root), "--set", "ray.dashboard=true"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        kill_with_env(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert second.returncode == 0, second.stderr[-3000:]
    version = second.stdout.strip().splitlines()[-1]
    assert version == f"{root}/demo/v1"  # the killed version was found again and finished
    assert "ray: embedded local Ray" in second.stderr and "dashboard at http://127.0.0.1:" in second.stderr

    manifest = storage.read_json(f"{version}/manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["stages"]["frames"]["cached"] >= len(before)  # parts written before the kill were reused
    for part, etag in before.items():
        assert raw.info(part)["ETag"] == etag  # ... not written again

    # Read the version back from S3: every table matches its count in the manifest.
    for table, count in manifest["tables"].items():
        files = ["s3://" + f for f in raw.find(f"{BUCKET}/out/demo/v1/{table}") if f.endswith(".parquet")]
        assert sum(storage.parquet_rows(f) for f in files) == count["rows"], table
    videos = storage.read_parquet([f"{version}/videos/{n}" for n in storage.listdir(f"{version}/videos")])
    assert videos.num_rows == 3 and set(videos["status"].to_pylist()) == {"ok"}
    assert all(p.startswith(f"{root}/demo/_stages/download-") for p in videos["media_path"].to_pylist())
    clips = storage.read_parquet([f"{version}/clips/{n}" for n in storage.listdir(f"{version}/clips")])
    assert clips.num_rows == manifest["tables"]["clips"]["rows"] >= 12  # three 60 s videos
    assert len(set(clips["clip_id"].to_pylist())) == clips.num_rows  # resumed: each clip exactly once
    assert manifest["tables"]["errors"]["rows"] == 0

    # The version commands read it from S3 too.
    from vico_pipeline.cli import main as cli_main
    assert cli_main(["versions", f"{root}/demo"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert any(row[:2] == ["v1", "complete"] for row in listed), listed
