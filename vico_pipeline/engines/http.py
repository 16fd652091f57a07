"""The one HTTP client of every model endpoint: the openai engine (captions, clues, questions, the
blind filter through its engine) and ASR. A request has a total deadline, from its first byte sent
to its last byte read, on a new connection and on a reused keep-alive one alike.

How: `with deadline(seconds):` marks the current thread (an `EgressGuard` without a policy), and
the client's network backend wraps every socket stream so that each read and write, and each
connect, first checks the time left: none left is a timeout at once; otherwise the operation may
block at most the time left. A server dripping headers or a body one byte a second cannot hold a
request past its deadline, because the check runs before every read, whichever connection it is on.
(The guard's timer also shuts the sockets it saw connect: that wakes a read blocked on them.)
"""
from __future__ import annotations

from contextlib import contextmanager

import openai

try:  # the HTTP client the installed openai package is built on
    import httpcore2 as httpcore
    import httpx2 as httpx
    _HttpClient = openai.DefaultHttpx2Client
except ImportError:
    import httpcore
    import httpx
    _HttpClient = openai.DefaultHttpxClient

from vico_pipeline.egress import EgressGuard, current_guard


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` shortened to the current request's time left; `error` when none is left."""
    guard = current_guard()
    if guard is None:
        return timeout
    left = guard.remaining()
    if left <= 0 or guard.expired:
        raise error(f"the request's deadline of {guard.deadline_s:g} s passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_tcp(host, port, _time_left(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _time_left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport with every socket stream under the current thread's deadline."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # httpx builds its connection pool without a backend argument; the pool keeps it here.
        self._pool._network_backend = _DeadlineBackend(self._pool._network_backend)


def openai_client(base_url: str | None, api_key: str, timeout_s: float) -> openai.OpenAI:
    """An OpenAI client on the deadline transport; our retry helper retries, so the client's is off."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s,
                         http_client=_HttpClient(transport=DeadlineTransport()))


@contextmanager
def deadline(seconds: float):
    """Every request this thread makes inside the block ends by `seconds` from now (the guard's
    `remaining()` and `expired` say how it stands)."""
    with EgressGuard(None, seconds) as guard:
        yield guard
