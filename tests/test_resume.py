"""Kill `vico run` with SIGKILL at several moments, run the same command again: the version
completes with exactly the rows of an uninterrupted run, and no reader ever takes the
half-written version for a complete one."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_versions_support import DEMO_SETTINGS, demo_version, demo_videos, rows_by_id
from vico_pipeline.errors import RunError
from vico_pipeline.versions import list_versions, open_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"videos": "video_id", "clips": "clip_id", "captions": "clip_id", "clues": ("video_id", "clue_index"),
        "questions": "question_id", "errors": ("stage", "item_id", "error_type")}


def _command(manifest: str, root: str) -> list[str]:
    sets = [f"sources.manifest={manifest}", f"output.root={root}", *DEMO_SETTINGS]
    return [sys.executable, "-m", "vico_pipeline.cli", "run", os.path.join(REPO, "configs", "demo.yaml"),
            *[arg for s in sets for arg in ("--set", s)]]


def _run_and_kill(command: list[str], when: str, timeout: float = 240) -> bool:
    """Start the run in its own process group; SIGKILL the group once `when` (a glob) matches.

    Returns whether it was killed (False: it finished first)."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not glob.glob(when):
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"{when} never appeared"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _assert_not_complete(version: str) -> None:
    if not os.path.isdir(version):
        return
    with pytest.raises(RunError, match="not a complete version"):
        open_version(version)
    assert all(v["status"] == "incomplete" for v in list_versions(os.path.dirname(version)))


def _untimed(rows: dict) -> dict:
    return {k: {c: v for c, v in row.items() if "latency" not in c} for k, row in rows.items()}


def _plant_stale_temp_files(root: str, version: str) -> None:
    """What a write cut short leaves behind: temp names next to real parts."""
    for parts in glob.glob(f"{root}/demo/_stages/*/parts"):
        with open(os.path.join(parts, ".tmp-0123456789abcdef"), "wb") as handle:
            handle.write(b"PAR1 half a part")
    os.makedirs(os.path.join(version, "clips"), exist_ok=True)
    with open(os.path.join(version, "clips", ".tmp-deadbeef-x.parquet"), "wb") as handle:
        handle.write(b"PAR1 torn")


def test_kill_at_several_moments_then_resume(tmp_path_factory, tmp_path):
    clean = demo_version(tmp_path_factory)
    manifest = demo_videos(str(tmp_path_factory.getbasetemp()))
    root = str(tmp_path / "out")
    version = os.path.join(root, "demo", "v1")
    command = _command(manifest, root)
    moments = [
        f"{version}/.claim.json",                              # before Ray has started
        f"{root}/demo/_stages/frames-*/parts/*.parquet",       # mid-DAG: one video's frames written
        f"{root}/demo/_stages/questions-*/parts/*.parquet",    # late in the DAG
    ]
    killed = 0
    for when in moments:
        if _run_and_kill(command, when):
            killed += 1
            _assert_not_complete(version)
        _plant_stale_temp_files(root, version)
    assert killed >= 2  # the first two moments come long before the run can end

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == version
    resumed, reference = open_version(version), open_version(clean)
    assert resumed["resumed"] is True
    assert [v["version"] for v in list_versions(os.path.dirname(version))] == ["v1"]  # no second version
    assert any(r["version"] is None for r in resumed["reused"].values())  # parts of the killed runs reused
    for table, key in KEYS.items():
        got, want = rows_by_id(version, table, key), rows_by_id(clean, table, key)
        assert got.keys() == want.keys(), table
        # everything but timings (a caption's latency) is the same, frame bytes included
        assert _untimed(got) == _untimed(want), table
        assert resumed["tables"][table]["rows"] == reference["tables"][table]["rows"]
    assert [(s["path"], s["rows"], s["sha256"]) for s in resumed["shards"]] == \
        [(s["path"], s["rows"], s["sha256"]) for s in reference["shards"]]
    assert not glob.glob(f"{version}/**/.tmp-*", recursive=True)  # the version holds no stale temp file
