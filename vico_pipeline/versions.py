"""Finding, opening and comparing the versions of a dataset.

A version folder is complete when its manifest.json says `"status": "complete"`;
every reader here refuses anything else. The run that writes a version is `run.py`.

Claims: a run owns a version folder through a claim file it created exclusively
(O_CREAT|O_EXCL on a local disk, a conditional PUT `If-None-Match: *` on S3), so two
runs never write one version. The claim names its owner and carries a heartbeat the
owner refreshes; a claim whose heartbeat is older than STALE_S is a killed run's, and
another run may take the folder over by exclusively creating the next generation of
the claim (`.claim.json`, `.claim.2.json`, ...): the highest generation owns it.
"""
from __future__ import annotations

import re
import time

from vico_pipeline import layout, storage
from vico_pipeline.errors import RunError

CLAIM = ".claim.json"
_CLAIM_NAME = re.compile(r"^\.claim(?:\.(\d+))?\.json$")
HEARTBEAT_S = 5.0  # how often a run refreshes its claim
STALE_S = 60.0  # a claim not refreshed for this long is a killed run's


def claim_name(generation: int) -> str:
    return CLAIM if generation <= 1 else f".claim.{generation}.json"


def read_claim(version_root: str) -> tuple[int, dict | None]:
    """(generation, claim) of the folder's current claim; (0, None) when unclaimed.

    A claim being written (not yet valid JSON) reads as {} and counts as live."""
    generations = [int(m.group(1) or 1) for m in map(_CLAIM_NAME.match, storage.listdir(version_root)) if m]
    if not generations:
        return 0, None
    generation = max(generations)
    try:
        claim = storage.read_json(storage.join(version_root, claim_name(generation)))
    except (ValueError, OSError):
        claim = {"heartbeat": time.time()}
    return generation, claim if isinstance(claim, dict) else {}


def claim_is_stale(claim: dict, now: float | None = None) -> bool:
    """A killed run's claim: no heartbeat (written by an older vico), released, not refreshed for
    STALE_S, or owned by a process provably gone (`owner_gone`)."""
    beat = claim.get("heartbeat")
    if not isinstance(beat, (int, float)) or claim.get("released") or owner_gone(claim.get("owner_id")):
        return True
    return (now if now is not None else time.time()) - beat > STALE_S


def owner_identity(pid: int | None = None) -> dict:
    """Who owns a claim, precisely enough to tell it is gone: the host's boot id, the PID namespace
    and the process start time, not just hostname and PID. Two containers on one kernel share the
    boot id but not the PID namespace; a PID reused after a reboot or a restart has another start time."""
    import os
    import socket

    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pid_ns": _pid_namespace(), "pid": pid, "start_time": _start_time(pid)}


def owner_gone(identity) -> bool:
    """True only when the owner is provably gone: it ran in this boot and this PID namespace, and its
    PID is free now or names a process started at another time. Anything else (another host,
    another namespace, an owner written by an older vico) cannot be checked here: the heartbeat decides."""
    if not isinstance(identity, dict) or not isinstance(identity.get("pid"), int):
        return False
    here = owner_identity()
    if None in (here["boot_id"], here["pid_ns"]) or (identity.get("boot_id"), identity.get("pid_ns")) != \
            (here["boot_id"], here["pid_ns"]):
        return False
    started = _start_time(identity["pid"])
    return started is None or started != identity.get("start_time")


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    import os

    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]": the namespace's inode
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None: no such process."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (comm)", field 3 is index 0


def list_versions(dataset_root: str) -> list[dict]:
    """Every version folder with its manifest (or status 'incomplete'); files beside them are not versions."""
    out = []
    for name in storage.listdir(dataset_root):
        if name.startswith(("_", ".")):
            continue
        path = storage.join(dataset_root, name)
        if not _is_folder(path):
            continue  # a report or a note someone left beside the versions
        manifest = _read_manifest(path)
        out.append({"version": name, "path": path, "manifest": manifest,
                    "status": "complete" if manifest.get("status") == "complete" else "incomplete"})
    return sorted(out, key=lambda v: (layout.version_number(v["version"]) or 1 << 30, v["version"]))


def _is_folder(uri: str) -> bool:
    fs, path = storage.fs_and_path(uri)
    return fs.isdir(path)


def _read_manifest(version_root: str) -> dict:
    path = storage.join(version_root, layout.MANIFEST)
    try:
        manifest = storage.read_json(path)
    except (FileNotFoundError, ValueError, OSError):
        return {}  # missing, or not ours: the version is not complete
    return manifest if isinstance(manifest, dict) else {}


read_manifest = _read_manifest


def next_version_name(dataset_root: str) -> str:
    numbers = [layout.version_number(v["version"]) or 0 for v in list_versions(dataset_root)]
    return f"v{max(numbers, default=0) + 1}"


def is_complete(version_root: str) -> bool:
    return _read_manifest(version_root).get("status") == "complete"


def open_version(version_root: str) -> dict:
    """The manifest of a complete version; RunError (one line) for anything else."""
    version_root = version_root.rstrip("/")
    if not storage.exists(version_root):
        raise RunError(f"no such version folder: {version_root}")
    manifest = _read_manifest(version_root)
    if manifest.get("status") != "complete":
        raise RunError(f"{version_root} is not a complete version (no manifest.json with status complete); "
                       "rerun its `vico run` command to finish it")
    return manifest
