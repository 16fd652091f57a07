"""Exclusive versions: claims created exclusively (local disk and S3 via moto), owners and
heartbeats, staged tables, and concurrent `vico run`s against one root with a reader polling."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.test_versions_support import demo_config, demo_version
from vico_pipeline import claim, storage, versions
from vico_pipeline.errors import RunError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _race(fn, n: int = 8) -> list:
    results, start = [None] * n, threading.Barrier(n)

    def one(i):
        start.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_exclusive_create_has_one_winner_on_a_local_disk(tmp_path):
    target = str(tmp_path / "v1" / ".claim.json")
    won = _race(lambda i: storage.create_exclusive(target, json.dumps({"owner": i}).encode()))
    assert won.count(True) == 1
    assert json.load(open(target))["owner"] == won.index(True)  # the winner's bytes, never overwritten


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        storage.fs_and_path("s3://claims")[0].mkdir("claims")
        yield "s3://claims"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def test_exclusive_create_is_a_conditional_put_on_s3(s3):
    target = f"{s3}/ds/v1/.claim.json"
    won = _race(lambda i: storage.create_exclusive(target, json.dumps({"owner": i}).encode()), n=6)
    assert won.count(True) == 1  # If-None-Match: * -> 412 for everyone after the first
    assert storage.read_json(target)["owner"] == won.index(True)


def _config(tmp_path, *settings):
    manifest = tmp_path / "m.txt"
    manifest.write_text("/nonexistent.mp4\n")
    return demo_config(str(manifest), str(tmp_path / "out"), *settings)


def test_different_configs_started_together_get_different_versions(tmp_path):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    names = _race(lambda i: claim.claim_version(config, root, f"fp{i}", f"owner{i}", print)[0])
    assert sorted(names, key=lambda n: int(n[1:])) == [f"v{i}" for i in range(1, 9)]
    for name in names:
        _, body = versions.read_claim(f"{root}/{name}")
        assert body["owner"] == f"owner{names.index(name)}" and body["heartbeat"] > 0


def test_a_live_claim_is_refused_with_its_owner_and_a_stale_one_taken_over(tmp_path, monkeypatch):
    root = str(tmp_path / "out" / "demo")
    named = _config(tmp_path, "dataset.version=shared")
    assert claim.claim_version(named, root, "fpA", "alice@host:1", print) == ("shared", False)
    beat = claim.Heartbeat(f"{root}/shared", "alice@host:1", "fpA", "shared")
    beat.beat()
    with pytest.raises(RunError, match="being written by alice@host:1 with another config"):
        claim.claim_version(named, root, "fpB", "bob@host:2", print)
    # Same config, still live: wait for it (here: give up after a moment) rather than join it.
    with pytest.raises(RunError, match="still being written by alice@host:1"):
        claim.claim_version(named, root, "fpA", "bob@host:2", print, wait_s=0.1)
    # Alice's run is killed: her heartbeat goes stale and Bob takes the folder over (resumes it).
    monkeypatch.setattr(versions, "STALE_S", 0.0)
    time.sleep(0.01)
    assert claim.claim_version(named, root, "fpA", "bob@host:2", print) == ("shared", True)
    generation, body = versions.read_claim(f"{root}/shared")
    assert generation == 2 and body["owner"] == "bob@host:2"
    beat.beat()  # Alice's heartbeat (a run that was only slow) learns it lost the folder
    with pytest.raises(RunError, match="taken over by bob@host:2"):
        beat.check()


def test_a_claim_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{socket.gethostname()}:{dead.stdout.strip()}:abc"
    fresh = {"owner": owner, "heartbeat": time.time()}
    assert versions.claim_is_stale(fresh)  # killed here (SIGKILL): the rerun need not wait STALE_S
    assert not versions.claim_is_stale({**fresh, "owner": claim.new_owner()})  # this process: alive
    assert not versions.claim_is_stale({**fresh, "owner": "another-host:1:abc"})  # elsewhere: the heartbeat says


def test_the_same_config_waits_for_the_live_run_and_takes_its_result(tmp_path, monkeypatch):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    assert claim.claim_version(config, root, "fpA", "first", print) == ("v1", False)
    claim.Heartbeat(f"{root}/v1", "first", "fpA", "v1").beat()
    said = []
    monkeypatch.setattr(versions, "HEARTBEAT_S", 0.05)
    threading.Timer(0.3, lambda: storage.write_json(f"{root}/v1/manifest.json",
                                                    {"status": "complete", "fingerprint": "fpA"})).start()
    assert claim.claim_version(config, root, "fpA", "second", said.append) == ("v1", None)
    assert said == ["version v1 is being written by first with this config; waiting for it"]


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        storage.write_bytes(str(tmp_path / "t" / "part.parquet"), b"x" * 1000)
    assert os.listdir(tmp_path / "t") == []
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: (open(a[1], "wb").write(b"half"), full_disk(0)))
    (tmp_path / "src").write_bytes(b"data")
    with pytest.raises(OSError):
        storage.upload_file(str(tmp_path / "src"), str(tmp_path / "u" / "video.mp4"))
    assert os.listdir(tmp_path / "u") == []


def _consistent(version_path: str) -> list[str]:
    """What a reader finds missing in a version that says it is complete."""
    manifest = versions.read_manifest(version_path)
    if manifest.get("status") != "complete":
        return []
    missing = []
    for table, counts in manifest["tables"].items():
        if table == "shards":
            files = [s["path"] for s in manifest["shards"]]
            missing += [f for f in files if not storage.exists(f if "://" in f or f.startswith("/")
                                                               else storage.join(version_path, f))]
            continue
        found = [n for n in storage.listdir(storage.join(version_path, table)) if n.endswith(".parquet")]
        if len(found) != counts["files"]:
            missing.append(f"{table}: {len(found)} of {counts['files']} files")
    return missing


def test_concurrent_runs_against_one_root_are_exclusive_and_readers_never_see_half(tmp_path_factory, tmp_path):
    """Four `vico run`s at once (two configs, each twice) on a root whose heavy stages are cached
    (so they run in-process, fast), and a reader polling every version the whole time."""
    base = demo_version(tmp_path_factory)  # .../demo-clean/demo/v1
    root = tmp_path / "root"
    shutil.copytree(os.path.dirname(os.path.dirname(base)), root, symlinks=True)
    shutil.rmtree(root / "demo" / "v1")  # the stages' cache stays; no version yet
    manifest = versions.read_manifest(base)["config"]["sources"]["manifest"]
    problems, polls, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            for v in versions.list_versions(str(root / "demo")):
                bad = _consistent(v["path"])
                if bad:
                    problems.append((v["version"], bad))
            polls[0] += 1

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    runs = []
    for seed in (1, 1, 2, 2):
        cmd = [sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml",
               "--set", f"sources.manifest={manifest}", "--set", f"output.root={root}",
               "--set", "ray.progress=false", "--set", f"questions.seed={seed}"]
        runs.append((seed, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    outputs = [(seed, *proc.communicate(timeout=600), proc.returncode) for seed, proc in runs]
    stop.set()
    watcher.join(timeout=60)
    for seed, out, err, code in outputs:
        assert code == 0, err[-2000:]
        assert "Traceback" not in err
    found = versions.list_versions(str(root / "demo"))
    assert [v["status"] for v in found] == ["complete", "complete"], found  # one version per config
    by_seed = {v["manifest"]["config"]["questions"]["seed"]: v["path"] for v in found}
    assert set(by_seed) == {1, 2}
    for seed, out, err, code in outputs:  # each run printed its config's version
        assert out.strip().splitlines()[-1] == by_seed[seed]
    assert not problems, problems[:5]
    assert polls[0] > 0
    for v in found:
        assert not _consistent(v["path"])
