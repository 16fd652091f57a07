"""Ray on loopback: during a real `vico run`, every socket its process tree listens on (driver,
gcs_server, raylet, agents, workers) is on 127.0.0.1 or ::1, with nothing set by the caller."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from tests.conftest import LOOPBACK, REPO
from tests.procs import is_loopback_address, kill_with_env, listening_sockets, pids_with_env


def test_every_listening_socket_of_a_run_is_on_loopback(tmp_path, media):
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{media['short']}\n")
    marker = f"VICO_RAY_TEST_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env[marker] = "1"  # conftest sets the variable for the tests; a user's shell does not
    proc = subprocess.Popen(
        [sys.executable, "-m", "vico_pipeline.cli", "run", "configs/demo.yaml", "--set", f"sources.manifest={manifest}",
         "--set", f"output.root={tmp_path / 'out'}", "--set", "ray.num_cpus=2", "--set", "ray.progress=false",
         "--set", LOOPBACK, "--set", "ray.inline_max_videos=0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, int]] = set()
    try:
        while proc.poll() is None:  # sample the whole run: Ray starts processes (and ports) as it goes
            for _, address, port in listening_sockets(pids_with_env(marker)):
                seen.add((address, port))
            time.sleep(0.3)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_with_env(marker)
    assert proc.returncode in (0, 3), err[-3000:]
    assert "embedded local Ray" in err, err[-2000:]  # the DAG ran on Ray, not inline
    assert len(seen) >= 3, seen  # at least gcs_server, raylet and the driver were seen listening
    assert all(is_loopback_address(address) for address, _ in seen), sorted(seen)


def test_inside_a_ray_job_the_package_changes_nothing():
    """The job server sets RAY_ADDRESS; importing vico then leaves Ray's cluster setting alone."""
    code = "import os, vico_pipeline; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    joined = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_ADDRESS": "10.0.0.5:6379"},
                            cwd=REPO, capture_output=True, text=True, check=True)
    local = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert (joined.stdout.strip(), local.stdout.strip()) == ("None", "0")


def test_a_configured_cluster_address_undoes_the_loopback_default():
    """`ray.address` in a config (a driver joining a cluster from outside a job): before joining,
    init_ray takes the loopback setting back, even when ray was imported already."""
    code = ("import os, vico_pipeline, ray\n"
            "from ray._private import ray_constants\n"
            "before = ray_constants.ENABLE_RAY_CLUSTER\n"
            "from vico_pipeline.runtime import _allow_cluster\n"
            "_allow_cluster()\n"
            "print(before, ray_constants.ENABLE_RAY_CLUSTER, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "True", "None"], proc.stdout + proc.stderr[-2000:]
