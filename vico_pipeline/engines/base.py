"""One engine interface for every kind: requests in, results out, in batches.

A caption request carries a clip's frames (JPEG bytes) and a prompt; a text
request only a prompt. `data` carries the same input as structured data for
the offline engines (`describe`, `template`), which read it instead of the
prompt. An engine is built once per worker (`build_engine` in a stage's
`setup`), answers a whole batch in one call, and reports tokens and latency
for every request. A request that fails comes back as a result with `error`
set; one bad request never fails the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Request:
    prompt: str
    images: list[bytes] = field(default_factory=list)
    system: Optional[str] = None
    # A JSON schema the answer should follow, for engines with structured output.
    json_schema: Optional[dict] = None
    # The same input as data, for engines that do not read prompts.
    data: Any = None


@dataclass
class Result:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Wall time from sending the request (or its batch) to its answer.
    latency_s: float = 0.0
    error_type: Optional[str] = None
    error: Optional[str] = None
    # Why generation stopped: "stop" (end of answer) or "length" (cut at max_tokens); None when unknown.
    finish_reason: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


class EngineError(Exception):
    """An engine cannot be built (bad config, missing key or model)."""


class Engine:
    """Subclasses set `kind` and implement `generate`."""

    kind: str = ""

    def __init__(self, section):
        self.section = section
        self.model = section.model or ""

    def prepare(self, requests: list[Request]) -> Any:
        """CPU-side work for a batch (image decoding, tokenising); run ahead of `generate`."""
        return requests

    def generate(self, prepared: Any) -> list[Result]:
        raise NotImplementedError

    def __call__(self, requests: list[Request]) -> list[Result]:
        return self.generate(self.prepare(requests))

    def close(self) -> None:
        """Free what the engine holds (servers' connections, GPU memory)."""
