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


# The estimate for engines without a tokenizer: above what byte-level BPE tokenizers (GPT-2,
# Llama 3, Qwen2) count for English captions with clip ids and times, which average 4+ bytes a
# token. Digits are often one token each, hence one more per digit; a chat template adds a few
# tokens a message.
BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 16


def estimate_tokens(request: Request) -> int:
    """ceil(UTF-8 bytes / 3) + 1 per digit + 16 per message, for the prompt and system text."""
    texts = [request.prompt] + ([request.system] if request.system else [])
    total = 0
    for text in texts:
        total += -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN) + sum(ch.isdigit() for ch in text)
        total += MESSAGE_OVERHEAD_TOKENS
    return total


class EngineError(Exception):
    """An engine cannot be built (bad config, missing key or model)."""


class Engine:
    """Subclasses set `kind` and implement `generate`."""

    kind: str = ""

    def __init__(self, section):
        self.section = section
        self.model = section.model or ""

    def count_tokens(self, request: Request) -> int:
        """Prompt tokens of a text request as the model will see them (chat template included).

        Engines with a tokenizer count with it; the others (`openai`, the offline engines) use
        `estimate_tokens`, a stated upper estimate (docs/engines.md "Context budget")."""
        return estimate_tokens(request)

    def context_limit(self) -> int | None:
        """The model's own context length where the engine knows it (prompt + answer); else None."""
        return None

    def prepare(self, requests: list[Request]) -> Any:
        """CPU-side work for a batch (image decoding, tokenising); run ahead of `generate`."""
        return requests

    def generate(self, prepared: Any) -> list[Result]:
        raise NotImplementedError

    def __call__(self, requests: list[Request]) -> list[Result]:
        return self.generate(self.prepare(requests))

    def close(self) -> None:
        """Free what the engine holds (servers' connections, GPU memory)."""


MODEL_ENGINES = ("transformers", "vllm")
# An endpoint engine's actor waits on the network: a small CPU share leaves the light stages room.
ENDPOINT_CPUS = 0.25


def engine_cpus(section) -> float:
    """CPUs a worker of `section`'s engine holds: `num_cpus` when set, else by the engine's kind."""
    if section.num_cpus is not None:
        return section.num_cpus
    return ENDPOINT_CPUS if section.engine == "openai" else 1.0
