"""Finding the processes a test started, Ray workers included."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def pids_with_env(marker: str) -> list[int]:
    """PIDs whose environment names `marker` (e.g. the test's Ray temp dir): Ray workers rename
    themselves and live in process groups of their own, but keep their environment."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path("/proc", entry, "environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in environ:
                out.append(int(entry))
    return out


def kill_with_env(marker: str) -> None:
    for pid in pids_with_env(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
