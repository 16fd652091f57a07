"""Finding the processes a test started, Ray workers included."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def _pids_whose(file: str, text: str) -> list[int]:
    """PIDs (other than this one) whose /proc/PID/`file` holds `text`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                content = Path("/proc", entry, file).read_bytes()
            except OSError:
                continue
            if text.encode() in content:
                out.append(int(entry))
    return out


def pids_with_env(marker: str) -> list[int]:
    """PIDs whose environment names `marker` (e.g. the test's Ray temp dir): Ray workers rename
    themselves and live in process groups of their own, but keep their environment."""
    return _pids_whose("environ", marker)


def pids_with_cmdline(text: str) -> list[int]:
    """PIDs whose command line holds `text` (e.g. the path of the video an ffmpeg decodes)."""
    return _pids_whose("cmdline", text)


def kill_with_env(marker: str) -> None:
    for pid in pids_with_env(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1: all are held open together while chosen, so
    none is handed out twice (one `free_port()` after another may return the same port)."""
    import socket

    held = [socket.socket() for _ in range(count)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def transformers_serve(root: Path, model: str | None = None):
    """`transformers serve` on 127.0.0.1 (hub offline, an empty cache), serving `model` (a local
    folder) or, with None, whatever a request names; yields its /v1 base URL and ends it by PID.
    A generator for `contextlib.contextmanager` or a pytest fixture's body."""
    import subprocess
    import sys
    import time
    import urllib.request

    import pytest

    hub = root / "empty-hub"
    hub.mkdir(exist_ok=True)
    port = free_port()
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    log_path = root / "serve.log"
    log = open(log_path, "wb")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), TRANSFORMERS_VERBOSITY="error")
    served = [model] if model else []
    proc = subprocess.Popen([cli, "serve", *served, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180  # a readiness wait, not an assertion on speed
        while True:
            if proc.poll() is not None:
                pytest.fail("transformers serve exited: " + log_path.read_text()[-2000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not answer: " + log_path.read_text()[-2000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def send_json(handler, status: int, payload) -> None:
    """Answer an http.server request with `payload` as JSON (the test servers' one reply)."""
    import json

    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _proc_net_address(hex_address: str) -> str:
    """'0100007F:1F90' (/proc/net/tcp) or its 32-hex-digit tcp6 form -> the IP as text."""
    import ipaddress

    host = hex_address.split(":")[0]
    if len(host) == 8:
        return str(ipaddress.IPv4Address(bytes.fromhex(host)[::-1]))
    words = [bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, 32, 8)]  # four little-endian words
    return str(ipaddress.IPv6Address(b"".join(words)))


def listening_sockets(pids) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket (IPv4 and IPv6) the processes `pids` hold:
    /proc/net/tcp{,6} lists the sockets, /proc/PID/fd maps their inodes to processes."""
    listening = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening[fields[9]] = (_proc_net_address(fields[1]), int(fields[1].split(":")[1], 16))
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                found.append((pid, *listening[target[8:-1]]))
    return found


def is_loopback_address(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1, how gRPC listens on 127.0.0.1)."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
