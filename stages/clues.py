"""Clues: a video's captions in, its salient distinct events out, each tied to one clip.

The text engine gets every caption of the video in time order, with clip ids
and time ranges, and answers JSON: events, each a clue and the clip it comes
from. Code then checks the answer, whatever engine wrote it: the clip id
exists, the clue is readable text with no timestamp, one clue per clip,
near-duplicates dropped, at most `clues.max_clues`. The order comes from the
clips' timestamps, never from the order the engine wrote. With fewer than
`clues.min_clues` valid clues the engine is asked again (`validation_retries`),
then the video gets an error row that says why, and no clue rows.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.caption import clock
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.parse import extract_json, readable
from vico_pipeline.engines.template import similarity

CLUES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("clue_index", pa.int32()),
    ("clip_id", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("text", pa.string()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])

CLUES_SCHEMA_JSON = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": {
        "type": "object",
        "properties": {"clip_id": {"type": "string"}, "clue": {"type": "string"}},
        "required": ["clip_id", "clue"]}}},
    "required": ["events"],
}

PROMPTS = {
    "v1": (
        "Below are the captions of consecutive clips of one video, in time order. Each line starts with "
        "the clip id and its time range.\n\n{captions}\n\n"
        "Pick the {max_clues} most salient events of the video, each clearly different from the others, "
        "and at most one per clip. Write each as a clue: one short sentence a viewer of the video would "
        "recognise, with no timestamp and no clip id in it.\n"
        'Answer with JSON only: {{"events": [{{"clip_id": "<a clip id from the list>", "clue": "<the clue>"}}]}}'
    ),
}
RETRY_NOTE = "\n\nYour previous answer could not be used ({why}). Answer again, with JSON only."

_TIMESTAMP = re.compile(r"\b\d{1,2}:\d{2}\b|\b\d+(\.\d+)?\s*(s|sec|secs|seconds)\b", re.I)


def clue_prompt(version: str, captions: list[dict], max_clues: int, max_chars: int) -> str:
    if version not in PROMPTS:
        raise ValueError(f"unknown clue prompt version {version!r}; known: {', '.join(PROMPTS)}")
    lines = []
    for c in captions:
        text = c["caption"][:max_chars]
        if c.get("key_event") and c["key_event"] not in text:
            text += f" Key event: {c['key_event']}"
        lines.append(f"[{c['clip_id']}] {clock(c['start_s'])}-{clock(c['end_s'])}: {text}")
    return PROMPTS[version].format(captions="\n".join(lines), max_clues=max_clues)


def validate(text: str, captions: dict[str, dict], cfg) -> tuple[list[dict], Counter]:
    """Valid clues (in time order) from an engine's answer, and a count of what was dropped and why."""
    dropped: Counter = Counter()
    data = extract_json(text)
    if isinstance(data, dict):
        events = data.get("events", data.get("clues"))
    else:
        events = data
    if not isinstance(events, list):
        dropped["answer is not JSON with an events list"] += 1
        return [], dropped
    valid: list[dict] = []
    used_clips: set[str] = set()
    for event in events:
        if not isinstance(event, dict):
            dropped["event is not an object"] += 1
            continue
        clip_id, clue = event.get("clip_id"), event.get("clue", event.get("text"))
        if not isinstance(clip_id, str) or clip_id not in captions:
            dropped["unknown clip id"] += 1
            continue
        if not isinstance(clue, str) or not readable(clue, min_words=3):
            dropped["clue is empty or not text"] += 1
            continue
        clue = " ".join(clue.split())
        if _TIMESTAMP.search(clue) or clip_id in clue:
            dropped["clue names a time or clip id"] += 1
            continue
        if clip_id in used_clips:
            dropped["second clue for one clip"] += 1
            continue
        if any(similarity(clue, v["text"]) >= cfg.duplicate_similarity for v in valid):
            dropped["near-duplicate clue"] += 1
            continue
        if len(valid) >= cfg.max_clues:
            dropped["over max_clues"] += 1
            continue
        used_clips.add(clip_id)
        caption = captions[clip_id]
        valid.append({"clip_id": clip_id, "start_s": caption["start_s"], "end_s": caption["end_s"], "text": clue})
    valid.sort(key=lambda v: (v["start_s"], v["clip_id"]))
    return valid, dropped


def why(dropped: Counter, text: str) -> str:
    reasons = ", ".join(f"{n} x {reason}" for reason, n in dropped.most_common()) or "no events"
    return f"{reasons}; answer began {text[:100]!r}"


class CluesStage(Stage):
    name = "clues"
    schema = CLUES_SCHEMA
    heavy = True

    def setup(self) -> None:
        self.engine = build_engine(self.config.clues, "clues")

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        vid, source = item["video_id"], item["source"]
        cfg = self.config.clues
        captions = sorted(item["caption"], key=lambda c: c["start_s"])
        by_clip = {c["clip_id"]: c for c in captions}
        if len(captions) < cfg.min_clues:
            yield ErrorRow(vid, source, "too_few_captions",
                           f"{len(captions)} captioned clips, {cfg.min_clues} clues needed (clues.min_clues)")
            return
        prompt = clue_prompt(cfg.prompt_version, captions, cfg.max_clues, cfg.max_caption_chars)
        data = [{"clip_id": c["clip_id"], "start_s": c["start_s"], "end_s": c["end_s"],
                 "caption": c["caption"], "key_event": c.get("key_event")} for c in captions]
        attempts, reasons = 0, []
        request = Request(prompt=prompt, json_schema=CLUES_SCHEMA_JSON, data=data)
        while True:
            attempts += 1
            result = self.engine([request])[0]
            if not result.ok:
                reasons.append(f"engine error {result.error_type}: {result.error}")
                valid = []
            else:
                valid, dropped = validate(result.text, by_clip, cfg)
                if len(valid) >= cfg.min_clues:
                    break
                reasons.append(f"{len(valid)} valid ({why(dropped, result.text)})")
            if attempts > cfg.validation_retries:
                yield ErrorRow(vid, source, "too_few_clues",
                               f"{cfg.min_clues} valid clues needed; after {attempts} attempt(s): " + " | ".join(reasons))
                return
            request = Request(prompt=prompt + RETRY_NOTE.format(why=reasons[-1][:300]),
                              json_schema=CLUES_SCHEMA_JSON, data=data)
        for index, clue in enumerate(valid):
            yield {"video_id": vid, "clue_index": index, **clue, "engine": self.engine.kind,
                   "model": self.engine.model, "prompt_version": cfg.prompt_version}
