"""`vico submit` against a real Ray cluster on loopback.

The module starts a head node (0 CPUs: it holds the job server and the job's
driver) and one worker node (2 CPUs: every stage task has to run there), with
Ray's token authentication on, submits the demo config with the real CLI and
checks the version the job wrote. Every process started is ended by its
process group id; the nodes' temp dir is ours.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.procs import free_port, free_ports, pids_with_env
from vico_pipeline import submit as submit_mod
from vico_pipeline.cli import main as cli_main
from vico_pipeline.config import load_config

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
VICO = [sys.executable, "-m", "vico_pipeline.cli"]
# A loopback address Ray does not rewrite: with a second node allowed, Ray replaces 127.0.0.1 in
# `--address` by the machine's outward address, where nothing of ours listens.
NODE_IP = "127.0.0.2"


def node_ports(ports: list[int]) -> list[str]:
    """Every port a node would otherwise take at a fixed default (other Ray sessions may hold those);
    `ports`: six distinct free ports."""
    names = ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent",
             "node-manager", "object-manager")
    return [f"--{name}-port={port}" for name, port in zip(names, ports, strict=True)]


def _stop(procs: list[subprocess.Popen], marker: str) -> None:
    """SIGKILL our nodes' process groups, then whatever else carries our temp dir in its environment."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for pid in pids_with_env(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="vsub", dir="/tmp")  # Ray's socket paths must stay short
    token = Path(temp, "auth_token")
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # Distinct ports for both nodes, chosen at once (Ray refuses a port given to two components).
    gcs, dashboard, client, *ports = free_ports(3 + 12)
    procs = []
    common = ["--block", f"--node-ip-address={NODE_IP}", "--disable-usage-stats", f"--temp-dir={temp}/ray"]
    try:
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", *node_ports(ports[:6]), *common],
            env=env, stdout=open(Path(temp, "head.log"), "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(address, env, procs[0], Path(temp, "head.log"))
        procs.append(subprocess.Popen(
            [RAY, "start", f"--address={NODE_IP}:{gcs}", "--num-cpus=2", *node_ports(ports[6:]), *common],
            # Ray refuses a second node when this is 0; the node still binds to 127.0.0.1 only.
            env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
            stdout=open(Path(temp, "worker.log"), "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_nodes(address, env, 2, procs[1], Path(temp, "worker.log"))
        yield {"address": address, "env": env, "temp": temp}
    finally:
        _stop(procs, temp)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_job_server(address: str, env: dict, head: subprocess.Popen, log: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 240  # a hang guard, not an assertion about speed
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited: {log.read_text()[-2000:]}")
        try:
            JobSubmissionClient(address, headers={"Authorization": f"Bearer {Path(env['RAY_AUTH_TOKEN_PATH']).read_text()}"})
            return
        except Exception:
            time.sleep(1.0)
    pytest.fail("the job server did not come up")


def _wait_for_nodes(address: str, env: dict, count: int, worker: subprocess.Popen, log: Path) -> None:
    import requests

    headers = {"Authorization": f"Bearer {Path(env['RAY_AUTH_TOKEN_PATH']).read_text()}"}
    deadline = time.monotonic() + 240  # a hang guard, not an assertion about speed
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            pytest.fail(f"ray start (worker) exited: {log.read_text()[-2000:]}")
        try:
            nodes = requests.get(f"{address}/api/v0/nodes", headers=headers, timeout=10).json()["data"]["result"]["result"]
            if sum(1 for n in nodes if n.get("state") == "ALIVE") >= count:
                return
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(1.0)
    pytest.fail("the worker node did not join")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    subprocess.run([*VICO, "demo-videos", str(root / "videos"), "--count", "2", "--minutes", "2"],
                   check=True, capture_output=True)
    return root


def _submit(cluster, *args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*VICO, "submit", "configs/demo.yaml", "--address", cluster["address"], *args],
                          cwd=cwd, env=cluster["env"], capture_output=True, text=True, timeout=600)


def test_submit_demo_wait_writes_a_complete_version(cluster, demo):
    out_root = demo / "out"
    # The two demo videos and one dead path, whose failure the job's log has to name.
    lines = (demo / "videos" / "manifest.txt").read_text().splitlines()
    videos = [line if os.path.isabs(line) else str(demo / "videos" / line)
              for line in lines if line.strip() and not line.startswith("#")]
    missing = demo / "videos" / "gone.mp4"
    (demo / "manifest.txt").write_text("\n".join([*videos, str(missing)]) + "\n")
    result = _submit(cluster, "--wait", "--set", f"sources.manifest={demo / 'manifest.txt'}",
                     "--set", f"output.root={out_root}", "--set", "dataset.name=submitted")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("vico-submitted-")

    # The job's `vico run` joined the cluster (2 nodes) rather than starting a Ray of its own,
    # and printed the dashboard address and the version folder.
    logs = result.stdout
    assert "joined the cluster" in logs and "2 nodes" in logs, logs[-3000:]
    assert "dashboard at http://" in logs
    version = out_root / "submitted" / "v1"
    assert str(version) in logs

    from stages.manifest import video_id_for
    assert f"failed: download: video {video_id_for(str(missing))} ({missing}): missing" in logs

    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["tables"]["videos"]["rows"] == 3 and manifest["tables"]["errors"]["rows"] == 1
    # Per-stage counts and throughput, and the DAG's rate over the cluster.
    assert manifest["stages"]["frames"]["items_in"] == 2 and manifest["stages"]["frames"]["items_per_s"] > 0
    assert manifest["throughput"]["videos_per_s"] > 0
    assert manifest["tables"]["clips"]["rows"] >= 8  # two 60 s videos in 14 s windows
    assert manifest["config"]["dataset"]["name"] == "submitted"  # the --set reached the job

    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(cluster["address"], headers=submit_mod.auth_headers(cluster["env"]))
    info = client.get_job_info(job_id)
    assert str(info.status.value) == "SUCCEEDED"
    assert info.metadata["dataset"] == "submitted"


def test_submit_exits_with_the_jobs_failure(cluster, demo):
    result = _submit(cluster, "--wait", "--set", f"sources.manifest={demo / 'missing' / 'manifest.txt'}",
                     "--set", f"output.root={demo / 'out-failed'}")
    assert result.returncode != 0
    assert "failed" in result.stderr.splitlines()[-1]
    assert "manifest not found" in result.stdout  # the job's own one-line error, streamed back


def test_submit_without_wait_prints_the_job_id_and_returns(cluster, demo):
    result = _submit(cluster, "--retry-failed", "--set", f"sources.manifest={demo / 'missing' / 'manifest.txt'}")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith("vico-demo-")
    assert "ray job logs --follow" in result.stderr
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(cluster["address"], headers=submit_mod.auth_headers(cluster["env"]))
    entrypoint = client.get_job_info(job_id).entrypoint
    assert entrypoint.endswith(f"-m vico_pipeline.cli run {submit_mod.JOB_CONFIG} --retry-failed"), entrypoint


# ----------------------------------------------------------------------------- without a cluster
def test_job_config_makes_paths_absolute_and_leaves_ray_to_the_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "demo.yaml",
                         ["ray.address=127.0.0.1:6379", "output.root=out", "download.cookies_file=c.txt"])
    plain, local = submit_mod.job_config(config)
    assert plain["output"]["root"] == str(tmp_path / "out")
    assert plain["sources"]["manifest"] == str(tmp_path / "demo" / "manifest.txt")
    assert plain["download"]["cookies_file"] == str(tmp_path / "c.txt")
    assert plain["ray"]["address"] is None and plain["ray"]["progress"] is False
    assert set(local) >= {"output.root", "sources.manifest", "download.cookies_file"}

    s3 = load_config(REPO / "configs" / "demo.yaml", ["output.root=s3://bucket/vico"])
    plain, local = submit_mod.job_config(s3)
    assert plain["output"]["root"] == "s3://bucket/vico" and "output.root" not in local
    # What the job loads is a valid config again.
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(plain))
    assert load_config(path).output.root == "s3://bucket/vico"


def test_auth_headers_follow_rays_token_lookup(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("abc123\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert submit_mod.auth_headers() == {"Authorization": "Bearer abc123"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert submit_mod.auth_headers() == {"Authorization": "Bearer fromenv"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert submit_mod.auth_headers() == {}


def test_submit_user_mistakes_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = str(REPO / "configs" / "demo.yaml")
    assert cli_main(["submit", config]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    # Nothing listens on this port: the job server cannot be reached.
    assert cli_main(["submit", config, "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vico: error: cannot reach the Ray job server") and "\n" not in err
    assert cli_main(["submit", config, "--address", "ray://127.0.0.1:10001"]) == 2


def test_a_wrong_token_is_one_line(cluster, demo):
    env = {**cluster["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    result = subprocess.run([*VICO, "submit", "configs/demo.yaml", "--address", cluster["address"]],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith("vico: error:") and "Traceback" not in result.stderr, result.stderr
