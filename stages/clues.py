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

import math
from collections import Counter
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage, rows_to_table
from stages.common import clip_subtitles, segments
from stages.context import Budget, TooLong
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.parse import extract_json, readable
from vico_pipeline.spans import span_of
from vico_pipeline.text import clip_text, clock, gives_time, lexically_grounded, similarity

CLUES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("clue_index", pa.int32()),
    ("clip_id", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("text", pa.string()),
    # Where its key event is seen (its clip's caption's span, vico_pipeline/spans.py).
    ("event_start_s", pa.float64()),
    ("event_end_s", pa.float64()),
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
    # "all": one prompt held every caption; else "segment" (candidates of one part), "narrow"
    # (candidates of many parts thinned to fit) and "final" (the pick over every candidate).
    # A candidate that passed a segment or narrow round has reject_reason "to_final_pick".
    ("round", pa.string()),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])
REJECT_REASONS = ("unknown_clip", "unreadable", "gives_time", "ungrounded", "not_unique", "same_clip",
                  "over_max_clues", "answer_too_few", "to_final_pick")

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
    # v3: asks for *up to* N (the number scales with the video's length), one part of a longer video
    # at a time when the captions do not fit one prompt, and lines may quote what is said.
    "v3": (
        "Below are the captions of consecutive clips of {scope}, in time order. Each line starts with "
        "the clip id and its time range{speech_note}.\n\n{captions}\n\n"
        "Pick up to {max_clues} of the most salient events {where}, each clearly different from the others, "
        "and at most one per clip. Write each as a clue: one short sentence a viewer of the video would "
        "recognise, that fits its own clip's caption better than any other clip's, with no timestamp, no "
        "clip id, no number and no word that tells when it happens (first, then, later, finally, again, at "
        "the end, ...).\n"
        'Answer with JSON only: {{"events": [{{"clip_id": "<a clip id from the list>", "clue": "<the clue>"}}]}}'
    ),
}
SPEECH_NOTE = '; "Said:" quotes what is said during the clip (subtitles)'
# The last round for a video whose captions did not fit one prompt: candidates of every part,
# under the summary of their part (stages/summaries.py), in time order.
FINAL_PROMPT = (
    "Below is one video ({start} to {end}) in time order: the summary of each part, and under it candidate "
    "events from that part, each after its clip id and time range.\n\n{lines}\n\n"
    "Pick up to {max_clues} of the candidates: the most salient events of the whole video, each clearly "
    "different from the others, spread over the video, at most one per clip. Keep a clue's wording or "
    "shorten it; never add a timestamp, a clip id, a number or a word that tells when it happens.\n"
    'Answer with JSON only: {{"events": [{{"clip_id": "<a clip id from the list>", "clue": "<the clue>"}}]}}'
)
RETRY_NOTE = "\n\nYour previous answer could not be used ({why}). Answer again, with JSON only."

def caption_line(caption: dict, max_chars: int, speech: str = "") -> str:
    """A clip's line in a clue prompt: id, time range, caption (at most `max_chars`), key event, speech."""
    text = caption["caption"]
    if len(text) > max_chars:  # clues.max_caption_chars, a stated cap; the mark shows the model the cut
        text = text[:max_chars] + "…"
    if caption.get("key_event") and caption["key_event"] not in text:
        text += f" Key event: {caption['key_event']}"
    if speech:
        text += " Said: " + " ".join(speech.splitlines())
    return f"[{caption['clip_id']}] {clock(caption['start_s'])}-{clock(caption['end_s'])}: {text}"


def clue_prompt(version: str, captions: list[dict], max_clues: int, max_chars: int,
                speech: dict[str, str] | None = None, part: bool = False) -> str:
    """The clue prompt over `captions`; `speech` {clip_id: subtitle lines}; `part`: the captions are one
    part of a longer video (a candidate round)."""
    if version not in PROMPTS:
        raise ValueError(f"unknown clue prompt version {version!r}; known: {', '.join(PROMPTS)}")
    speech = speech or {}
    lines = [caption_line(c, max_chars, speech.get(c["clip_id"], "")) for c in captions]
    scope = (f"one part ({clock(captions[0]['start_s'])} to {clock(captions[-1]['end_s'])}) of a longer video"
             if part and captions else "one video")
    return PROMPTS[version].format(captions="\n".join(lines), max_clues=max_clues, scope=scope,
                                   where="of this part" if part else "of the video",
                                   speech_note=SPEECH_NOTE if any(speech.get(c["clip_id"]) for c in captions) else "")


def clue_target(captions: list[dict], cfg) -> int:
    """Clues asked for: one per `seconds_per_clue` seconds of captioned video, within
    [min_clues, max_clues] and never more than the clips."""
    seconds = sum(c["end_s"] - c["start_s"] for c in captions)
    wanted = max(cfg.min_clues, min(cfg.max_clues, math.ceil(seconds / cfg.seconds_per_clue)))
    return min(wanted, len(captions))


def final_prompt(pool: list[dict], summaries: list[dict], max_clues: int) -> str:
    """The final pick's prompt: segment summaries and the candidates under them, in time order."""
    lines = []
    for entry in timeline(pool, summaries):
        if "clip_id" in entry:
            lines.append(f"  [{entry['clip_id']}] {clock(entry['start_s'])}-{clock(entry['end_s'])}: {entry['text']}")
        else:
            lines.append(f"Part {clock(entry['start_s'])}-{clock(entry['end_s'])}: {entry['text']}")
    starts = [e["start_s"] for e in pool + summaries]
    ends = [e["end_s"] for e in pool + summaries]
    return FINAL_PROMPT.format(start=clock(min(starts)) if starts else "", end=clock(max(ends)) if ends else "",
                               lines="\n".join(lines), max_clues=max_clues)


def timeline(pool: list[dict], summaries: list[dict]) -> list[dict]:
    """Summaries and candidates in time order, a part's summary before its candidates."""
    return sorted(summaries + pool, key=lambda e: (e["start_s"], "clip_id" in e, e.get("clip_id", "")))


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


def validate(text: str, captions: dict[str, dict], cfg, judge=None, limit: int | None = None
             ) -> tuple[list[dict], list[dict]]:
    """(kept clues in time order, every candidate with `kept` and `reject_reason`) from an engine's answer.

    `judge(pairs) -> [bool]`, when given, decides grounding for (clip_id, clue) pairs instead of word overlap;
    at most `limit` (default `cfg.max_clues`) are kept."""
    limit = cfg.max_clues if limit is None else limit
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
        if not reason and len(valid) >= limit:
            reason = "over_max_clues"
        candidates.append({"clip_id": clip_id, "text": clue, "kept": not reason, "reject_reason": reason})
        if not reason:
            caption = captions[clip_id]
            start, end = span_of(caption)
            valid.append({"clip_id": clip_id, "start_s": caption["start_s"], "end_s": caption["end_s"], "text": clue,
                          "event_start_s": start, "event_end_s": end})
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


class ContextExceeded(Exception):
    """The server refused a prompt as longer than its context (our count said it fit)."""


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
        self.budget = Budget(self.engine, self.config.clues)

    def judge(self, captions: list[dict]):
        """`clues.grounding: llm`: the clues engine names the clip each clue comes from; a clue is
        grounded when that is its own clip. The judge sees every caption when they fit one prompt,
        else the clips nearest the clue's own that fit. A request that fails falls back to word overlap."""
        if self.config.clues.grounding != "llm":
            return None
        by_clip = {c["clip_id"]: c for c in captions}
        index = {c["clip_id"]: i for i, c in enumerate(captions)}
        width = self.config.clues.max_caption_chars
        lines = [f"[{c['clip_id']}] {clip_text(c)[:width]}" for c in captions]

        def request(clip_id: str, clue: str) -> tuple[Request, list[str]]:
            i = index[clip_id]
            for radius in (len(captions), 64, 32, 16, 8, 4, 2, 1, 0):
                lo, hi = max(0, i - radius), i + radius + 1
                asked = Request(prompt=JUDGE_PROMPT.format(captions="\n".join(lines[lo:hi]), clue=clue),
                                json_schema=JUDGE_SCHEMA_JSON)
                if self.budget.fits(asked):
                    return asked, [c["clip_id"] for c in captions[lo:hi]]
            raise TooLong(f"clip {clip_id}'s caption does not fit a grounding prompt of {self.budget.describe()}")

        def decide(pairs: list[tuple[str, str]]) -> list[bool]:
            asked = [request(clip_id, clue) for clip_id, clue in pairs]
            results = self.budget.send([r for r, _ in asked])
            return [judge_answer(r.text, ids) == clip_id if r.ok else lexically_grounded(clue, clip_id, by_clip)
                    for (clip_id, clue), r, (_, ids) in zip(pairs, results, asked)]
        return decide

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        self.candidates = []
        try:
            yield from self.select(item)
        finally:
            self.write_candidates(item["video_id"])

    def select(self, item: dict) -> Iterator[dict | ErrorRow]:
        """One prompt with every caption when it fits the budget; else rounds: candidates per
        part, (narrowed while they do not fit), then the final pick with the segment summaries."""
        vid, source = item["video_id"], item["source"]
        cfg = self.config.clues
        captions = self.with_speech(sorted(item["caption"], key=lambda c: c["start_s"]), item)
        by_clip = {c["clip_id"]: c for c in captions}
        if len(captions) < cfg.min_clues:
            yield ErrorRow(vid, source, "too_few_captions",
                           f"{len(captions)} captioned clips, {cfg.min_clues} clues needed (clues.min_clues)")
            return
        target = clue_target(captions, cfg)
        judge = self.judge(captions)
        try:
            whole = self.clue_request(captions, target)
            if self.budget.fits(whole):
                valid, reasons = self.pick(vid, whole, by_clip, judge, target, "all")
            else:
                pool = self.candidate_round(vid, self.parts(captions), by_clip, judge, target)
                valid, reasons = self.final_pick(vid, pool, item.get("summaries") or [], by_clip, judge, target)
        except TooLong as exc:
            yield ErrorRow(vid, source, "context_too_small", str(exc))
            return
        except ContextExceeded as exc:
            yield ErrorRow(vid, source, "context_exceeded",
                           f"the server refused a prompt as longer than its context although it was counted within "
                           f"{self.budget.describe()}: lower clues.context_tokens to the server's context (or "
                           f"below, when the engine estimates tokens). Server said: {exc}")
            return
        if valid is None:
            yield ErrorRow(vid, source, "too_few_clues", f"{cfg.min_clues} valid clues needed; " + reasons)
            return
        for index, clue in enumerate(valid):
            yield {"video_id": vid, "clue_index": index, **clue, "engine": self.engine.kind,
                   "model": self.engine.model, "prompt_version": cfg.prompt_version}

    def with_speech(self, captions: list[dict], item: dict) -> list[dict]:
        """Captions with `speech`: their clip's subtitle lines when `clues.use_subtitles`."""
        cues = (item.get("subtitles") or []) if self.config.clues.use_subtitles else []
        return [{**c, "speech": clip_subtitles(cues, c["start_s"], c["end_s"])} for c in captions]

    def clue_request(self, captions: list[dict], up_to: int, part: bool = False) -> Request:
        cfg = self.config.clues
        speech = {c["clip_id"]: c.get("speech") or "" for c in captions}
        data = {"task": "clues", "up_to": up_to,
                "clips": [{"clip_id": c["clip_id"], "start_s": c["start_s"], "end_s": c["end_s"],
                           "caption": c["caption"], "key_event": c.get("key_event")} for c in captions]}
        return Request(prompt=clue_prompt(cfg.prompt_version, captions, up_to, cfg.max_caption_chars, speech, part),
                       json_schema=CLUES_SCHEMA_JSON, data=data)

    def parts(self, captions: list[dict]) -> list[list[dict]]:
        """The segments of stages/summaries.py, each split further where its captions do not fit."""
        out = []
        for segment in segments(captions, self.config.summaries.segment_clips):
            out += self.budget.pack(segment, lambda run: self.clue_request(run, len(run), part=True),
                                    lambda c: f"clip {c['clip_id']}'s caption")
        return out

    # ----------------------------------------------------------------------- asking
    def pick(self, vid: str, request: Request, by_clip: dict, judge, limit: int, round_: str
             ) -> tuple[list[dict] | None, str]:
        """Ask until an answer yields `min_clues` valid clues (at most `validation_retries` re-asks):
        (clues, "") or (None, why not)."""
        cfg = self.config.clues
        reasons, current = [], request
        for attempt in range(1, cfg.validation_retries + 2):
            result = self.budget.send([current])[0]
            if result.error_type == "context_exceeded":
                raise ContextExceeded(result.error)
            if not result.ok:
                reasons.append(f"engine error {result.error_type}: {result.error}")
            else:
                valid, candidates = validate(result.text, by_clip, cfg, judge, limit)
                enough = len(valid) >= cfg.min_clues
                self.record(vid, attempt, candidates, enough, round_)
                if enough:
                    return valid, ""
                reasons.append(f"{len(valid)} valid ({why(candidates, result.text)})")
            current = self.budget.retry(request, RETRY_NOTE, reasons[-1])
        return None, f"after {len(reasons)} attempt(s) ({round_} round): " + " | ".join(reasons)

    def ask_each(self, vid: str, requests: list[Request], limits: list[int], by_clip: dict, judge, round_: str
                 ) -> list[dict]:
        """Candidate rounds: every request in one batch; one with no valid candidate is asked again
        (`validation_retries`). Returns the valid candidates of all of them, in time order."""
        cfg = self.config.clues
        pool: list[dict] = []
        todo = [(i, requests[i]) for i in range(len(requests))]
        for attempt in range(1, cfg.validation_retries + 2):
            results = self.budget.send([r for _, r in todo])
            again = []
            for (i, _), result in zip(todo, results):
                if result.error_type == "context_exceeded":
                    raise ContextExceeded(result.error)
                valid, candidates = validate(result.text, by_clip, cfg, judge, limits[i]) if result.ok else ([], [])
                self.record(vid, attempt, candidates, False, round_)
                pool += valid
                if not valid:
                    reason = why(candidates, result.text) if result.ok else f"engine error {result.error_type}"
                    again.append((i, self.budget.retry(requests[i], RETRY_NOTE, reason)))
            if not again:
                break
            todo = again
        return sorted(pool, key=lambda v: (v["start_s"], v["clip_id"]))

    def candidate_round(self, vid: str, parts: list[list[dict]], by_clip: dict, judge, target: int) -> list[dict]:
        """Candidate events of each part: about twice its share of `target`, at least one."""
        total = sum(len(p) for p in parts)
        limits = [max(1, math.ceil(2 * target * len(p) / total)) for p in parts]
        requests = [self.clue_request(p, k, part=True) for p, k in zip(parts, limits)]
        return self.ask_each(vid, requests, limits, by_clip, judge, "segment")

    def final_pick(self, vid: str, pool: list[dict], summaries: list[dict], by_clip: dict, judge, target: int
                   ) -> tuple[list[dict] | None, str]:
        """The pick over every candidate, beside the segment summaries; when those do not fit beside
        them, the video summary; then none. While the candidates alone do not fit one prompt, they are
        first thinned part by part, each part's candidates beside its segment summaries (`narrow`)."""
        cfg = self.config.clues
        segment = [s for s in summaries if s["level"] == "segment"]
        context_choices = (segment, [s for s in summaries if s["level"] == "video"], [])
        while True:
            if len(pool) < cfg.min_clues:
                return None, f"only {len(pool)} candidate(s) passed the gates in the rounds before the final pick"
            for context in context_choices:
                request = self.final_request(pool, context, target)
                if self.budget.fits(request):
                    return self.pick(vid, request, by_clip, judge, target, "final")
            pool = self.narrow(vid, pool, segment, by_clip, judge, target)

    def narrow(self, vid: str, pool: list[dict], segment: list[dict], by_clip: dict, judge, target: int
               ) -> list[dict]:
        """Fewer candidates: each run of the timeline that fits one prompt keeps its share of what one
        final prompt can hold (at most `target`)."""
        def name(e):
            return f"the {'candidate of clip ' + e['clip_id'] if 'clip_id' in e else 'summary'} at {clock(e['start_s'])}"

        capacity = len(self.budget.pack(pool, lambda run: self.final_request(run, [], target), name)[0])
        goal = min(target, capacity)
        groups = self.budget.pack(timeline(pool, segment),
                                  lambda run: self.final_request([e for e in run if "clip_id" in e],
                                                                 [e for e in run if "clip_id" not in e], target), name)
        groups = [g for g in groups if any("clip_id" in e for e in g)]
        limits = [max(1, goal * sum("clip_id" in e for e in g) // len(pool)) for g in groups]
        requests = [self.final_request([e for e in g if "clip_id" in e], [e for e in g if "clip_id" not in e], k)
                    for g, k in zip(groups, limits)]
        narrowed = self.ask_each(vid, requests, limits, by_clip, judge, "narrow")
        if len(narrowed) >= len(pool):
            raise TooLong(f"{len(pool)} candidates could not be narrowed to fit one prompt of {self.budget.describe()}")
        return narrowed

    def final_request(self, pool: list[dict], summaries: list[dict], up_to: int) -> Request:
        data = {"task": "clues", "up_to": up_to,
                "clips": [{"clip_id": c["clip_id"], "start_s": c["start_s"], "end_s": c["end_s"],
                           "caption": c["text"], "key_event": c["text"]} for c in pool]}
        return Request(prompt=final_prompt(pool, summaries, up_to), json_schema=CLUES_SCHEMA_JSON, data=data)

    def record(self, video_id: str, attempt: int, candidates: list[dict], used: bool, round_: str = "all") -> None:
        """Candidates of one answer. In the `all` and `final` rounds those that passed every gate in an
        answer with too few are not kept (`answer_too_few`); in a candidate round they go on to the final
        pick (`to_final_pick`), whose rows say which were kept."""
        final = round_ in ("all", "final")
        for c in candidates:
            kept = c["kept"] and used and final
            reason = c["reject_reason"] or ("" if kept else "answer_too_few" if final else "to_final_pick")
            self.candidates.append({"video_id": video_id, **c, "kept": kept, "reject_reason": reason,
                                    "attempt": attempt, "round": round_, "engine": self.engine.kind,
                                    "model": self.engine.model, "prompt_version": self.config.clues.prompt_version})

    def write_candidates(self, video_id: str) -> None:
        """The video's clue_candidates part, written before the clue part (whose existence marks it done)."""
        if self.candidates_root is None:
            return
        from vico_pipeline import layout, storage

        storage.write_parquet(rows_to_table(self.candidates, CLUE_CANDIDATES_SCHEMA),
                              layout.part_uri(self.candidates_root, video_id))
