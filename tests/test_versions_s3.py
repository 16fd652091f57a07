"""A version on object storage (moto's S3 API on loopback): run, list, show, report,
export and the shard checksums, all through `vico_pipeline.storage`."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_vico
from tests.test_versions_support import DEMO_SETTINGS, demo_videos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def s3_env():
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-written", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from vico_pipeline import storage
        storage.fs_and_path("s3://vico-versions-test")[0].mkdir("vico-versions-test")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def test_version_on_s3(s3_env, tmp_path_factory, tmp_path):
    from stages.shards import verify_shard
    from vico_pipeline import storage

    manifest = demo_videos(str(tmp_path_factory.getbasetemp()))
    sets = [f"sources.manifest={manifest}", "output.root=s3://vico-versions-test/out", *DEMO_SETTINGS]
    done = run_vico("run", os.path.join(REPO, "configs", "demo.yaml"), *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-2000:]
    version = done.stdout.strip().splitlines()[-1]
    assert version == "s3://vico-versions-test/out/demo/v1"
    m = storage.read_json(version + "/manifest.json")
    assert m["status"] == "complete" and m["tables"]["questions"]["rows"] > 0
    assert all(verify_shard(version, s) for s in m["shards"])
    card = storage.read_bytes(version + "/README.md").decode()
    assert "s3cr3t-never-written" not in json.dumps(m) + card  # no credential reached the version

    listing = run_vico("versions", "s3://vico-versions-test/out/demo")
    assert listing.returncode == 0 and "complete" in listing.stdout
    report = run_vico("report", version, "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0 and "data:image/jpeg" in open(tmp_path / "r.html").read()
    export = run_vico("export", version, "--format", "llava", "--out", str(tmp_path / "llava"), "--allow-stand-in")
    assert export.returncode == 0, export.stderr[-1000:]
    records = json.load(open(tmp_path / "llava" / "train.json")) + json.load(open(tmp_path / "llava" / "val.json"))
    assert len(records) == m["tables"]["questions"]["rows"]
