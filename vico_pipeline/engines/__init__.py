"""Caption and text engines: one interface (`base.Engine`), several kinds.

`describe` and `template` need no model; `transformers` runs a local model in
process; `openai` calls any OpenAI-compatible endpoint; `vllm` runs vLLM's
offline engine inside our actor. See docs/engines.md.
"""
from vico_pipeline.engines.base import Engine, EngineError, Request, Result
from vico_pipeline.engines.registry import build_engine, engine_resources

__all__ = ["Engine", "EngineError", "Request", "Result", "build_engine", "engine_resources"]
