"""Caption and text engines: one interface (`base.Engine`), several kinds.

`describe` and `template` need no model; `transformers` runs a local model in
process; `openai` calls any OpenAI-compatible endpoint; `vllm` runs vLLM's
offline engine inside our actor. See docs/engines.md.

Engines import only the low layers (egress, errors, text); never a stage, never Ray
(except `vllm_data`, which builds Ray Data's LLM processor).
"""
from vico_pipeline.engines.base import Engine, EngineError, Request, Result
from vico_pipeline.engines.registry import batch_processor, build_engine, engine_resources

__all__ = ["Engine", "EngineError", "Request", "Result", "batch_processor", "build_engine", "engine_resources"]
