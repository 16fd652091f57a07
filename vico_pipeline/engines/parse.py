"""Reading what a model answered: JSON where it kept to it, plain text where it did not."""
from __future__ import annotations

import json
import re
import unicodedata

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
# Bracket positions tried per candidate text: a model's babble of brackets must not cost minutes.
MAX_STARTS = 64


def extract_json(text: str):
    """The first JSON object or array in `text` (code fences and chatter around it allowed); None if none.

    Never raises: nesting too deep for the decoder (RecursionError) counts as no JSON there."""
    if not text:
        return None
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        starts = [i for i, ch in enumerate(candidate) if ch in "{["][:MAX_STARTS]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, (dict, list)):
                return value
    return None


def readable(text: str, min_words: int = 2) -> bool:
    """Looks like language: enough words, almost no control or replacement characters."""
    if not text:
        return False
    bad = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch)[0] == "C" and ch not in "\n\t"))
    words = re.findall(r"[^\W\d_]{2,}", text)
    return bad <= 0.02 * len(text) and len(words) >= min_words


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.S)
    return (match.group(1) if match else text.strip()).strip()
