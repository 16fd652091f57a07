"""Clues: a video's captions in, its salient distinct events out, each tied to one clip.

The text engine gets every caption of the video in time order, with clip ids
and time ranges, and answers JSON: events, each a clue and the clip it comes
from. Code then checks every event, whatever engine wrote it (the clue gates,
vico.md "Quality gates"):

    unknown_clip   its clip id is not a clip of the video
    unreadable     empty, or not text
    gives_time     digits, a timestamp, a clip id or a relative-time word (TIME_WORDS)
    ungrounded     better supported by another clip's caption than by its own
                   (word overlap; `clues.grounding: llm` asks the clues engine instead)
    not_unique     a near-duplicate of a kept clue or of another clip's key event
    same_clip      a second clue for one clip
    over_max_clues more than `clues.max_clues`

The order comes from the clips' timestamps, never from the order the engine
wrote. With fewer than `clues.min_clues` kept clues the engine is asked again
(`validation_retries`), then the video gets an error row that says why, and no
clue rows. Every candidate of every attempt, kept or not, is a row of the
`clue_candidates` table, so a prompt can be debugged from data.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage, rows_to_table
from stages.caption import clock
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.parse import extract_json, readable
from vico_pipeline.engines.template import features, similarity

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

# Every event an engine proposed, kept or not, and why not (contract.md `clue_candidates`).
CLUE_CANDIDATES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("clip_id", pa.string()),
    ("text", pa.string()),
    ("kept", pa.bool_()),
    # "" when kept; else one of REJECT_REASONS.
    ("reject_reason", pa.string()),
    # 1 for the first answer, 2 for the answer to the first re-ask, ...
    ("attempt", pa.int32()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])
REJECT_REASONS = ("unknown_clip", "unreadable", "gives_time", "ungrounded", "not_unique", "same_clip",
                  "over_max_clues", "answer_too_few")

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
    # v2: says what the clue gates reject, so fewer candidates are wasted.
    "v2": (
        "Below are the captions of consecutive clips of one video, in time order. Each line starts with "
        "the clip id and its time range.\n\n{captions}\n\n"
        "Pick the {max_clues} most salient events of the video, each clearly different from the others, "
        "and at most one per clip. Write each as a clue: one short sentence a viewer of the video would "
        "recognise, that fits its own clip's caption better than any other clip's, with no timestamp, no "
        "clip id, no number and no word that tells when it happens (first, then, later, finally, again, at "
        "the end, ...).\n"
        'Answer with JSON only: {{"events": [{{"clip_id": "<a clip id from the list>", "clue": "<the clue>"}}]}}'
    ),
}
RETRY_NOTE = "\n\nYour previous answer could not be used ({why}). Answer again, with JSON only."

# Words that place an event relative to others or in the video: a clue holding one gives the
# order away (a question about "the final scene" needs no video). The one list; tests/test_clues.py.
TIME_WORDS = (
    "first", "firstly", "second", "secondly", "third", "last", "lastly", "final", "finally", "then", "next",
    "later", "afterwards", "afterward", "after", "before", "earlier", "previously", "initially", "eventually",
    "subsequently", "meanwhile", "again", "once more", "beginning", "ending", "at the start", "at the end",
    "in the end", "at last", "by now", "until now", "so far", "soon", "opening scene", "closing scene",
)
_GIVES_TIME = re.compile(r"\d|\b(" + "|".join(re.escape(w).replace("\\ ", r"\s+") for w in TIME_WORDS) + r")\b",
                         re.I)
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


def gives_time(text: str) -> bool:
    """Digits (times, counts of clips, numbered scenes) or a relative-time word (TIME_WORDS)."""
    return bool(_GIVES_TIME.search(text))


def clip_text(caption: dict) -> str:
    return f"{caption.get('caption') or ''} {caption.get('key_event') or ''}"


def support(clue: str, text: str) -> float:
    """Share of the clue's words and word pairs that `text` holds (0 to 1)."""
    wanted = features(clue)
    return len(wanted & features(text)) / len(wanted) if wanted else 0.0


def lexically_grounded(clue: str, clip_id: str, captions: dict[str, dict]) -> bool:
    """Its own clip's caption supports the clue more than any other clip's caption does."""
    own = support(clue, clip_text(captions[clip_id]))
    return own > 0 and all(own > support(clue, clip_text(c)) for cid, c in captions.items() if cid != clip_id)


def duplicates(clue: str, clip_id: str, kept: list[dict], captions: dict[str, dict], threshold: float) -> bool:
    """A near-duplicate of a kept clue, or of another clip's key event (a clue two clips could answer)."""
    if any(similarity(clue, k["text"]) >= threshold for k in kept):
        return True
    return any(similarity(clue, c.get("key_event") or "") >= threshold
               for cid, c in captions.items() if cid != clip_id)


def proposals(text: str) -> list | None:
    """The events list of an engine's answer; None when there is none."""
    data = extract_json(text)
    events = data.get("events", data.get("clues")) if isinstance(data, dict) else data
    return events if isinstance(events, list) else None


def cheap_verdict(event, captions: dict[str, dict]) -> tuple[str, str, str]:
    """(clip_id, clue text, reject reason or "") from the gates that need no caption comparison."""
    if not isinstance(event, dict):
        return "", str(event)[:200], "unreadable"
    clip_id, clue = event.get("clip_id"), event.get("clue", event.get("text"))
    clip_id = clip_id if isinstance(clip_id, str) else str(clip_id or "")
    clue = " ".join(clue.split()) if isinstance(clue, str) else ""
    if clip_id not in captions:
        return clip_id, clue, "unknown_clip"
    if not readable(clue, min_words=3):
        return clip_id, clue, "unreadable"
    if gives_time(clue) or clip_id in clue:
        return clip_id, clue, "gives_time"
    return clip_id, clue, ""


def validate(text: str, captions: dict[str, dict], cfg, judge=None) -> tuple[list[dict], list[dict]]:
    """(kept clues in time order, every candidate with `kept` and `reject_reason`) from an engine's answer.

    `judge(pairs) -> [bool]`, when given, decides grounding for (clip_id, clue) pairs instead of word overlap."""
    events = proposals(text)
    if events is None:
        return [], []
    verdicts = [cheap_verdict(event, captions) for event in events]
    pending = [(clip_id, clue) for clip_id, clue, reason in verdicts if not reason]
    grounded = judge(pending) if judge and pending else [lexically_grounded(clue, clip_id, captions)
                                                         for clip_id, clue in pending]
    grounded_of = iter(grounded)
    valid: list[dict] = []
    candidates: list[dict] = []
    for clip_id, clue, reason in verdicts:
        fits = next(grounded_of) if not reason else False
        if not reason and duplicates(clue, clip_id, valid, captions, cfg.duplicate_similarity):
            reason = "not_unique"
        if not reason and not fits:
            reason = "ungrounded"
        if not reason and any(v["clip_id"] == clip_id for v in valid):
            reason = "same_clip"
        if not reason and len(valid) >= cfg.max_clues:
            reason = "over_max_clues"
        candidates.append({"clip_id": clip_id, "text": clue, "kept": not reason, "reject_reason": reason})
        if not reason:
            caption = captions[clip_id]
            valid.append({"clip_id": clip_id, "start_s": caption["start_s"], "end_s": caption["end_s"], "text": clue})
    valid.sort(key=lambda v: (v["start_s"], v["clip_id"]))
    return valid, candidates


def why(candidates: list[dict], text: str) -> str:
    if not candidates and proposals(text) is None:
        return f"answer is not JSON with an events list; answer began {text[:100]!r}"
    reasons = Counter(c["reject_reason"] for c in candidates if not c["kept"])
    listed = ", ".join(f"{n} x {reason}" for reason, n in reasons.most_common()) or "no events"
    return f"{listed}; answer began {text[:100]!r}"


JUDGE_PROMPT = (
    "Below are the captions of consecutive clips of one video, each after its clip id.\n\n{captions}\n\n"
    'Which clip does this event come from: "{clue}"?\n'
    'Answer with JSON only: {{"clip_id": "<a clip id from the list>"}}'
)
JUDGE_SCHEMA_JSON = {"type": "object", "properties": {"clip_id": {"type": "string"}}, "required": ["clip_id"]}


def judge_answer(text: str, clip_ids: list[str]) -> str | None:
    """The clip id a judge named: its JSON `clip_id`, else the first known id in its text."""
    data = extract_json(text)
    if isinstance(data, dict) and data.get("clip_id") in clip_ids:
        return data["clip_id"]
    found = [(text.find(cid), cid) for cid in clip_ids if cid in (text or "")]
    return min(found)[1] if found else None


class CluesStage(Stage):
    name = "clues"
    schema = CLUES_SCHEMA
    heavy = True

    def __init__(self, config, candidates_root: str | None = None):
        super().__init__(config)
        # Where each video's clue_candidates part goes (None: kept in `self.candidates` only).
        self.candidates_root = candidates_root
        self.candidates: list[dict] = []

    def setup(self) -> None:
        self.engine = build_engine(self.config.clues, "clues")

    def judge(self, captions: list[dict]):
        """`clues.grounding: llm`: the clues engine names the clip each clue comes from; a clue is
        grounded when that is its own clip. A request that fails falls back to word overlap."""
        if self.config.clues.grounding != "llm":
            return None
        by_clip = {c["clip_id"]: c for c in captions}
        listing = "\n".join(f"[{c['clip_id']}] {clip_text(c)[:self.config.clues.max_caption_chars]}" for c in captions)

        def decide(pairs: list[tuple[str, str]]) -> list[bool]:
            requests = [Request(prompt=JUDGE_PROMPT.format(captions=listing, clue=clue), json_schema=JUDGE_SCHEMA_JSON)
                        for _, clue in pairs]
            results = self.engine(requests)
            return [judge_answer(r.text, list(by_clip)) == clip_id if r.ok
                    else lexically_grounded(clue, clip_id, by_clip)
                    for (clip_id, clue), r in zip(pairs, results)]
        return decide

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        self.candidates = []
        try:
            yield from self.select(item)
        finally:
            self.write_candidates(item["video_id"])

    def select(self, item: dict) -> Iterator[dict | ErrorRow]:
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
        judge = self.judge(captions)
        attempts, reasons = 0, []
        request = Request(prompt=prompt, json_schema=CLUES_SCHEMA_JSON, data=data)
        while True:
            attempts += 1
            result = self.engine([request])[0]
            if not result.ok:
                reasons.append(f"engine error {result.error_type}: {result.error}")
                valid = []
            else:
                valid, candidates = validate(result.text, by_clip, cfg, judge)
                enough = len(valid) >= cfg.min_clues
                self.record(vid, attempts, candidates, enough)
                if enough:
                    break
                reasons.append(f"{len(valid)} valid ({why(candidates, result.text)})")
            if attempts > cfg.validation_retries:
                yield ErrorRow(vid, source, "too_few_clues",
                               f"{cfg.min_clues} valid clues needed; after {attempts} attempt(s): " + " | ".join(reasons))
                return
            request = Request(prompt=prompt + RETRY_NOTE.format(why=reasons[-1][:300]),
                              json_schema=CLUES_SCHEMA_JSON, data=data)
        for index, clue in enumerate(valid):
            yield {"video_id": vid, "clue_index": index, **clue, "engine": self.engine.kind,
                   "model": self.engine.model, "prompt_version": cfg.prompt_version}

    def record(self, video_id: str, attempt: int, candidates: list[dict], used: bool) -> None:
        """Candidates of one answer; those that passed every gate in an answer with too few are not kept."""
        for c in candidates:
            kept = c["kept"] and used
            reason = c["reject_reason"] or ("" if used else "answer_too_few")
            self.candidates.append({"video_id": video_id, **c, "kept": kept, "reject_reason": reason,
                                    "attempt": attempt, "engine": self.engine.kind, "model": self.engine.model,
                                    "prompt_version": self.config.clues.prompt_version})

    def write_candidates(self, video_id: str) -> None:
        """The video's clue_candidates part, written before the clue part (whose existence marks it done)."""
        if self.candidates_root is None:
            return
        from vico_pipeline import layout, storage

        storage.write_parquet(rows_to_table(self.candidates, CLUE_CANDIDATES_SCHEMA),
                              layout.part_uri(self.candidates_root, video_id))
