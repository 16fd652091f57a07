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


def build_engine(section, role: str) -> Engine:
    """The engine a config section names; `role` is 'caption' or 'clues'."""
    kind = section.engine
    if kind == "describe":
        if role != "caption":
            raise EngineError("the describe engine writes captions only; clues.engine: template, transformers, openai or vllm")
        from vico_pipeline.engines.describe import DescribeEngine
        return DescribeEngine(section)
    if kind == "template":
        if role != "clues":
            raise EngineError("the template engine picks clues only; caption.engine: describe, transformers, openai or vllm")
        from vico_pipeline.engines.template import TemplateEngine
        return TemplateEngine(section)
    if kind == "openai":
        from vico_pipeline.engines.openai import OpenAIEngine
        return OpenAIEngine(section)
    if kind == "transformers":
        from vico_pipeline.engines.transformers import TransformersEngine
        return TransformersEngine(section)
    if kind == "vllm":
        from vico_pipeline.engines.vllm import VLLMEngine
        return VLLMEngine(section)
    raise EngineError(f"unknown engine '{kind}'")


MODEL_ENGINES = ("transformers", "vllm")


def engine_resources(section) -> dict:
    """Ray resources for a stage driven by `section`'s engine (see registry.py)."""
    if section.engine in MODEL_ENGINES or section.engine == "openai":
        # Model engines live in actors: loaded once, reused for every video. The openai engine
        # too, so in-flight requests are bounded by replicas x concurrency.
        gpus = section.num_gpus
        if section.engine == "vllm" and not gpus:
            gpus = section.tensor_parallel_size
        replicas = section.replicas
        grow_to = getattr(section, "max_replicas", None)  # an autoscaling pool when set
        concurrency = (replicas, grow_to) if grow_to and grow_to > replicas else replicas
        return {"num_cpus": section.num_cpus, "num_gpus": gpus, "concurrency": concurrency, "actor": True}
    return {"num_cpus": section.num_cpus, "num_gpus": 0, "concurrency": None, "actor": False}
