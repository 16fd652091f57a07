"""The `openai` engine: any OpenAI-compatible chat endpoint (vLLM or SGLang servers, hosted APIs).

Requests of a batch go out concurrently, at most `concurrency` at once; each
has a timeout (`timeout_s`, per read) and is retried with backoff (`retries`,
`backoff_s`) on 429, 5xx, timeouts and dropped connections; other errors
(400, 401, 404) fail that request at once. A request, its retries and waits
included, has a total deadline (`deadline_s`): when it passes, the request's
client enforces it on every read and write (vico_pipeline/engines/http.py), so a
server dripping its headers or its answer byte by byte cannot hold a worker, on a
new connection or a reused one. The API key is read from the
environment variable `api_key_env` names; it is never logged or written.
"""
from __future__ import annotations

import base64
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from vico_pipeline.engines.base import Engine, EngineError, Request, Result
from vico_pipeline.engines.http import deadline, openai_client
from vico_pipeline.engines.retry import RetriesExhausted, call_with_retries

log = logging.getLogger(__name__)


def image_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def chat_messages(request: Request) -> list[dict]:
    """OpenAI chat messages: system text, then the frames as image parts, then the prompt."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    if request.images:
        content = [{"type": "image_url", "image_url": {"url": image_url(jpg)}} for jpg in request.images]
        content.append({"type": "text", "text": request.prompt})
        messages.append({"role": "user", "content": content})
    else:
        messages.append({"role": "user", "content": request.prompt})
    return messages


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection errors are worth another try; the rest are not."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def error_type(exc: BaseException) -> str:
    if isinstance(exc, RetriesExhausted):
        exc = exc.last
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 400 and "context length" in str(exc).lower():
            return "context_exceeded"  # vLLM's "This model's maximum context length is N tokens..."
        return "rate_limited" if exc.status_code == 429 else f"http_{exc.status_code}"
    return type(exc).__name__


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, section):
        super().__init__(section)
        if not section.base_url and not section.api_key_env:
            raise EngineError("the openai engine needs base_url (a server) or api_key_env (a hosted API)")
        if not section.model:
            raise EngineError("the openai engine needs a model name")
        api_key = "EMPTY"  # local servers accept any key
        if section.api_key_env:
            api_key = os.environ.get(section.api_key_env)
            if not api_key:
                raise EngineError(f"environment variable {section.api_key_env} (api_key_env) is not set")
        # Our own retry helper does the retrying, so the client's is off.
        self._secret = api_key if section.api_key_env else None
        self.client = openai_client(section.base_url, api_key, section.timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=max(1, section.concurrency), thread_name_prefix="vico-openai")
        self.sleep = time.sleep  # tests may count the waits
        self.retried = 0  # retries made, for stats and tests

    def _kwargs(self, request: Request) -> dict:
        kwargs = {"model": self.model, "messages": chat_messages(request),
                  "max_tokens": self.section.max_tokens, "temperature": self.section.temperature,
                  "timeout": self.section.timeout_s}
        if self.section.structured_output and request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    def _one(self, request: Request) -> Result:
        kwargs = self._kwargs(request)
        started = time.perf_counter()
        deadline_s = self.section.deadline_s

        def on_retry(attempt, exc, delay):
            self.retried += 1
            log.warning("openai engine: %s, retry %d in %.1f s", error_type(exc), attempt, delay)

        with deadline(deadline_s) as guard:  # one total deadline: every attempt, read and wait
            def attempt():
                # No read may outlast the deadline either.
                return self.client.chat.completions.create(**{**kwargs, "timeout": max(0.001, min(
                    self.section.timeout_s, guard.remaining()))})

            def sleep(delay):
                if delay >= guard.remaining():
                    guard.expired = True
                    raise TimeoutError("no time left for another try")
                self.sleep(delay)

            try:
                response = call_with_retries(attempt, self.section.retries, self.section.backoff_s,
                                             lambda exc: is_retryable(exc) and not guard.expired,
                                             sleep=sleep, on_retry=on_retry)
            except Exception as exc:
                if guard.expired or guard.remaining() <= 0:
                    return Result(error_type="timeout", error=f"the request took over deadline_s={deadline_s:g} s",
                                  latency_s=time.perf_counter() - started)
                return Result(error_type=error_type(exc), error=_one_line(exc, self._secret),
                              latency_s=time.perf_counter() - started)
        latency = time.perf_counter() - started
        if not response.choices:
            return Result(error_type="empty_response", error="the server returned no choices", latency_s=latency)
        usage = response.usage
        return Result(text=response.choices[0].message.content or "",
                      prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                      latency_s=latency, finish_reason=response.choices[0].finish_reason)

    def generate(self, prepared: list[Request]) -> list[Result]:
        return list(self.pool.map(self._one, prepared))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()


def _one_line(exc: BaseException, secret: str | None = None) -> str:
    """The error in one line, the API key masked (some servers echo it back)."""
    text = " ".join(str(exc).split())
    if secret:
        text = text.replace(secret, "***")
    return text[:500]
