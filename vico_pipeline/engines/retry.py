"""The one retry helper: exponential backoff with jitter on errors worth retrying."""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException):
        super().__init__(f"failed after {attempts} attempts: {type(last).__name__}: {last}")
        self.attempts = attempts
        self.last = last


def backoff_delay(attempt: int, base_s: float, cap_s: float = 30.0, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): base * 2^(attempt-1), full jitter in [50%, 100%]."""
    delay = min(cap_s, base_s * (2 ** (attempt - 1)))
    return delay * (0.5 + 0.5 * (rng or random).random())


def call_with_retries(fn: Callable[[], T], retries: int, backoff_s: float,
                      retryable: Callable[[BaseException], bool],
                      sleep: Callable[[float], None] = time.sleep,
                      on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """Call `fn`; on a retryable error wait and try again, at most `retries` more times.

    A non-retryable error is raised at once; when the retries run out,
    `RetriesExhausted` carries the last error.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            attempt += 1
            if attempt > retries:
                raise RetriesExhausted(attempt, exc) from exc
            delay = backoff_delay(attempt, backoff_s)
            if on_retry:
                on_retry(attempt, exc, delay)
            sleep(delay)
