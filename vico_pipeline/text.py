"""Word-level text helpers shared by stages and engines: features, similarity, lexical
grounding, the relative-time words, and the clock format of prompts.

A leaf: it imports nothing of the project.
"""
from __future__ import annotations

import re

_STOPWORDS = frozenset("a an the of to in on at and or is are was were be with by for from its it this that as".split())
_WORD = re.compile(r"[a-z0-9]+")


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from one hour on."""
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- similarity
def features(text: str) -> set[str]:
    """Words and word pairs of a text, stopwords left out."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of words and word pairs: 1.0 for the same wording, order-aware."""
    fa, fb = features(a), features(b)
    if not fa and not fb:
        return 1.0
    return len(fa & fb) / len(fa | fb)


# --------------------------------------------------------------------------- grounding
def clip_text(caption: dict) -> str:
    """What a clue is checked against: the clip's caption, key event and (when used) what is said."""
    return f"{caption.get('caption') or ''} {caption.get('key_event') or ''} {caption.get('speech') or ''}"


def support(clue: str, text: str) -> float:
    """Share of the clue's words and word pairs that `text` holds (0 to 1)."""
    wanted = features(clue)
    return len(wanted & features(text)) / len(wanted) if wanted else 0.0


def lexically_grounded(clue: str, clip_id: str, captions: dict[str, dict]) -> bool:
    """Its own clip's caption supports the clue more than any other clip's caption does."""
    own = support(clue, clip_text(captions[clip_id]))
    return own > 0 and all(own > support(clue, clip_text(c)) for cid, c in captions.items() if cid != clip_id)


# --------------------------------------------------------------------------- relative time
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


def gives_time(text: str) -> bool:
    """Digits (times, counts of clips, numbered scenes) or a relative-time word (TIME_WORDS)."""
    return bool(_GIVES_TIME.search(text))


# --------------------------------------------------------------------------- question words
# A test-taker's view of a question: its content words (question words left out too).
_QUESTION_STOPWORDS = _STOPWORDS | frozenset("does do what which when these those happen happens video".split())


def words(text: str) -> set[str]:
    """A text's content words, question words left out."""
    return {w for w in _WORD.findall(text.lower()) if w not in _QUESTION_STOPWORDS}


def overlap(question: str, option: str) -> int:
    """Words an option shares with the question (stopwords left out)."""
    return len(words(question) & words(option))
