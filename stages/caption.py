"""Caption: a clip's frames and a versioned prompt in, a caption and its key event out.

The clips the filter kept go to the caption engine in batches; while the
engine works on one batch, a thread prepares the next (JPEG decoding,
processor), so a GPU engine is not left waiting on the CPU. The engine is
asked for JSON `{caption, key_event}` (structured output where it has it).

Nothing a model wrote becomes a caption unchecked (the gates, vico.md "Quality
gates"): an answer cut at the token limit (`caption_truncated`), a refusal
(`caption_refusal`), degenerate repetition (`caption_repetitive`), or one that
is not JSON with a readable `caption` (`caption_unparsed`) is asked again,
at most `caption.answer_retries` times, then becomes an error row. A clip
whose request failed becomes an error row too; the other clips go on.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.common import RETRY_NOTE, check_answer, clip_subtitles
from vico_pipeline.engines import Request, build_engine
from vico_pipeline.engines.parse import extract_json, first_sentence
from vico_pipeline.spans import event_span, video_shots
from vico_pipeline.text import clock

CAPTIONS_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("clip_index", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("caption", pa.string()),
    ("key_event", pa.string()),
    # The caption frames (1-based, as the prompt numbers them) that show the key event.
    ("key_event_frames", pa.list_(pa.int32())),
    # Where the key event is seen: the shots of those frames (vico_pipeline/spans.py); may run
    # past the clip's window into a neighbour showing the same shot.
    ("event_start_s", pa.float64()),
    ("event_end_s", pa.float64()),
    # Gate error types of the answers rejected before the one kept (a retry fixed them).
    ("rejected", pa.list_(pa.string())),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
    # "json": every caption kept to the asked JSON (plain-text answers are rejected by the gates).
    ("answer_format", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("latency_s", pa.float64()),
])

CAPTION_SCHEMA_JSON = {
    "type": "object",
    "properties": {"caption": {"type": "string"}, "key_event": {"type": "string"},
                   "key_event_frames": {"type": "array", "items": {"type": "integer"}}},
    "required": ["caption", "key_event"],
}

# Prompts are versioned: a new wording is a new version (and a new caption fingerprint).
PROMPTS = {
    "v1": (
        "These {n} frames are sampled in order from one {seconds:.0f}-second clip of a longer video "
        "({start} to {end}). Describe the clip for someone who cannot see it: the sequence of actions "
        "in order, the people, objects and setting, and any visible text (quote it). Say only what is "
        "visible; do not guess.\n"
        'Answer with JSON only: {{"caption": "3 to 6 sentences", "key_event": "one sentence: the most '
        'important event of the clip, recognisable without timestamps"}}'
    ),
    # v2: also which frames show the key event, so its span (the shots of those frames) is known.
    "v2": (
        "These {n} frames, numbered 1 to {n}, are sampled in order from one {seconds:.0f}-second clip of a "
        "longer video ({start} to {end}). Describe the clip for someone who cannot see it: the sequence of "
        "actions in order, the people, objects and setting, and any visible text (quote it). Say only what "
        "is visible; do not guess.\n"
        'Answer with JSON only: {{"caption": "3 to 6 sentences", "key_event": "one sentence: the most '
        'important event of the clip, recognisable without timestamps", "key_event_frames": [the numbers of '
        'the frames in which the key event is seen]}}'
    ),
}


# Added to a clip's prompt when subtitle cues fall in it (`caption.use_subtitles`); a clip without
# cues gets the prompt of its version unchanged.
SUBTITLES_NOTE = ("\n\nWhat is said during this clip (subtitles, in order; they may be imperfect):\n{lines}\n"
                  "Use them for names and for what people say; describe what is seen as above.")


def caption_prompt(version: str, clip: dict) -> str:
    if version not in PROMPTS:
        raise ValueError(f"unknown caption prompt version {version!r}; known: {', '.join(PROMPTS)}")
    prompt = PROMPTS[version].format(n=len(clip["caption_frames"]), seconds=clip["end_s"] - clip["start_s"],
                                     start=clock(clip["start_s"]), end=clock(clip["end_s"]))
    if clip.get("subtitles"):
        prompt += SUBTITLES_NOTE.format(lines=clip["subtitles"])
    return prompt


def parse_caption(text: str) -> tuple[str, str] | None:
    """(caption, key_event) from an engine's answer; None unless it is JSON with a non-empty `caption`."""
    data = extract_json(text)
    if not (isinstance(data, dict) and isinstance(data.get("caption"), str) and data["caption"].strip()):
        return None
    caption = " ".join(data["caption"].split())
    key = data.get("key_event")
    key = " ".join(key.split()) if isinstance(key, str) and key.strip() else first_sentence(caption)
    return caption, key


def key_event_frames(text: str, count: int) -> list[int]:
    """The frame numbers (1..count) an answer names as showing its key event; every frame when it
    names none that exist (the key event is then taken as the whole clip's shots)."""
    data = extract_json(text)
    named = data.get("key_event_frames") if isinstance(data, dict) else None
    if isinstance(named, (int, float)):
        named = [named]
    frames = sorted({int(x) for x in named if isinstance(x, (int, float)) and 1 <= int(x) <= count}) \
        if isinstance(named, list) else []
    return frames or list(range(1, count + 1))


# --------------------------------------------------------------------------- the gates
GATE_ERRORS = ("caption_unparsed", "caption_truncated", "caption_refusal", "caption_repetitive")

def gate(result) -> tuple[tuple[str, str] | None, str, str]:
    """((caption, key_event), "", "") for an answer that passes every gate, else (None, error type, why).

    Never raises: a parser failure is a `caption_unparsed` verdict for this clip alone."""
    return check_answer(result, parse_caption, "caption")


# What both runners share (the stage's engine actors, and `caption.runner: ray_data_llm`).
def kept_clips(frames: list[dict], verdicts: list[dict]) -> list[dict]:
    """The clips the filter kept, in time order."""
    kept = {r["clip_id"] for r in verdicts if r["kept"]}
    return sorted((c for c in frames if c["clip_id"] in kept), key=lambda c: c["clip_index"])


def no_clips_kept(video_id: str, source: str, verdicts: list[dict]) -> ErrorRow:
    reasons: dict[str, int] = {}
    for r in verdicts:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "no clips"
    return ErrorRow(video_id, source, "no_clips_kept", f"the clip filter kept none of {len(verdicts)} clips ({detail})")


def caption_request(version: str, clip: dict, retry_why: str = "") -> Request:
    """One clip's request: its caption frames and the versioned prompt, JSON asked for;
    `retry_why` says why the previous answer was rejected."""
    prompt = caption_prompt(version, clip) + (RETRY_NOTE.format(why=retry_why) if retry_why else "")
    return Request(prompt=prompt, images=list(clip["caption_frames"]), json_schema=CAPTION_SCHEMA_JSON)


def caption_rows(clip: dict, result, source: str, engine: str, model: str, version: str,
                 shots: list[tuple[float, float]] = (), rejected: list[str] = ()) -> Iterator[dict | ErrorRow]:
    """The caption row for a clip's engine result, or the error row that says why there is none.

    `shots`: the video's shots, for the key event's span; `rejected`: the gate error types of this
    clip's earlier answers (a retry fixed them)."""
    if not result.ok:
        yield ErrorRow(clip["clip_id"], source, f"caption_{result.error_type}", result.error or "")
        return
    parsed, error_type, why = gate(result)
    if parsed is None:
        yield ErrorRow(clip["clip_id"], source, error_type, why)
        return
    caption, key_event = parsed
    times = list(clip.get("caption_frame_times_s") or [])
    frames = key_event_frames(result.text, len(times))
    start, end = event_span([times[i - 1] for i in frames], list(shots), (clip["start_s"], clip["end_s"]))
    yield {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "clip_index": clip["clip_index"],
           "start_s": clip["start_s"], "end_s": clip["end_s"], "caption": caption, "key_event": key_event,
           "key_event_frames": frames, "event_start_s": start, "event_end_s": end, "rejected": list(rejected),
           "engine": engine, "model": model, "prompt_version": version, "answer_format": "json",
           "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
           "latency_s": round(result.latency_s, 4)}


class CaptionStage(Stage):
    name = "caption"
    schema = CAPTIONS_SCHEMA
    heavy = True

    def setup(self) -> None:
        self.engine = build_engine(self.config.caption, "caption")
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vico-caption-prepare")

    def batch_size(self) -> int:
        section = self.config.caption
        if section.engine == "vllm":
            return 256  # vLLM batches continuously: give it the whole video
        if section.engine == "openai":
            return max(section.batch_size, section.concurrency)
        return max(1, section.batch_size)

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        vid, source = item["video_id"], item["source"]
        verdicts = item.get("filter") or []
        clips = kept_clips(item["frames"], verdicts)
        if not clips:
            yield no_clips_kept(vid, source, verdicts)
            return
        section = self.config.caption
        shots = video_shots(item["frames"], (item.get("video") or {}).get("duration_s"))
        cues = (item.get("subtitles") or []) if section.use_subtitles else []
        clips = [{**c, "subtitles": clip_subtitles(cues, c["start_s"], c["end_s"])} for c in clips]
        results = self.answer([caption_request(section.prompt_version, c) for c in clips])
        rejected: list[list[str]] = [[] for _ in clips]
        for _ in range(section.answer_retries):  # answers the gates rejected are asked again, bounded
            again = [i for i, r in enumerate(results) if r.ok and gate(r)[0] is None]
            if not again:
                break
            for i in again:
                rejected[i].append(gate(results[i])[1])
            retried = self.answer([caption_request(section.prompt_version, clips[i], gate(results[i])[2][:200])
                                   for i in again])
            for i, result in zip(again, retried):
                results[i] = result
        for clip, result, earlier in zip(clips, results, rejected):
            yield from caption_rows(clip, result, source, self.engine.kind, self.engine.model,
                                    section.prompt_version, shots, earlier)

    def answer(self, requests: list[Request]) -> list:
        """The engine's results for `requests`, in batches; the next batch is prepared while one generates."""
        size = self.batch_size()
        batches = [requests[i:i + size] for i in range(0, len(requests), size)]
        results = []
        pending = self.prefetch.submit(self.engine.prepare, batches[0])
        for index in range(len(batches)):
            prepared = pending.result()
            if index + 1 < len(batches):
                pending = self.prefetch.submit(self.engine.prepare, batches[index + 1])
            results.extend(self.engine.generate(prepared))
        return results


class CaptionAnswers(CaptionStage):
    """The caption stage for answers an engine gave elsewhere (`caption.runner: ray_data_llm`,
    vico_pipeline/pipeline.py): an item's `answers` are its kept clips, each with its engine
    `result`; an item without answers had no clip kept. It builds no engine."""

    def setup(self) -> None:
        pass

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        answers = item.get("answers")
        if not answers:
            yield no_clips_kept(item["video_id"], item["source"], item.get("filter") or [])
            return
        section = self.config.caption
        for clip in sorted(answers, key=lambda c: c["clip_index"]):
            shots = [tuple(s) for s in clip.get("shots_s") or []]
            yield from caption_rows(clip, clip["result"], item["source"], section.engine, section.model or "",
                                    section.prompt_version, shots)
