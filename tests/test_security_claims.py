"""Exclusive versions: claims created exclusively (local disk and S3 via moto), owners and
heartbeats, staged tables, and concurrent `vico run`s against one root with a reader polling."""
from __future__ import annotations

import json
import os
import re
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
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = versions.owner_identity()
    fresh = {"owner": "me", "owner_id": me, "heartbeat": time.time()}
    gone = {**me, "pid": int(dead.stdout.strip()), "start_time": me["start_time"]}
    assert versions.claim_is_stale({**fresh, "owner_id": gone})  # killed here (SIGKILL): the rerun need not wait
    assert not versions.claim_is_stale(fresh)  # this process: alive
    # The PID is taken by another process now (a restart, a reused PID): its start time tells them apart.
    assert versions.claim_is_stale({**fresh, "owner_id": {**me, "start_time": me["start_time"] - 1}})
    # Nothing can be proved about another boot, another PID namespace, or an owner without an identity.
    for elsewhere in ({**gone, "boot_id": "another-boot"}, {**gone, "pid_ns": "pid:[1]"}, None):
        assert not versions.claim_is_stale({**fresh, "owner_id": elsewhere})


_IN_NAMESPACE = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.test_versions_support import demo_config
from vico_pipeline import claim, versions
from vico_pipeline.errors import RunError
_, body = versions.read_claim({root!r} + "/shared")
print("stale:", versions.claim_is_stale(body))
config = demo_config({manifest!r}, {out!r}, "dataset.version=shared")
try:
    print("claimed:", claim.claim_version(config, {root!r}, "fpA", "intruder", print, wait_s=0.1))
except RunError as exc:
    print("refused:", exc)
"""


def test_a_run_in_another_pid_namespace_does_not_take_a_live_claim(tmp_path):
    """Same host, same output folder, another PID namespace (containers with host networking on one
    shared root): there the owner's PID does not exist, yet the owner is alive and beating."""
    probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        probe = subprocess.run(["unshare", "-r", "-p", "-f", "--mount-proc", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"unshare refused here: {probe.stderr.strip()[:200]}")
        prefix = ["unshare", "-r", "-p", "-f", "--mount-proc"]
    else:
        prefix = ["unshare", "-p", "-f", "--mount-proc"]
    root = str(tmp_path / "out" / "demo")
    named = _config(tmp_path, "dataset.version=shared")
    owner = claim.new_owner()  # hostname:pid:id, as a real run's
    assert claim.claim_version(named, root, "fpA", owner, print) == ("shared", False)
    code = _IN_NAMESPACE.format(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), root=root,
                                manifest=str(tmp_path / "m.txt"), out=str(tmp_path / "out"))
    proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stale: False" in proc.stdout, proc.stdout
    assert f"refused: version shared is still being written by {owner}" in proc.stdout, proc.stdout
    generation, body = versions.read_claim(f"{root}/shared")
    assert generation == 1 and body["owner"] == owner  # still ours: no "taken over"


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


def _listed_before_the_others_claimed(monkeypatch):
    """The race in one thread: this run's first listing of the versions is empty, as if it had listed
    just before another run of its config created its claim."""
    real, calls = versions.list_versions, [0]

    def listing(root):
        calls[0] += 1
        return [] if calls[0] == 1 else real(root)

    monkeypatch.setattr(versions, "list_versions", listing)


def _first_run_completes_when_waited_for(root: str, said: list):
    """A log for the waiting run that records its lines; the run writing v1 completes it once waited for."""
    def log(line):
        said.append(line)
        if line.startswith("version v1 "):
            storage.write_json(f"{root}/v1/manifest.json", {"status": "complete", "fingerprint": "fpA"})
    return log


def test_two_runs_of_one_config_that_listed_at_once_write_one_version(tmp_path, monkeypatch):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    assert claim.claim_version(config, root, "fpA", "first", print) == ("v1", False)
    claim.Heartbeat(f"{root}/v1", "first", "fpA", "v1").beat()
    monkeypatch.setattr(versions, "HEARTBEAT_S", 0.05)
    _listed_before_the_others_claimed(monkeypatch)
    said = []
    # The second run claims v2 (v1 is taken), sees the live v1 of its config, withdraws and waits for it.
    assert claim.claim_version(config, root, "fpA", "second", _first_run_completes_when_waited_for(root, said)) \
        == ("v1", None)
    assert said == ["version v1 is being written by first with this config; waiting for it"]
    assert sorted(os.listdir(root)) == ["v1"]


def test_a_run_waiting_on_a_version_that_is_withdrawn_does_not_claim_it(tmp_path, monkeypatch):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    assert claim.claim_version(config, root, "fpA", "first", print) == ("v1", False)
    claim.Heartbeat(f"{root}/v1", "first", "fpA", "v1").beat()
    assert storage.create_exclusive(f"{root}/v2/.claim.json", storage.json_bytes(
        claim._claim_body("second", "fpA", "v2")))  # a second run, about to find v1 and withdraw
    monkeypatch.setattr(versions, "HEARTBEAT_S", 0.05)
    real, calls = versions.list_versions, [0]

    def listing(path):
        calls[0] += 1
        if calls[0] == 1:  # the third run sees only v2 ...
            return [v for v in real(path) if v["version"] == "v2"]
        if calls[0] == 2:  # ... which the second run withdraws while the third one waits on it
            claim._withdraw(f"{root}/v2")
        return real(path)

    monkeypatch.setattr(versions, "list_versions", listing)
    said = []
    assert claim.claim_version(config, root, "fpA", "third", _first_run_completes_when_waited_for(root, said)) \
        == ("v1", None)
    assert said == ["version v2 is being written by second with this config; waiting for it",
                    "version v1 is being written by first with this config; waiting for it"]
    assert sorted(os.listdir(root)) == ["v1"]


def test_a_run_that_finds_its_config_completed_meanwhile_takes_that_version(tmp_path, monkeypatch):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    storage.write_json(f"{root}/v1/manifest.json", {"status": "complete", "fingerprint": "fpA"})
    _listed_before_the_others_claimed(monkeypatch)
    assert claim.claim_version(config, root, "fpA", "second", print) == ("v1", None)
    assert sorted(os.listdir(root)) == ["v1"]


def test_a_complete_version_being_replaced_is_not_the_answer(tmp_path):
    """--retry-failed: the caller chose to write a complete version of its config anew."""
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)
    storage.write_json(f"{root}/v1/manifest.json", {"status": "complete", "fingerprint": "fpA"})
    assert claim.claim_version(config, root, "fpA", "plain", print) == ("v1", None)
    assert claim.claim_version(config, root, "fpA", "retry", print, replacing={"v1"}) == ("v2", False)


def test_racing_runs_of_one_config_claim_one_version(tmp_path):
    root = str(tmp_path / "out" / "demo")
    config = _config(tmp_path)

    def run(i):
        try:
            return claim.claim_version(config, root, "fpA", f"owner{i}", print, wait_s=0.2)
        except RunError as exc:
            return str(exc)

    results = _race(run)
    assert [r for r in results if isinstance(r, tuple)] == [("v1", False)]
    # The others gave up waiting (wait_s): for v1, or for a higher number whose run had not yet withdrawn.
    waited = re.compile(r"version v\d+ is still being written by owner\d; try again when it has finished")
    assert all(waited.fullmatch(r) for r in results if isinstance(r, str)), results
    assert sorted(os.listdir(root)) == ["v1"]


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
