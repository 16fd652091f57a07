"""Helpers every stage may import; no stage imports another stage's module.

- the answer gates for any text a model wrote (captions, summaries): `check_answer`, the
  retry note, refusal and repetition tests (error types `{kind}_truncated|_refusal|_unparsed|_repetitive`);
- what is said during a clip, for prompts (`clip_subtitles`, over stages/cues.py);
- segmenting a video's captions (`segments`), the unit of the summaries and the clue parts;
- the `questions` table's schema, which the questions stage writes and the blind stage extends.
"""
from __future__ import annotations

import re

import pyarrow as pa

from stages.cues import cues_in, preferred_track, subtitle_lines
from vico_pipeline.engines.parse import readable


# --------------------------------------------------------------------------- the answer gates
RETRY_NOTE = "\n\nYour previous answer could not be used ({why}). Answer again, with the JSON only."

# How a model declines: at the start of the answer or of its caption.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i cannot|i can ?not|i can'?t|i'?m (not able|unable)|"
    r"i am (not able|unable)|i won'?t|as an ai\b|unfortunately,? i\b)", re.I)
# The same unit of one to four words four or more times in a row ("the the the the").
_RUN = re.compile(r"\b(\w+(?:\W+\w+){0,3})(?:\W+\1\b){3,}", re.I)


def refusal(text: str) -> bool:
    return bool(_REFUSAL.match((text or "").replace("\u2019", "'")))


def repetitive(text: str) -> bool:
    """Degenerate repetition: a short unit repeated in a row, or a long text of few distinct word triples."""
    words = re.findall(r"\w+", (text or "").lower())
    if len(words) >= 8 and _RUN.search(" ".join(words)):
        return True
    triples = list(zip(words, words[1:], words[2:]))
    return len(words) >= 20 and len(set(triples)) < 0.5 * len(triples)


def check_answer(result, parse, kind: str) -> tuple[tuple | None, str, str]:
    """The gates for any written text (captions, summaries): `parse(text)` gives a tuple of texts
    (the first the main one) or None; error types are `{kind}_truncated|_refusal|_unparsed|_repetitive`."""
    text = result.text or ""
    if result.finish_reason == "length":
        return None, f"{kind}_truncated", f"cut at the token limit after {result.completion_tokens} tokens: {text[:120]!r}"
    try:
        parsed = parse(text)
    except Exception as exc:  # a parser bug must not lose the batch's other items
        return None, f"{kind}_unparsed", f"the parser failed ({type(exc).__name__}): {text[:120]!r}"
    if refusal(text) or (parsed and refusal(parsed[0])):
        return None, f"{kind}_refusal", f"the model declined: {text[:120]!r}"
    if parsed is None:
        return None, f"{kind}_unparsed", f"not JSON with a non-empty {kind}: {text[:120]!r}"
    if not readable(parsed[0], min_words=3):
        return None, f"{kind}_unparsed", f"the {kind} is not text: {parsed[0][:120]!r}"
    if any(repetitive(part) for part in parsed):
        return None, f"{kind}_repetitive", f"degenerate repetition: {parsed[0][:120]!r}"
    return parsed, "", ""


# --------------------------------------------------------------------------- what a clip says
def clip_subtitles(cues: list[dict], start_s: float, end_s: float) -> str:
    """The prompt lines of the cues shown during [start_s, end_s), from one track; "" when none."""
    return subtitle_lines(cues_in(preferred_track(cues), start_s, end_s)) if cues else ""


# --------------------------------------------------------------------------- segments
def segments(captions: list[dict], size: int) -> list[list[dict]]:
    """Consecutive runs of `size` captioned clips, in time order (the last may be shorter)."""
    ordered = sorted(captions, key=lambda c: c["start_s"])
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


# --------------------------------------------------------------------------- tables more than one stage writes
QUESTIONS_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("video_id", pa.string()),
    ("task", pa.string()),
    ("question", pa.string()),
    ("options", pa.list_(pa.string())),
    # The letter for lettered options ("B"), the word for before_after, the text for open questions.
    ("answer", pa.string()),
    ("answer_index", pa.int32()),
    ("evidence_clip_ids", pa.list_(pa.string())),
    # [start_s, end_s] of each evidence clip's event span (vico_pipeline/spans.py), in the order
    # of evidence_clip_ids: a frame from there shows the event.
    ("evidence_windows_s", pa.list_(pa.list_(pa.float64()))),
    ("split", pa.string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
    # Which paraphrase of the task's question and answer line (stages/questions.py TEMPLATES).
    ("template_id", pa.string()),
    # Rotations of the options a model answered right without the video; filled by the blind stage.
    ("blind_correct", pa.int32()),
    # Provenance: what made the captions and the clues this question stands on.
    ("caption_engine", pa.string()),
    ("caption_model", pa.string()),
    ("clue_engine", pa.string()),
    ("clue_model", pa.string()),
    # Where the answer comes from: "timestamps" (computed from the clips' times), "model" (a model
    # wrote it: the summary), "stand-in" (a stand-in engine wrote it); the writer's engine and model.
    ("answer_source", pa.string()),
    ("answer_engine", pa.string()),
    ("answer_model", pa.string()),
])
