"""The `transformers` engine: a local Hugging Face model directory, in process, batched.

A vision-language model (anything `AutoModelForImageTextToText` loads) takes
caption requests with frames; text requests go to the same model without
images, or to a causal LM. Requests are padded into batches of `batch_size`
and generated together. `prepare` (JPEG decoding, chat template, processor)
is CPU work the caption stage runs for the next batch while this one
generates.
"""
from __future__ import annotations

import io
import time

from vico_pipeline.errors import require
from vico_pipeline.engines.base import Engine, EngineError, Request, Result, engine_cpus


def chat(request: Request) -> list[dict]:
    """Chat messages in the processor's format: image placeholders, then the prompt."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    if request.images:
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        messages.append({"role": "user", "content": content})
    else:  # plain text: every chat template reads a string
        messages.append({"role": "user", "content": request.prompt})
    return messages


def finish_reason(tokens: list[int], completion: int, max_new_tokens: int, eos_token_id) -> str:
    """"length" when generation used every new token it was allowed and never wrote EOS (as an
    OpenAI server says it); else "stop"."""
    if completion >= max_new_tokens and eos_token_id not in tokens:
        return "length"
    return "stop"


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(self, section):
        super().__init__(section)
        torch = require("torch", "transformers")
        transformers = require("transformers", "transformers")
        if not section.model:
            raise EngineError("the transformers engine needs a model (a local model directory or hub name)")
        device = section.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.torch = torch
        if device == "cpu":  # as many threads as CPUs the worker holds: no oversubscription
            torch.set_num_threads(max(1, int(engine_cpus(section))))
        self.processor = transformers.AutoProcessor.from_pretrained(section.model)
        try:
            self.net = transformers.AutoModelForImageTextToText.from_pretrained(section.model, dtype="auto")
            self.vision = True
        except ValueError:  # a text-only model
            self.net = transformers.AutoModelForCausalLM.from_pretrained(section.model, dtype="auto")
            self.vision = False
        self.net.to(device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # generation appends on the right

    def count_tokens(self, request: Request) -> int:
        """Prompt tokens with the model's own chat template and tokenizer, as `prepare` builds them."""
        text = self.processor.apply_chat_template(chat(request), add_generation_prompt=True, tokenize=False)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_limit(self) -> int | None:
        config = getattr(self.net.config, "text_config", None) or self.net.config
        return getattr(config, "max_position_embeddings", None)

    def prepare(self, requests: list[Request]):
        """Decode frames and build padded model inputs, one chunk of `batch_size` at a time."""
        from PIL import Image

        chunks = []
        size = max(1, self.section.batch_size)
        for i in range(0, len(requests), size):
            batch = requests[i:i + size]
            if any(r.images for r in batch) and not self.vision:
                raise EngineError(f"{self.section.model} is a text model; it cannot caption frames")
            texts = [self.processor.apply_chat_template(chat(r), add_generation_prompt=True, tokenize=False)
                     for r in batch]
            if any(r.images for r in batch):
                images = [[Image.open(io.BytesIO(j)).convert("RGB") for j in r.images] for r in batch]
                inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
            else:
                inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            chunks.append((len(batch), inputs))
        return chunks

    def generate(self, prepared) -> list[Result]:
        torch = self.torch
        out: list[Result] = []
        for count, inputs in prepared:
            inputs = inputs.to(self.device)
            started = time.perf_counter()
            kwargs = {"max_new_tokens": self.section.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
            if self.section.temperature > 0:
                kwargs.update(do_sample=True, temperature=self.section.temperature)
            else:
                kwargs.update(do_sample=False)
            try:
                with torch.inference_mode():
                    generated = self.net.generate(**inputs, **kwargs)
            except Exception as exc:  # e.g. out of memory: the batch fails, the run goes on
                latency = time.perf_counter() - started
                out.extend(Result(error_type=type(exc).__name__, error=str(exc)[:500], latency_s=latency)
                           for _ in range(count))
                continue
            latency = time.perf_counter() - started
            prompt_len = inputs["input_ids"].shape[1]
            new = generated[:, prompt_len:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            stop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
            for row, text in enumerate(texts):
                tokens = new[row].tolist()
                completion = sum(1 for t in tokens if t not in stop)
                out.append(Result(text=text.strip(), prompt_tokens=int(inputs["attention_mask"][row].sum()),
                                  completion_tokens=completion, latency_s=latency,
                                  finish_reason=finish_reason(tokens, completion, self.section.max_tokens,
                                                              self.tokenizer.eos_token_id)))
        return out

    def close(self) -> None:
        del self.net
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
