"""The context budget of the clue and summary steps: every prompt they send fits.

A prompt may hold at most `clues.context_tokens` (or the model's own context length,
when the engine knows it and it is smaller) less `clues.max_tokens` for the answer.
Prompts are counted by the engine (`Engine.count_tokens`): with the model's tokenizer
and chat template for `transformers` and `vllm`, with a stated upper estimate for
`openai` and the offline engines (engines/base.py `estimate_tokens`).

Long inputs are never cut: `pack` splits a list of lines (captions, summaries,
candidate clues) into consecutive runs that each fit, and a single line that cannot
fit even alone raises `TooLong`, which the stage turns into an error row that says so.
`send` refuses, with a `context_exceeded` result, any request over the budget, so no
code path can send one.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from vico_pipeline.engines.base import Request, Result

T = TypeVar("T")


class TooLong(Exception):
    """One piece of input (a caption line, a summary) does not fit a prompt on its own."""


class Budget:
    def __init__(self, engine, section):
        self.engine = engine
        self.configured = section.context_tokens
        self.model_limit = engine.context_limit()
        self.limit = min(self.configured, self.model_limit) if self.model_limit else self.configured
        self.answer = section.max_tokens
        # The largest prompt sent (tokens, as counted), for reports and benchmarks.
        self.largest = 0

    @property
    def room(self) -> int:
        """Tokens a prompt may have."""
        return self.limit - self.answer

    def describe(self) -> str:
        model = f", the model's {self.model_limit}" if self.model_limit and self.model_limit < self.configured else ""
        return (f"{self.room} prompt tokens (clues.context_tokens {self.configured}{model}, "
                f"less max_tokens {self.answer} for the answer)")

    def tokens(self, request: Request) -> int:
        return self.engine.count_tokens(request)

    def fits(self, request: Request) -> bool:
        return self.tokens(request) <= self.room

    def pack(self, items: Sequence[T], build: Callable[[list[T]], Request], name: Callable[[T], str]) -> list[list[T]]:
        """`items` in consecutive runs, each as long as fits in one prompt (`build(run)`).

        Raises TooLong, naming the item (`name(item)`), when one item does not fit alone."""
        runs: list[list[T]] = []
        current: list[T] = []
        for item in items:
            if self.fits(build(current + [item])):
                current.append(item)
                continue
            if current:
                runs.append(current)
            current = [item]
            if not self.fits(build(current)):
                raise TooLong(f"{name(item)} needs {self.tokens(build(current))} tokens in a prompt on its own, "
                              f"more than the budget of {self.describe()}; nothing is cut, so it cannot be used")
        if current:
            runs.append(current)
        return runs

    def retry(self, request: Request, note: str, why: str) -> Request:
        """`request` with `note` (formatted with `why`) appended: `why` shortened, or the note left
        out, when the note would not fit (it is our own diagnostic text, not the video's)."""
        for size in (300, 120, 40):
            again = Request(prompt=request.prompt + note.format(why=why[:size]), images=request.images,
                            system=request.system, json_schema=request.json_schema, data=request.data)
            if self.fits(again):
                return again
        return request

    def send(self, requests: list[Request]) -> list[Result]:
        """The engine's results; a request over the budget is never sent (a `context_exceeded` result)."""
        counts = [self.tokens(r) for r in requests]
        fitting = [i for i, n in enumerate(counts) if n <= self.room]
        answers = iter(self.engine([requests[i] for i in fitting]) if fitting else [])
        results = []
        for i, n in enumerate(counts):
            if n <= self.room:
                self.largest = max(self.largest, n)
                results.append(next(answers))
            else:
                results.append(Result(error_type="context_exceeded",
                                      error=f"a prompt of {n} tokens was not sent: over the budget of {self.describe()}"))
        return results
