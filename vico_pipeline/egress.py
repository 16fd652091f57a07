"""The egress policy of downloads: which addresses a download may connect to, and for how long.

A crawler fed URLs from the open internet must not be turned against the network
it runs in: a manifest line (or a redirect, or a playlist entry) naming 127.0.0.1,
10.x, or the cloud metadata address 169.254.169.254 is refused as
`forbidden_address`, unless the config allows that network
(`download.allowed_networks`).

The check runs on the address each socket actually connects to, so it covers
every request yt-dlp makes (redirects, playlist and feed entries, HLS fragments,
DNS answers that change between look-ups). It applies only to the thread inside
an `EgressGuard`; other connections of the process (Ray, object stores) pass.
The guard also enforces a total deadline: when it passes, the guard's sockets
are shut down, which wakes a read blocked on a server dripping one byte a second.

Subprocesses: a guard with a `proxy` (vico_pipeline/egress_proxy.py, a loopback
proxy applying the same policy) covers what yt-dlp's subprocesses fetch. Every
subprocess yt-dlp starts inside the guard goes through `GuardedPopen`
(`guard_subprocesses`): its environment points http and https at the proxy with
`no_proxy` cleared, it runs in a process group of its own, it is killed if its
worker dies (PR_SET_PDEATHSIG), and its whole group is killed when the deadline
passes or the guard ends, so none outlives the download.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterable
from urllib.parse import urlsplit


class ForbiddenAddress(ConnectionRefusedError):
    """A connection the egress policy refuses (an OSError, so HTTP clients report it as a failed connection)."""

    def __init__(self, message: str):
        super().__init__(f"forbidden_address: {message}")


class DeadlinePassed(TimeoutError):
    pass


def is_internal(ip: ipaddress._BaseAddress) -> bool:
    """Loopback, link-local (cloud metadata included), private, shared, unspecified, multicast or reserved."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified \
        or ip.is_multicast or ip.is_reserved


class EgressPolicy:
    """Internal addresses refused, except inside `allowed_networks`."""

    def __init__(self, allowed_networks: Iterable[str] = ()):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def check_ip(self, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if is_internal(ip) and not any(ip.version == n.version and ip in n for n in self.allowed):
            raise ForbiddenAddress(f"{ip} is an internal address (allow it with download.allowed_networks)")

    def check_url(self, url: str) -> None:
        """Resolve the URL's host and check every address it names (the first look-up; each connect is checked too)."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, ValueError):
            return  # the download reports the DNS error
        for info in infos:
            self.check_ip(info[4][0])


_active = threading.local()
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _checked(sock: socket.socket, address) -> None:
    guard = getattr(_active, "guard", None)
    if guard is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    if guard.expired:
        raise DeadlinePassed(f"deadline of {guard.deadline_s:g} s passed")
    if guard.policy is not None:  # None: a deadline only (engine requests)
        try:
            guard.policy.check_ip(address[0])
        except ForbiddenAddress as exc:
            guard.refused.append(str(exc))  # yt-dlp may skip a refused HLS fragment and go on: we don't
            raise
    guard.track(sock)


def _guarded_connect(self, address):
    _checked(self, address)
    return _original_connect(self, address)


def _guarded_connect_ex(self, address):
    _checked(self, address)
    return _original_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


def current_guard() -> "EgressGuard | None":
    return getattr(_active, "guard", None)


class EgressGuard:
    """`with EgressGuard(policy, deadline_s):` every connection this thread makes is checked (policy None:
    none is), and all of them are cut when the deadline passes (`expired` then says so)."""

    def __init__(self, policy: EgressPolicy | None, deadline_s: float, proxy=None):
        self.policy = policy
        self.deadline_s = deadline_s
        self.proxy = proxy  # an EgressProxy for subprocesses, or None (then they get no network)
        if proxy is not None:
            proxy.on_refused = self.kill_processes  # a refused request dooms the download: stop now
        self.expired = False
        self.refused: list[str] = []  # the policy's messages for connections it refused
        self._processes: list[subprocess.Popen] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = 0.0

    def remaining(self) -> float:
        return self.deadline_s - (time.monotonic() - self._started)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1] + [sock]

    def track_process(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._processes.append(proc)
        if self.expired:
            _kill_group(proc)

    def kill_processes(self) -> None:
        """Kill the process group of every subprocess started inside this guard still running
        (whoever started it reaps it; `__exit__` waits for them)."""
        with self._lock:
            processes = list(self._processes)
        for proc in processes:
            _kill_group(proc)

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked on a dripping server
                except OSError:
                    pass
        if self.proxy is not None:
            self.proxy.close()
        self.kill_processes()

    def __enter__(self) -> "EgressGuard":
        self._started = time.monotonic()
        self._previous = getattr(_active, "guard", None)
        _active.guard = self
        self._timer = threading.Timer(self.deadline_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        _active.guard = self._previous
        if self._timer is not None:
            self._timer.cancel()
        self.kill_processes()  # none outlives the download
        for proc in self._processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proxy is not None:
            self.proxy.close()


# --------------------------------------------------------------------------- subprocesses
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
# ffmpeg and curl skip the proxy for hosts listed here: a worker's NO_PROXY=10.0.0.0/8 would let a
# playlist reach the internal network directly. All proxy settings come from the guard.
_BYPASS_VARS = ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "ftp_proxy", "FTP_PROXY")
_PR_SET_PDEATHSIG = 1
try:  # resolved before any fork: the child only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the worker that started it dies (even by SIGKILL)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): ffmpeg and its children
        except (ProcessLookupError, PermissionError):
            pass


def subprocess_env(guard: EgressGuard, env=None) -> dict:
    """The environment of a subprocess started inside `guard`: every proxy variable set to the
    guard's proxy (or to a closed port when it has none: no network at all), bypass lists removed."""
    env = dict(os.environ if env is None else env)
    for name in _BYPASS_VARS:
        env.pop(name, None)
    target = guard.proxy.url if guard.proxy is not None else "http://127.0.0.1:9"
    for name in _PROXY_VARS:
        env[name] = target
    return env


def guarded_popen(base: type) -> type:
    """A subclass of the Popen class `base` that, inside an EgressGuard, runs the child behind the
    guard's proxy, in a process group of its own, tied to its worker's life, and known to the guard
    (killed at the deadline and when the guard ends). Outside a guard it is `base` unchanged."""
    class GuardedPopen(base):
        def __init__(self, args, *rest, env=None, **kwargs):
            guard = current_guard()
            if guard is not None:
                env = subprocess_env(guard, env)
                kwargs["start_new_session"] = True
                kwargs.setdefault("preexec_fn", _die_with_parent)
            super().__init__(args, *rest, env=env, **kwargs)
            if guard is not None:
                guard.track_process(self)

    return GuardedPopen


_patched: set[str] = set()


def guard_subprocesses(package: str = "yt_dlp") -> None:
    """Every module of `package` that starts subprocesses through the package's `Popen` class
    (yt-dlp: the ffmpeg downloader, the post-processors) uses `guarded_popen` of it. Idempotent."""
    utils = sys.modules.get(f"{package}.utils")
    base = vars(utils).get("Popen") if utils is not None else None
    if base is None or package in _patched:
        return
    guarded = guarded_popen(base)
    for name, module in list(sys.modules.items()):  # vars(): no lazy module loads its children here
        if (name == package or name.startswith(package + ".")) and vars(module).get("Popen") is base:
            module.Popen = guarded
    _patched.add(package)
