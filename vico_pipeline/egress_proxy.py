"""A loopback HTTP proxy that applies the egress policy to what subprocesses fetch.

yt-dlp hands some downloads to an ffmpeg subprocess (live HLS, SAMPLE-AES, live DASH):
the socket checks of `egress.EgressGuard` live in our Python process and cannot see
its connections. Each download therefore starts one of these on 127.0.0.1 and every
subprocess it starts is pointed at it (`http_proxy`, `https_proxy`, `no_proxy`
cleared: see `egress.GuardedPopen`). The proxy does what a careful egress proxy
does (as Stripe's Smokescreen): it resolves the name itself, checks EVERY address
the name has against the policy, and connects to the checked address, so a DNS
answer cannot change between the check and the connection.

- `CONNECT host:port` (https through the proxy): a tunnel after the check.
- `GET http://host/path` (plain http): forwarded with `Connection: close`, one request
  per connection, so a kept-alive connection cannot carry a second request to
  another host past the check.
- A refused address is answered `403`, recorded in `refused`, and `on_refused` is
  called (the guard kills the subprocesses at once: a live playlist would otherwise
  be polled until the deadline). The download stage turns it into a
  `forbidden_address` row even when the subprocess skipped the segment and wrote a file.
- `close()` (the download's deadline, or its end) cuts every connection at once.
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from vico_pipeline.egress import EgressPolicy, ForbiddenAddress

_HEAD_LIMIT = 64 * 1024  # a request head larger than this is refused
_HEAD_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 30.0
_HOP_HEADERS = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "upgrade"}


class EgressProxy:
    def __init__(self, policy: EgressPolicy):
        self.policy = policy
        self.refused: list[str] = []  # the policy's message for every refused request
        self.on_refused = None  # called after a refusal (the guard kills the subprocesses: the download is lost)
        self.requests = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, name="vico-egress-proxy", daemon=True).start()

    # -- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting and cut every open connection (a blocked read on either side wakes up)."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = list(self._sockets), set()
        for sock in [self._server, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> "EgressProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.add(sock)
            return True

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    # -- serving --------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if self._keep(client):
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, rest = _read_head(client)
            method, target, version, headers = _parse_head(head)
            with self._lock:
                self.requests += 1
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                host, port = host.strip("[]"), int(port)
            else:
                parts = urlsplit(target)
                if parts.scheme != "http" or not parts.hostname:
                    _answer(client, 400, "only http:// URLs and CONNECT go through this proxy")
                    return
                host, port = parts.hostname, parts.port or 80
            try:
                upstream = self._connect(host, port)
            except ForbiddenAddress as exc:
                with self._lock:
                    self.refused.append(str(exc))
                _answer(client, 403, str(exc))
                if self.on_refused is not None:
                    self.on_refused()
                return
            except OSError as exc:
                _answer(client, 502, f"cannot connect to {host}:{port}: {exc}")
                return
            if not self._keep(upstream):
                return
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                parts = urlsplit(target)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                kept = [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]
                lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in kept] + ["Connection: close", "", ""]
                upstream.sendall("\r\n".join(lines).encode("latin-1") + rest)
            _relay(client, upstream)
        except (OSError, ValueError):
            pass  # a client that hung up or spoke nonsense: nothing to report
        finally:
            self._drop(client, *([upstream] if upstream is not None else []))

    def _connect(self, host: str, port: int) -> socket.socket:
        """Resolve once, check every address, connect to a checked one (never resolve again)."""
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        for info in infos:
            self.policy.check_ip(info[4][0])  # ForbiddenAddress if any address is internal
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(_CONNECT_TIMEOUT_S)
            try:
                sock.connect(address)
                sock.settimeout(None)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"no address for {host}")


def _read_head(client: socket.socket) -> tuple[bytes, bytes]:
    client.settimeout(_HEAD_TIMEOUT_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            raise ValueError("the client hung up before its request head ended")
        data += chunk
        if len(data) > _HEAD_LIMIT:
            raise ValueError("request head too large")
    client.settimeout(None)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return method.upper(), target, version, headers


def _answer(client: socket.socket, status: int, message: str) -> None:
    body = message.encode("utf-8", "replace")
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                   f"Connection: close\r\n\r\n".encode() + body)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until both sides are done (or `close()` cuts them)."""
    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
