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
"""
from __future__ import annotations

import ipaddress
import socket
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
        guard.policy.check_ip(address[0])
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

    def __init__(self, policy: EgressPolicy | None, deadline_s: float):
        self.policy = policy
        self.deadline_s = deadline_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = 0.0

    def remaining(self) -> float:
        return self.deadline_s - (time.monotonic() - self._started)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1] + [sock]

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked on a dripping server
                except OSError:
                    pass

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
