"""Questions: a video's clues in, VICO question sets out, every answer key from timestamps.

Nine tasks (vico.md), chosen by `questions.tasks`, `questions.per_task` of each per video.
Keys are judged on event spans (vico_pipeline/spans.py: where a clue's key event is seen,
the shots of the frames that show it), not on 14-second clip windows, so a viewer would agree:

- `event_order`, `before_after`, `next_event`, `gap`: clues whose spans overlap are never
  compared (and no `next_event` distractor overlaps the quoted event or the answer);
- `clue_time`: at which time does this happen? No wrong range overlaps the clue's span;
- `at_time`: what happens at mm:ss? The second [t, t+1) lies inside the key's span and inside
  no other clue's span;
- `gap`: about how much time passes between the starts of two events? Minute buckets;
- `timeline`: the clues in order with their clips' times (open);
- `summary`: an open question answered by the video summary (the `summaries` table's
  `level == "video"` row), the one answer a model wrote: `answer_source` says
  `model`, or `stand-in` when a stand-in engine (template) wrote it;
- `said_when`: what is on screen when "..." is said? A subtitle cue inside one captioned
  clip and inside its key event's span (else not asked); a key event quoting the line (a
  shared run of 4 words) is not used; distractors show something else while it is said.

No repeats: one question a (task, evidence clues), `before_after` and `gap` sharing one a
pair of clues (`question_key`). No tells: the truth's place by word overlap with the question
is dealt evenly for the text-option tasks (`balanced_distractors`), and `clue_time`'s place in
time; each question's wording is one of five or more paraphrases (`TEMPLATES`, `ANSWER_LINES`),
chosen by the seed and recorded as `template_id`.

A task whose input a video lacks (no video summary, no subtitle cue inside a captioned
clip) is not made for that video; `tasks_without_input` counts those videos, it is not an
error. Options and distractors come from the same video. The correct option's letter
is dealt from shuffled decks of A-D (a seeded RNG per video), so letters are spread
evenly within every video and over the dataset. The wording says exactly what the key
computes (`next_event` asks for the listed event that comes next, not what happens
"right after"), and no option stands out by its form: the chronological order is shown
as often as chance shows it, and `event_order` distractors include a near miss (one
swap from the truth) without making the truth the hub of the options.

Each question comes with its conversation (the `<video>` placeholder, then the
question; consumers add the time header, vico_pipeline/samples.py), its
evidence clips and their event spans (`evidence_windows_s`: the frames shown for the
evidence are taken there), its split (train or val, by a hash of the
video id, so a video is never split), the engines that made its captions
and clues, and where its answer comes from (`answer_source`: `timestamps`,
`model` or `stand-in`, with `answer_engine` / `answer_model` for written answers).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from stages.base import ErrorRow, Stage
from stages.common import QUESTIONS_SCHEMA
from stages.cues import preferred_track
from vico_pipeline.spans import TOUCH_S, overlaps, span_of
from vico_pipeline.text import clock, overlap

LETTERS = "ABCD"
TASKS = ("event_order", "clue_time", "next_event", "before_after", "timeline",
         "at_time", "gap", "summary", "said_when")
# Engines with no model behind them (vico_pipeline/card.py): what they write is stand-in data.
STAND_IN_ENGINES = frozenset({"describe", "template", "rules"})




def split_for(video_id: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` share of video ids, else 'train'."""
    h = int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16) / 0x100000000
    return "val" if h < val_fraction else "train"


def time_range(start_s: float, end_s: float) -> str:
    return f"{clock(start_s)}–{clock(end_s)}"


class Deck:
    """Target positions dealt from shuffled decks: any prefix is even to within one."""

    def __init__(self, rng: random.Random, size: int):
        self.rng, self.size, self.cards = rng, size, []

    def deal(self) -> int:
        if not self.cards:
            self.cards = list(range(self.size))
            self.rng.shuffle(self.cards)
        return self.cards.pop()


def _place(correct: str, distractors: list[str], target: int) -> list[str]:
    options = list(distractors)
    options.insert(target, correct)
    return options


def one_swap_apart(a: tuple, b: tuple) -> bool:
    """Two orders that differ by exchanging two events."""
    return sum(x != y for x, y in zip(a, b)) == 2


def order_distractors(correct: tuple, rng: random.Random, tries: int = 200) -> list[tuple]:
    """Three wrong orders, at least one a near miss (one swap from the truth).

    Chosen so that every option has as many one-swap neighbours among the options as any other:
    with near misses alone the truth would be the one order close to all the others."""
    others = [p for p in itertools.permutations(sorted(correct)) if p != correct]
    near = [p for p in others if one_swap_apart(p, correct)]
    fallback = None
    for _ in range(tries):
        first = rng.choice(near)
        rest = rng.sample([p for p in others if p != first], 2)
        options = [correct, first, *rest]
        degrees = [sum(one_swap_apart(a, b) for b in options if b != a) for a in options]
        if len(set(degrees)) == 1:
            return [first, *rest]
        if fallback is None and degrees[0] < max(degrees):  # at least the truth is not the hub
            fallback = [first, *rest]
    return fallback or [first, *rest]


# --------------------------------------------------------------------------- wording
# Five or more paraphrases of each task's question (and of the line that says how to answer),
# one chosen by the seeded RNG and recorded as `template_id`, so a model cannot learn one form.
# Every wording asks exactly what the key computes.
TEMPLATES = {
    "event_order": (
        "These events happen in the video:\n{listing}\nWhich order of the numbered events is chronological?",
        "The video shows these events:\n{listing}\nIn which order do the numbered events happen in the video?",
        "Here are some events from the video:\n{listing}\nWhat is the chronological order of these numbered events?",
        "Each of these events is seen in the video:\n{listing}\nWhich sequence of numbers puts them in the order they happen?",
        "Consider these events from the video:\n{listing}\nWhich option lists the numbered events in the order they occur?",
    ),
    "clue_time": (
        'At what time in the video does this happen: "{clue}"?',
        'When in the video does this happen: "{clue}"?',
        'Which time range of the video shows this: "{clue}"?',
        'During which part of the video is this seen: "{clue}"?',
        'Where in the video, in time, does this take place: "{clue}"?',
    ),
    "next_event": (
        'Of the events listed below, which one comes next in the video after "{quoted}"?',
        'After "{quoted}", which of the listed events comes next in the video?',
        'Which of these listed events comes next in the video, following "{quoted}"?',
        'The video shows "{quoted}". Of the events listed, which comes next?',
        'Among the events below, which comes next in the video once "{quoted}" has happened?',
    ),
    "before_after": (
        'Does "{a}" happen before or after "{b}"?',
        'In the video, is "{a}" before or after "{b}"?',
        'Is "{a}" seen before or after "{b}" in the video?',
        'Did "{a}" take place before or after "{b}"?',
        'Does the video show "{a}" before or after it shows "{b}"?',
    ),
    "timeline": (
        "List the main events of the video in chronological order, with their times.",
        "What are the main events of the video, in the order they happen, with their times?",
        "Give the video's main events in time order, each with its time range.",
        "Describe the key events of the video chronologically, saying when each happens.",
        "Write a timeline of the video: its main events in order, with times.",
    ),
    "at_time": (
        "What happens at {time} in the video?",
        "What is seen in the video at {time}?",
        "At {time}, what is happening in the video?",
        "Which event is on screen at {time} of the video?",
        "What does the video show at {time}?",
    ),
    "gap": (
        'About how much time passes between "{a}" and "{b}" (from the start of one to the start of the other)?',
        'Roughly how long is it from the start of "{a}" to the start of "{b}" (in either order)?',
        'How much time separates the starts of "{a}" and "{b}", approximately?',
        'About how far apart in the video do "{a}" and "{b}" begin?',
        'Approximately how many minutes lie between the beginnings of "{a}" and "{b}"?',
    ),
    "summary": (
        "What happens in the video? Summarize it from beginning to end.",
        "Summarize the video from start to finish.",
        "Give a summary of the whole video, in order.",
        "Describe what happens over the course of the video.",
        "Tell what the video shows, from its beginning to its end.",
    ),
    "said_when": (
        'What is on screen when someone says "{line}"?',
        'What is seen in the video while "{line}" is said?',
        'When the words "{line}" are spoken, what does the video show?',
        'Which event is on screen as someone says "{line}"?',
        'What happens on screen at the moment "{line}" is said?',
    ),
}
ANSWER_LINES = {
    "lettered": ("Answer with the option's letter.", "Reply with the letter of the right option.",
                 "Give the letter of the correct option.", "Answer with one letter.",
                 "Choose one option and answer with its letter."),
    "before_after": ("Answer with {choices}.", "Reply {choices}.", "Answer {choices} only.",
                     "Say {choices}.", "Your answer: {choices}."),
}
SUMMARY_QUESTION = TEMPLATES["summary"][0]


@dataclass
class Wording:
    """A question's wording: its template and answer line, and their id (`template_id`)."""
    task: str
    question: int
    answer: int

    @property
    def template_id(self) -> str:
        return f"{self.task}.q{self.question}.a{self.answer}"

    def ask(self, **fields) -> str:
        return TEMPLATES[self.task][self.question].format(**fields)


def wording(task: str, rng: random.Random) -> Wording:
    lines = ANSWER_LINES["before_after" if task == "before_after" else "lettered"]
    return Wording(task, rng.randrange(len(TEMPLATES[task])), rng.randrange(len(lines)))


# --------------------------------------------------------------------------- options without tells
def tie_rank(truth_score: float, others: list[float], rng: random.Random) -> int:
    """The truth's place (0: top) among the options by score, ties broken at random."""
    above = sum(o > truth_score for o in others)
    tied = sum(o == truth_score for o in others)
    return above + rng.randrange(tied + 1)


def balanced_distractors(question: str, truth: str, pool: list[str], rank: int, rng: random.Random,
                         tries: int = 40) -> list[str] | None:
    """Three of `pool` such that the truth's place by word overlap with the question is `rank`
    (0: shares the most words; ties broken at random). The caller deals `rank` evenly, so "pick
    the option sharing most words" and "pick the one sharing fewest" are both right only by
    chance. None when no draw fits."""
    pool = [t for t in dict.fromkeys(pool) if t != truth]
    if len(pool) < 3:
        return None
    mine = overlap(question, truth)
    for _ in range(tries):
        picked = rng.sample(pool, 3)
        if tie_rank(mine, [overlap(question, t) for t in picked], rng) == rank:
            return picked
    return None


# --------------------------------------------------------------------------- the tasks
def disjoint(a: dict, b: dict) -> bool:
    """Two clues a viewer can put in order: their event spans share no moment."""
    return not overlaps(span_of(a), span_of(b))


def pair_key(a: str, b: str) -> tuple:
    return ("pair", frozenset((a, b)))


def event_order(facts, rng, target, words):
    clues, n = facts.clues, len(facts.clues)
    if n < 3:
        return None
    for _ in range(20):
        k = rng.randint(3, min(5, n))
        chosen: list[int] = []
        for i in rng.sample(range(n), n):  # clues whose spans overlap are never compared
            if all(disjoint(clues[i], clues[j]) for j in chosen):
                chosen.append(i)
            if len(chosen) == k:
                break
        chosen.sort()  # chronological
        if len(chosen) < 3 or not facts.fresh(("event_order", frozenset(clues[i]["clip_id"] for i in chosen))):
            continue
        shown = chosen[:]
        rng.shuffle(shown)  # any order: the chronological one too, as often as chance shows it (1 in k!)
        number = {idx: pos + 1 for pos, idx in enumerate(shown)}
        correct = tuple(number[idx] for idx in chosen)
        distractors = order_distractors(correct, rng)
        rng.shuffle(distractors)  # the near miss has no fixed place either
        fmt = lambda p: ", ".join(str(x) for x in p)  # noqa: E731
        listing = "\n".join(f"{pos + 1}. {clues[idx]['text']}" for pos, idx in enumerate(shown))
        evidence = [clues[i]["clip_id"] for i in chosen]
        return words.ask(listing=listing), _place(fmt(correct), [fmt(d) for d in distractors], target), evidence
    return None


def clue_time(facts, rng, target, words):
    """At what time does this clue happen? Four time ranges, the clip's among them.

    No wrong range overlaps the clue's event span (a viewer would see the event there too). The
    truth's rank among the options in time is drawn evenly (0 to 3 options earlier than it),
    then distractors are drawn to fit it, so "pick the earliest" or "the latest" is right only by
    chance. Distractors are other clues' clips first, then other windows of the video. Only clues
    not yet asked about are candidates, so retries never force a clue into the one rank it fits."""
    clues, seconds, duration = facts.clues, facts.seconds, facts.duration
    rank = rng.randrange(4)  # options earlier than the truth
    for i in rng.sample(range(len(clues)), len(clues)):
        clue = clues[i]
        if not facts.fresh(("clue_time", frozenset([clue["clip_id"]]))):
            continue
        start, end = span_of(clue)
        pool = [(c["start_s"], c["end_s"]) for j, c in enumerate(clues) if j != i]
        rng.shuffle(pool)
        # Not enough other clues: other windows of the same video.
        windows = [(k * seconds, min((k + 1) * seconds, duration)) for k in range(int(duration // seconds))]
        rng.shuffle(windows)
        earlier, later = [], []
        for a, b in pool + windows:
            text = time_range(a, b)
            if b <= min(start, clue["start_s"]) + TOUCH_S and text not in earlier:
                earlier.append(text)
            elif a >= max(end, clue["end_s"]) - TOUCH_S and text not in later:
                later.append(text)
        if len(earlier) < rank or len(later) < 3 - rank:
            continue  # this clue cannot have the drawn rank: try another
        options = earlier[:rank] + later[:3 - rank]
        rng.shuffle(options)
        return (words.ask(clue=clue["text"]), _place(time_range(clue["start_s"], clue["end_s"]), options, target),
                [clue["clip_id"]])
    return None


def next_event(facts, rng, target, words):
    """Which of these events comes next after X? The key is the next selected clue.

    X and the next clue must not overlap (else "next" is no fact), and no listed distractor overlaps
    either of them. Neighbouring events often share words, so the answer would often be the option
    sharing most words with the question: the truth's place by word overlap is dealt evenly
    (`balanced_distractors`), so neither "most similar" nor "least similar" finds it."""
    clues, n = facts.clues, len(facts.clues)
    if n < 5:
        return None
    rank = facts.ranks["next_event"].deal()
    for i in rng.sample(range(n - 1), n - 1):
        quoted, answer = clues[i], clues[i + 1]
        if not disjoint(quoted, answer) or not facts.fresh(("next_event", frozenset([quoted["clip_id"],
                                                                                    answer["clip_id"]]))):
            continue
        others = [c["text"] for j, c in enumerate(clues) if j not in (i, i + 1)
                  and disjoint(c, quoted) and disjoint(c, answer) and c["text"] not in (quoted["text"], answer["text"])]
        question = words.ask(quoted=quoted["text"])
        distractors = balanced_distractors(question, answer["text"], others, rank, rng)
        if distractors is None:
            continue
        # The key is the next of the video's selected events, often a minute or more later: the
        # wording asks for the listed event that comes next, never for what happens "right after".
        return question, _place(answer["text"], distractors, target), [quoted["clip_id"], answer["clip_id"]]
    facts.ranks["next_event"].cards.append(rank)
    return None


def before_after(facts, rng, target, words):
    """Does A happen before or after B? One question a pair of clues (with `gap`), spans apart."""
    clues = facts.clues
    pairs = [(i, j) for i, j in itertools.combinations(range(len(clues)), 2)
             if disjoint(clues[i], clues[j]) and facts.fresh(pair_key(clues[i]["clip_id"], clues[j]["clip_id"]))]
    if not pairs:
        return None
    i, j = rng.choice(pairs)  # clue i is earlier
    a, b = (clues[i], clues[j]) if target == 0 else (clues[j], clues[i])
    return words.ask(a=a["text"], b=b["text"]), ["before", "after"], [clues[i]["clip_id"], clues[j]["clip_id"]]


def timeline(clues):
    return "\n".join(f"{time_range(c['start_s'], c['end_s'])}: {c['text']}" for c in clues)


def at_time(facts, rng, target, words):
    """What happens at mm:ss? The second [t, t+1) lies inside the clue's event span and inside no
    other clue's, so the shown mm:ss names that event and no other. One question a clue."""
    clues = facts.clues
    if len(clues) < 4:
        return None
    rank = facts.ranks["at_time"].deal()
    for i in rng.sample(range(len(clues)), len(clues)):
        clue = clues[i]
        if not facts.fresh(("at_time", frozenset([clue["clip_id"]]))):
            continue
        start, end = span_of(clue)
        inside = [t for t in range(math.ceil(start), math.floor(end))
                  if not any(overlaps(span_of(c), (t, t + 1)) for j, c in enumerate(clues) if j != i)]
        if not inside:
            continue
        question = words.ask(time=clock(rng.choice(inside)))
        others = [c["text"] for j, c in enumerate(clues) if j != i and c["text"] != clue["text"]]
        distractors = balanced_distractors(question, clue["text"], others, rank, rng)
        if distractors is None:
            continue
        return question, _place(clue["text"], distractors, target), [clue["clip_id"]]
    facts.ranks["at_time"].cards.append(rank)
    return None


# Minute buckets of `gap`: fine where a minute matters, coarser where it does not.
GAP_MINUTES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 150, 180, 210, 240)
# The truth is nearer its bucket than any other bucket by at least this many minutes (15 s).
GAP_MARGIN_MIN = 0.25


def minutes_text(minutes: int) -> str:
    return "about 1 minute" if minutes == 1 else f"about {minutes} minutes"


def gap_bucket(gap_s: float) -> int | None:
    """The index in GAP_MINUTES of the bucket nearest to a gap (in minutes, not rounded), or None
    when the gap is under 30 s or no bucket is nearest by GAP_MARGIN_MIN (a gap of 2.5 minutes is
    as near "about 2" as "about 3": no question is asked about it)."""
    minutes = gap_s / 60
    if minutes < 0.5:
        return None
    near = sorted((abs(m - minutes), k) for k, m in enumerate(GAP_MINUTES))
    return near[0][1] if near[1][0] - near[0][0] >= GAP_MARGIN_MIN else None


def event_start(clue: dict) -> float:
    """When a viewer sees the clue's event begin: its span's start."""
    return span_of(clue)[0]


def gap(facts, rng, target, words):
    """About how much time passes between two clues (the starts of their events)?

    Options: 4 consecutive buckets of GAP_MINUTES, in increasing order, no longer than the video;
    the key is the bucket nearest to the true gap (the two events' start times), by at least
    GAP_MARGIN_MIN, so exactly one option is closest to the truth. The truth sits at the dealt
    letter: the bucket is drawn evenly from those that fit there, then a pair of clues in it,
    so the options alone do not say where the truth is. One question a pair (with `before_after`)."""
    clues, duration = facts.clues, facts.duration
    usable = sum(1 for m in GAP_MINUTES if m * 60 <= duration)
    if usable < 4:
        return None
    pairs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, j in itertools.combinations(range(len(clues)), 2):
        k = gap_bucket(abs(event_start(clues[j]) - event_start(clues[i])))
        if k is not None and clues[i]["text"] != clues[j]["text"] and disjoint(clues[i], clues[j]) \
                and facts.fresh(pair_key(clues[i]["clip_id"], clues[j]["clip_id"])):
            pairs[k].append((i, j))
    fitting = [k for k in sorted(pairs) if target <= k <= usable - 4 + target]
    if not fitting:
        return None
    k = rng.choice(fitting)
    i, j = rng.choice(pairs[k])
    a, b = (clues[i], clues[j]) if rng.random() < 0.5 else (clues[j], clues[i])  # either order: no order given away
    options = [minutes_text(m) for m in GAP_MINUTES[k - target:k - target + 4]]
    return words.ask(a=a["text"], b=b["text"]), options, [clues[i]["clip_id"], clues[j]["clip_id"]]


def video_summary(summaries: list[dict]) -> dict | None:
    """The video's `level == "video"` summaries row with text, or None."""
    return next((s for s in summaries if s.get("level") == "video" and (s.get("text") or "").strip()), None)


# A quoted line names one moment: at least 3 words (not "Yeah."), at most 30.
LINE_WORDS = (3, 30)
# A key event sharing a run of this many words with the line quotes it: the question would be
# answered by reading, not by watching.
QUOTE_RUN = 4


def subtitle_track(subtitles: list[dict]) -> list[dict]:
    """The track `said_when` quotes, in time order: the one the caption and clue prompts read
    (stages/cues.py `preferred_track`: the most trusted source)."""
    return preferred_track(subtitles)


def spoken(text: str) -> str:
    """A cue's text as quoted: one line, double quotes made single."""
    return " ".join((text or "").replace('"', "'").split())


def quotes(text: str, line: str, run: int = QUOTE_RUN) -> bool:
    """`text` repeats `run` words in a row of `line` (case and punctuation aside)."""
    def runs(words):
        return {tuple(words[k:k + run]) for k in range(len(words) - run + 1)}
    return bool(runs(re.findall(r"\w+", text.lower())) & runs(re.findall(r"\w+", line.lower())))


def spoken_lines(cues: list[dict], scenes: list[dict], subtitles: list[dict]) -> list[tuple[str, dict, dict]]:
    """(line, clip, cue) for each cue of the track of LINE_WORDS words lying inside one captioned
    clip's window and its key event's span, whose words are said in no other clip (in any track:
    a line said twice names no one moment)."""
    def holder(start: float, end: float) -> dict | None:
        return next((c for c in scenes if c["start_s"] <= start and end <= c["end_s"]), None)

    places: dict[str, set] = defaultdict(set)
    for cue in subtitles:
        middle = (cue["start_s"] + cue["end_s"]) / 2
        clip = holder(middle, middle)
        places[spoken(cue["text"]).lower()].add(clip["clip_id"] if clip else None)
    out = []
    for cue in cues:
        line = spoken(cue["text"])
        clip = holder(cue["start_s"], cue["end_s"]) if cue["end_s"] > cue["start_s"] else None
        if clip is None or not (LINE_WORDS[0] <= len(line.split()) <= LINE_WORDS[1]) \
                or places[line.lower()] != {clip["clip_id"]}:
            continue
        start, end = span_of(clip)
        if start <= cue["start_s"] and cue["end_s"] <= end:  # on screen while it is said
            out.append((line, clip, cue))
    return out


def said_when(facts, rng, target, words):
    """What is on screen when a line is said? The options are key events of captioned clips; the
    key is the key event of the clip holding the cue, whose event span holds the cue too. A key
    event quoting the line is not used. Distractors are clips whose spans do not overlap the cue
    (they show something else then), each with a different key event."""
    scenes = [c for c in facts.captions if (c.get("key_event") or "").strip()]
    lines = [(line, clip, cue) for line, clip, cue in spoken_lines(facts.cues, scenes, facts.subtitles)
             if not quotes(clip["key_event"], line) and facts.fresh(("said_when", frozenset([clip["clip_id"]])))]
    if not lines:
        return None
    rank = facts.ranks["said_when"].deal()
    for line, clip, cue in rng.sample(lines, len(lines)):
        key = clip["key_event"].strip()
        others = [c["key_event"].strip() for c in scenes
                  if not overlaps(span_of(c), (cue["start_s"], cue["end_s"])) and c["key_event"].strip() != key
                  and not quotes(c["key_event"], line)]
        question = words.ask(line=line)
        distractors = balanced_distractors(question, key, others, rank, rng)
        if distractors is None:
            continue
        return question, _place(key, distractors, target), [clip["clip_id"]]
    facts.ranks["said_when"].cards.append(rank)
    return None


def conversation(question: str, options: list[str], answer: str, lettered: bool,
                 answer_line: str = ANSWER_LINES["lettered"][0]) -> list[dict]:
    if lettered:
        human = "<video>\n" + question + "\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options)) + \
            "\n" + answer_line
        reply = f"({answer})"
    elif options:
        human = "<video>\n" + question + "\n" + answer_line.format(choices=" or ".join(options))
        reply = answer
    else:
        human, reply = "<video>\n" + question, answer
    return [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]


@dataclass
class VideoFacts:
    """What one video's questions are built from; clues sorted by time."""
    clues: list[dict]
    seconds: float
    duration: float
    captions: list[dict] = field(default_factory=list)  # clip_id, start_s, end_s, key_event, event span
    cues: list[dict] = field(default_factory=list)  # one subtitle track (subtitle_track)
    subtitles: list[dict] = field(default_factory=list)  # every cue of every track
    summary: dict | None = None  # the level == "video" summaries row
    # What was asked so far: (task, or "pair" for before_after and gap; its evidence clip ids).
    asked: set = field(default_factory=set)
    # The truth's place by word overlap, dealt evenly per text-option task (balanced_distractors).
    ranks: dict = field(default_factory=dict)

    def fresh(self, key: tuple) -> bool:
        return key not in self.asked


LETTERED = {"event_order": event_order, "clue_time": clue_time, "next_event": next_event, "at_time": at_time,
            "gap": gap, "said_when": said_when}
OPEN = ("timeline", "summary")
# Tasks whose key fits only some letters (a short video has no long gap): they try each letter left in the deck.
LETTER_BOUND = frozenset({"gap"})


def tasks_without_input(tasks: list[str], summaries: list[dict], subtitles: list[dict]) -> list[str]:
    """The configured tasks a video lacks the input of: `summary` without a video summary,
    `said_when` without a subtitle cue. They are not made for it, which is no error."""
    missing = {"summary": video_summary(summaries) is None, "said_when": not subtitles}
    return [t for t in tasks if missing.get(t)]


def _lettered(task: str, facts: VideoFacts, rng: random.Random, letters: Deck, words: Wording):
    """(question, options, evidence, index) with the key at a dealt letter, or None (the letter
    goes back on the deck, so the spread stays even)."""
    target = letters.deal()
    built = LETTERED[task](facts, rng, target, words)
    if built is None and task in LETTER_BOUND:
        for other in reversed(list(letters.cards)):  # the letters left in this deck, in dealing order
            built = LETTERED[task](facts, rng, other, words)
            if built is not None:
                letters.cards.remove(other)
                letters.cards.append(target)
                target = other
                break
    if built is None:
        letters.cards.append(target)
        return None
    return (*built, target)


def question_key(task: str, evidence: list[str]) -> tuple:
    """What makes two questions the same: the task and its evidence clues (`before_after` and `gap`
    share one key a pair of clues, in either order)."""
    return pair_key(*evidence) if task in ("before_after", "gap") else (task, frozenset(evidence))


def _answer_source(task: str, summary: dict | None) -> dict:
    if task != "summary":
        return {"answer_source": "timestamps", "answer_engine": None, "answer_model": None}
    engine = summary.get("engine")
    return {"answer_source": "stand-in" if engine in STAND_IN_ENGINES else "model",
            "answer_engine": engine, "answer_model": summary.get("model")}


def build_questions(video_id: str, clues: list[dict], tasks: list[str], per_task: int, seed: int,
                    clip_seconds: float, duration_s: float, val_fraction: float,
                    provenance: dict | None = None, *, captions: list[dict] | None = None,
                    summaries: list[dict] | None = None, subtitles: list[dict] | None = None) -> list[dict]:
    """Every question for one video; `clues` need clip_id, start_s, end_s, text (and their event
    span, event_start_s / event_end_s, where known); `provenance` holds caption_engine,
    caption_model, clue_engine, clue_model. `captions` (clip_id, start_s, end_s, key_event, event
    span), `summaries` and `subtitles` are the video's rows of those tables."""
    clues = sorted(clues, key=lambda c: (c["start_s"], c["clip_id"]))
    captions = sorted(captions or [], key=lambda c: (c["start_s"], c["clip_id"]))
    if len(clues) < 2:
        return []  # no task can be built on one event
    rng = random.Random(f"{seed}:{video_id}")
    facts = VideoFacts(clues, clip_seconds, duration_s, captions, subtitle_track(subtitles or []),
                       list(subtitles or []), video_summary(summaries or []),
                       ranks={task: Deck(rng, 4) for task in ("next_event", "at_time", "said_when")})
    # Evidence windows are the evidence events' spans: a frame shown from there shows the event.
    span = {c["clip_id"]: list(span_of(c)) for c in captions + clues}
    letters, sides = Deck(rng, 4), Deck(rng, 2)
    split = split_for(video_id, val_fraction)
    skipped = set(tasks_without_input(tasks, summaries or [], subtitles or []))
    rows = []
    for task in tasks:
        if task in skipped:
            continue
        made = 0
        count = 1 if task in OPEN else per_task
        for _ in range(count * 6):
            if made >= count:
                break
            words = wording(task, rng)
            if task == "timeline":
                question, answer = words.ask(), timeline(clues)
                options, index, evidence = [], -1, [c["clip_id"] for c in clues]
            elif task == "summary":
                # The evidence of a summary is the whole video; its clues stand for it.
                question, answer = words.ask(), facts.summary["text"].strip()
                options, index, evidence = [], -1, [c["clip_id"] for c in clues]
            elif task == "before_after":
                target = sides.deal()
                built = before_after(facts, rng, target, words)
                if built is None:
                    sides.cards.append(target)
                    break
                question, options, evidence = built
                index, answer = target, options[target]
            else:
                built = _lettered(task, facts, rng, letters, words)
                if built is None:
                    break
                question, options, evidence, index = built
                answer = LETTERS[index]
            key = question_key(task, evidence)
            if key in facts.asked:  # the builders choose among fresh evidence; this is the last guard
                if index >= 0:
                    (letters if task in LETTERED else sides).cards.append(index)
                continue
            facts.asked.add(key)
            made += 1
            lines = ANSWER_LINES["before_after" if task == "before_after" else "lettered"]
            rows.append({
                "question_id": f"{video_id}-{task}-{made:02d}", "video_id": video_id, "task": task,
                "question": question, "options": options, "answer": answer, "answer_index": index,
                "evidence_clip_ids": evidence, "evidence_windows_s": [span[c] for c in evidence], "split": split,
                "conversations": conversation(question, options, answer, task in LETTERED, lines[words.answer]),
                "template_id": words.template_id,
                "blind_correct": None, **(provenance or {}), **_answer_source(task, facts.summary),
            })
    return rows


def provenance(captions: list[dict], clues: list[dict]) -> dict:
    """The engines and models that wrote a video's captions and clues (as their rows record them)."""
    caption, clue = (captions or [{}])[0], (clues or [{}])[0]
    return {"caption_engine": caption.get("engine"), "caption_model": caption.get("model"),
            "clue_engine": clue.get("engine"), "clue_model": clue.get("model")}


class QuestionsStage(Stage):
    name = "questions"
    schema = QUESTIONS_SCHEMA

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        cfg = self.config
        clues = item["clues"]
        rows = build_questions(item["video_id"], clues, list(cfg.questions.tasks), cfg.questions.per_task,
                               cfg.questions.seed, cfg.clips.seconds, float(item["video"]["duration_s"] or 0.0),
                               cfg.shards.val_fraction, provenance(item.get("caption") or [], clues),
                               captions=item.get("caption") or [], summaries=item.get("summaries") or [],
                               subtitles=item.get("subtitles") or [])
        if not rows:
            yield ErrorRow(item["video_id"], item["source"], "no_questions",
                           f"{len(clues)} clues make none of the tasks {', '.join(cfg.questions.tasks)}")
        yield from rows
