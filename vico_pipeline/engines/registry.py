"""Which engine class a config section names, and the Ray resources its stage needs.

Kept apart from `base.py` so the interface module imports no engine.
"""
from __future__ import annotations

import os

from vico_pipeline.engines.base import MODEL_ENGINES, Engine, EngineError, engine_cpus


def build_engine(section, role: str) -> Engine:
    """The engine a config section names; `role` is 'caption', 'clues' or 'blind'."""
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
    if kind == "rules":
        if role != "blind":
            raise EngineError("the rules engine answers blind questions only; it writes no captions or clues")
        from vico_pipeline.engines.rules import RulesEngine
        return RulesEngine(section)
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


def batch_processor(kind: str):
    """The module that runs engine `kind` as a Ray Data batch processor (`runner: ray_data_llm`):
    it has `build(section, max_images, to_request, carry, drop)` (a Dataset -> Dataset callable),
    `answer(row, carry)` (an answer row) and `to_result(row)` (its Result)."""
    if kind == "vllm":
        from vico_pipeline.engines import vllm_data
        return vllm_data
    raise EngineError(f"the {kind} engine has no batch processor; runner ray_data_llm runs vllm only")


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
        return {"num_cpus": engine_cpus(section), "num_gpus": gpus, "concurrency": concurrency, "actor": True}
    return {"num_cpus": engine_cpus(section), "num_gpus": 0, "concurrency": None, "actor": False}


def validate_engine(section, role: str) -> None:
    """What can be checked in the driver, before Ray starts, so a user's mistake is one line (exit 2)
    and not a worker's traceback: the engine fits the role, a model or endpoint is named, and the
    API key's environment variable is set."""
    kind = section.engine
    fits = {"describe": ("caption",), "template": ("clues",), "rules": ("blind",)}
    if kind in fits and role not in fits[kind]:
        raise EngineError(f"{role}.engine: the {kind} engine is for {' and '.join(fits[kind])} only")
    if kind in ("openai", "transformers", "vllm") and not section.model:
        raise EngineError(f"{role}.model: the {kind} engine needs a model name")
    if kind == "openai":
        if not section.base_url and not section.api_key_env:
            raise EngineError(f"{role}: the openai engine needs base_url (a server) or api_key_env (a hosted API)")
        if section.api_key_env and not os.environ.get(section.api_key_env):
            raise EngineError(f"{role}.api_key_env: environment variable {section.api_key_env} is not set")
