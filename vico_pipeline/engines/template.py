"""The `template` clue engine: distinct events picked from the captions, no model.

It also writes the stand-in summaries (`Request.data` with `task: summary`): each
says what it is ("Stand-in summary (template engine, no model) ...") and lists
distinct key events of the level below, in time order.

It reads the captions of one video (`Request.data`: clips in time order with
their caption and key event), walks them in time order, and proposes a clip's
key event when no other clip's key event is a near-duplicate of it (word and
word-pair overlap, `similarity`) and its own caption fits it better than any
other clip's: a scene that spans two clips gives no clue, since a question
about it would have two right answers. When more than `clues.max_clues` remain
it keeps an even spread over the video. It answers in the same JSON an LLM is
asked for, so the same gates (stages/clues.py) check both.
"""
from __future__ import annotations

import json
import time

from vico_pipeline.engines.base import Engine, Request, Result
from vico_pipeline.text import lexically_grounded, similarity


def pick_distinct(texts: list[str], threshold: float) -> list[int]:
    """Indices of texts kept in order, each below `threshold` similarity to every other text."""
    return [i for i, text in enumerate(texts)
            if text.strip() and all(similarity(text, other) < threshold for j, other in enumerate(texts) if j != i)]


def spread(indices: list[int], k: int) -> list[int]:
    """At most `k` of `indices`, evenly spread, first and last kept."""
    if len(indices) <= k:
        return indices
    if k == 1:
        return indices[:1]
    return [indices[round(i * (len(indices) - 1) / (k - 1))] for i in range(k)]


class TemplateEngine(Engine):
    kind = "template"

    def __init__(self, section):
        super().__init__(section)
        self.model = "template-v1"
        self.threshold = getattr(section, "duplicate_similarity", 0.85)
        self.max_clues = getattr(section, "max_clues", 12)

    @staticmethod
    def grounded(index: int, clips: list[dict], texts: list[str]) -> bool:
        captions = {c["clip_id"]: c for c in clips}
        return lexically_grounded(texts[index], clips[index]["clip_id"], captions)

    def generate(self, prepared: list[Request]) -> list[Result]:
        out = []
        for request in prepared:
            started = time.perf_counter()
            data = request.data if isinstance(request.data, dict) else {"task": "clues", "clips": request.data or []}
            answer = self.summary(data) if data.get("task") == "summary" else self.clues(data)
            out.append(Result(text=json.dumps(answer), latency_s=time.perf_counter() - started, finish_reason="stop"))
        return out

    def clues(self, data: dict) -> dict:
        """Up to `up_to` distinct, grounded key events, evenly spread."""
        clips = data.get("clips") or []
        texts = [c.get("key_event") or c.get("caption") or "" for c in clips]
        chosen = spread([i for i in pick_distinct(texts, self.threshold) if self.grounded(i, clips, texts)],
                        data.get("up_to") or self.max_clues)
        return {"events": [{"clip_id": clips[i]["clip_id"], "clue": texts[i][:1].upper() + texts[i][1:]}
                           for i in chosen]}

    @staticmethod
    def summary(data: dict) -> dict:
        """A stand-in summary that says what it is: distinct events of the pieces, in time order."""
        pieces = data.get("pieces") or []
        events = [e for piece in pieces for e in piece_events(piece)]
        kept = [events[i] for i in spread(pick_distinct(events, SUMMARY_SIMILARITY), SUMMARY_EVENTS)] or events[:1]
        what = ("clip caption", "clip captions") if data.get("level") == "segment" else ("part summary", "part summaries")
        text = "; ".join(e.rstrip(". ") for e in kept)
        count = f"{len(pieces)} {what[len(pieces) != 1]}"
        return {"summary": f"{STAND_IN} of {count}: {text[:1].upper() + text[1:]}."}


STAND_IN = "Stand-in summary (template engine, no model)"
SUMMARY_EVENTS = 5  # events a stand-in summary lists at most
SUMMARY_SIMILARITY = 0.6  # stricter than for clues: a summary names clearly different events


def piece_events(piece: dict) -> list[str]:
    """A caption's key event, or the events a stand-in summary listed, or a summary's first sentence."""
    if piece.get("key_event"):
        return [piece["key_event"]]
    text = piece.get("text") or ""
    if text.startswith(STAND_IN) and ": " in text:
        return [e.strip().rstrip(".") for e in text.split(": ", 1)[1].split("; ") if e.strip()]
    from vico_pipeline.engines.parse import first_sentence

    return [first_sentence(text)] if text.strip() else []
