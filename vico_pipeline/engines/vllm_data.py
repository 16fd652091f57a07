"""The `vllm` engine on Ray Data's LLM API (`caption.runner: ray_data_llm`).

`ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))` maps a Ray
Dataset of request rows, one per clip, to answer rows: CPU actor pools turn
the OpenAI-style messages into the model's inputs (PrepareMultimodalStage
decodes the frames' data URLs for vLLM, then chat template and tokenizer), a
pool of vLLM replicas generates (`tensor_parallel_size` GPUs each; beyond
one GPU Ray places the workers in a placement group), and a CPU pool
detokenizes. This module turns our config and requests into that: the
processor config, the request columns (`preprocess`) and the answers
(`postprocess`, `answer`, `to_result`). Which clips are asked, and how the
answers become each video's caption part, is vico_pipeline/pipeline.py.

Written against Ray 2.60 (the version pyproject.toml pins). vLLM cannot be
installed on the development machines: the processor is built in the tests,
never run (docs/engines.md).
"""
from __future__ import annotations

import json
from functools import partial

from vico_pipeline.engines.base import EngineError, Request, Result
from vico_pipeline.engines.openai import chat_messages
from vico_pipeline.engines.vllm import engine_kwargs, sampling_kwargs

# What `postprocess` adds to the columns a request row carries: a Result's fields
# ("" for no error, so the column keeps one type).
RESULT_COLUMNS = ("text", "prompt_tokens", "completion_tokens", "latency_s", "error_type", "error", "finish_reason")


def gpus_per_replica(section) -> int:
    """GPUs of one vLLM replica: Ray Data's LLM stage gives it tensor x pipeline parallel size."""
    return section.tensor_parallel_size * int(section.engine_args.get("pipeline_parallel_size", 1))


def processor_config(section, max_images: int):
    """`ray.data.llm.vLLMEngineProcessorConfig` from a config section (engine vllm)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    kwargs = {**engine_kwargs(section, max_images), **section.engine_args}
    gpus = gpus_per_replica(section)
    if section.num_gpus and section.num_gpus != gpus:
        raise EngineError(f"runner ray_data_llm gives each vLLM replica tensor_parallel_size x "
                          f"pipeline_parallel_size = {gpus} GPUs; num_gpus {section.num_gpus:g} differs (leave it 0)")
    replicas = section.replicas
    grow_to = max(replicas, section.max_replicas or replicas)
    return vLLMEngineProcessorConfig(
        model_source=section.model,
        engine_kwargs=kwargs,
        # A pair: (n, n) is a fixed pool of n replicas, what `replicas` means for the actor
        # runner (Ray reads a plain n as an autoscaling pool from 1 to n).
        concurrency=(replicas, grow_to),
        batch_size=max(1, section.batch_size),
        accelerator_type=section.accelerator_type,
        # A failed request comes back as a row with `__inference_error__`, not a failed job.
        should_continue_on_error=True,
        # Images as data URLs in the messages, decoded on CPU workers ahead of the GPUs.
        prepare_multimodal_stage={"enabled": bool(max_images)},
    )


def sampling_params(section, json_schema: dict | None) -> dict:
    """The `sampling_params` column: vLLM SamplingParams arguments, guided JSON where asked."""
    params = sampling_kwargs(section)
    if section.structured_output and json_schema is not None:
        # Ray 2.60's vLLM stage builds vllm.sampling_params.StructuredOutputsParams(**this); the
        # schema goes as a JSON string, which the dataset's columns keep as it is.
        params["structured_outputs"] = {"json": json.dumps(json_schema)}
    return params


def preprocess(row: dict, section, to_request, drop: tuple[str, ...] = ()) -> dict:
    """A request row -> the columns the processor reads: OpenAI chat messages (frames as
    data URLs, then the prompt) and sampling params. Ray keeps every input column up
    to `postprocess`; `drop` names those to empty (the frames, once in the messages)."""
    request: Request = to_request(row)
    return {"messages": chat_messages(request), "sampling_params": sampling_params(section, request.json_schema),
            **{name: None for name in drop}}


def postprocess(row: dict, carry: tuple[str, ...], max_tokens: int | None = None) -> dict:
    """An answer row -> the `carry` columns plus RESULT_COLUMNS. Also right for a failed
    request's row (`__inference_error__` set), which Ray passes around postprocess: see `answer`.
    Ray 2.60's rows carry no finish reason: an answer that used all `max_tokens` counts as cut."""
    out = {name: row.get(name) for name in carry}
    failure = row.get("__inference_error__") or ""
    if failure:
        kind, _, message = failure.partition(": ")  # Ray writes "ExceptionType: message"
        out.update(text="", prompt_tokens=0, completion_tokens=0, latency_s=0.0,
                   error_type=kind if kind.isidentifier() else "inference_error", error=(message or failure)[:500],
                   finish_reason="")
        return out
    latency = row.get("time_taken_llm") or 0.0  # -1 when unknown
    generated = int(row.get("num_generated_tokens") or 0)
    out.update(text=(row.get("generated_text") or "").strip(), prompt_tokens=int(row.get("num_input_tokens") or 0),
               completion_tokens=generated, latency_s=max(0.0, float(latency)), error_type="", error="",
               finish_reason="length" if max_tokens and generated >= max_tokens else "stop")
    return out


def answer(row: dict, carry: tuple[str, ...]) -> dict:
    """A row out of the processor -> exactly the carry and result columns. Ray 2.60 hands a
    failed request's row past `postprocess`, whole; it is answered here."""
    if row.get("__inference_error__"):
        row = postprocess(row, carry)
    return {name: row.get(name) for name in (*carry, *RESULT_COLUMNS)}


def to_result(row: dict) -> Result:
    return Result(text=row["text"] or "", prompt_tokens=int(row["prompt_tokens"] or 0),
                  completion_tokens=int(row["completion_tokens"] or 0), latency_s=float(row["latency_s"] or 0.0),
                  error_type=row["error_type"] or None, error=row["error"] or None,
                  finish_reason=row.get("finish_reason") or None)


def build(section, max_images: int, to_request, carry: tuple[str, ...], drop: tuple[str, ...] = ()):
    """The processor: request rows in, answer rows out (run `answer` on them after it)."""
    from ray.data.llm import build_processor

    return build_processor(processor_config(section, max_images),
                           preprocess=partial(preprocess, section=section, to_request=to_request, drop=drop),
                           postprocess=partial(postprocess, carry=carry, max_tokens=section.max_tokens))
