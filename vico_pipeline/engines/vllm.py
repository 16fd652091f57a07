"""The `vllm` engine: vLLM's offline `LLM` inside our stage actor, on the actor's GPUs.

This is the `actor` runner (the default): the caption and clue stages are
actors that build `vllm.LLM` once (in `setup`) and hand it a whole video's
clips per call; vLLM's continuous batching fills the GPU from that list, and
each video's part file is written as soon as its clips are done. The other
runner, `caption.runner: ray_data_llm` (engines/vllm_data.py), sends one
request row per clip through Ray Data's LLM processor instead. See
docs/engines.md for the trade-off and for what was and was not run.

`tensor_parallel_size` > 1 uses vLLM's multiprocessing executor inside the
actor, which holds that many GPUs (`engine_resources`).
"""
from __future__ import annotations

import time

from vico_pipeline.errors import require
from vico_pipeline.engines.base import Engine, EngineError, Request, Result
from vico_pipeline.engines.openai import chat_messages


def engine_kwargs(section, max_images: int) -> dict:
    """vLLM engine arguments from a config section, for both runners: all but the model
    and the executor (each runner picks its own), before `engine_args`."""
    if not section.model:
        raise EngineError("the vllm engine needs a model (hub name or local directory)")
    kwargs = {"tensor_parallel_size": section.tensor_parallel_size,
              "gpu_memory_utilization": section.gpu_memory_utilization, "trust_remote_code": False}
    if section.max_model_len:
        kwargs["max_model_len"] = section.max_model_len
    if max_images:
        kwargs["limit_mm_per_prompt"] = {"image": max_images}
    return kwargs


def llm_kwargs(section, max_images: int) -> dict:
    """Arguments of `vllm.LLM(...)` from a config section."""
    kwargs = {"model": section.model, **engine_kwargs(section, max_images)}
    if section.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"  # GPUs of this actor, no nested placement group
    kwargs.update(section.engine_args)
    return kwargs


def sampling_kwargs(section) -> dict:
    return {"max_tokens": section.max_tokens, "temperature": section.temperature}


def structured(vllm, schema: dict) -> dict:
    """Guided JSON decoding arguments for SamplingParams, across vLLM versions."""
    params = getattr(vllm, "sampling_params", None)
    if params is not None and hasattr(params, "StructuredOutputsParams"):  # vLLM >= 0.11
        return {"structured_outputs": params.StructuredOutputsParams(json=schema)}
    if params is not None and hasattr(params, "GuidedDecodingParams"):
        return {"guided_decoding": params.GuidedDecodingParams(json=schema)}
    return {}


def parse_output(output, latency: float) -> Result:
    """One `vllm.RequestOutput` to a Result."""
    if not output.outputs:
        return Result(error_type="empty_response", error="vLLM returned no completion", latency_s=latency)
    completion = output.outputs[0]
    return Result(text=(completion.text or "").strip(),
                  prompt_tokens=len(output.prompt_token_ids or []),
                  completion_tokens=len(completion.token_ids or []), latency_s=latency,
                  finish_reason=getattr(completion, "finish_reason", None))


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, section, max_images: int | None = None):
        super().__init__(section)
        self.vllm = require("vllm", "vllm")
        if max_images is None:
            max_images = getattr(section, "frames_per_clip", 0)
        self.llm = self.vllm.LLM(**llm_kwargs(section, max_images))

    def count_tokens(self, request: Request) -> int:
        """Prompt tokens with the served model's tokenizer and chat template (text requests)."""
        tokenizer = self.llm.get_tokenizer()
        ids = tokenizer.apply_chat_template(chat_messages(request), add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) else ids)

    def context_limit(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:  # another vLLM layout: the configured length, if any
            return self.section.max_model_len

    def sampling_params(self, request: Request):
        kwargs = sampling_kwargs(self.section)
        if self.section.structured_output and request.json_schema is not None:
            kwargs.update(structured(self.vllm, request.json_schema))
        return self.vllm.SamplingParams(**kwargs)

    def generate(self, prepared: list[Request]) -> list[Result]:
        if not prepared:
            return []
        conversations = [chat_messages(r) for r in prepared]
        params = [self.sampling_params(r) for r in prepared]
        started = time.perf_counter()
        try:
            outputs = self.llm.chat(conversations, params, use_tqdm=False)
        except Exception as exc:  # the batch fails, the run goes on
            latency = time.perf_counter() - started
            return [Result(error_type=type(exc).__name__, error=str(exc)[:500], latency_s=latency) for _ in prepared]
        latency = time.perf_counter() - started
        return [parse_output(o, latency) for o in outputs]
