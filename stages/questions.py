"""Questions: a video's clues in, VICO question sets out, every answer key from timestamps.

Nine tasks (vico.md), chosen by `questions.tasks`, `questions.per_task` of each per video:

- `event_order`, `clue_time`, `next_event`, `before_after`, `timeline`: from the clues;
- `at_time`: what happens at mm:ss? The options are clues; the key is the clue whose clip
  window holds that time (a whole second at least one second inside it);
- `gap`: about how much time passes between two clues? Minute buckets (`gap_bucket`);
- `summary`: an open question answered by the video summary (the `summaries` table's
  `level == "video"` row), the one answer a model wrote: `answer_source` says
  `model`, or `stand-in` when a stand-in engine (template) wrote it;
- `said_when`: what is on screen when "..." is said? A subtitle cue inside one captioned
  clip; the options are key events of captioned clips, the key is that clip's.

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
evidence clips and their windows, its split (train or val, by a hash of the
video id, so a video is never split), the engines that made its captions
and clues, and where its answer comes from (`answer_source`: `timestamps`,
`model` or `stand-in`, with `answer_engine` / `answer_model` for written answers).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

from stages.base import ErrorRow, Stage
from stages.common import QUESTIONS_SCHEMA
from stages.cues import preferred_track
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


def event_order(clues, rng, target, seconds, duration):
    n = len(clues)
    if n < 3:
        return None
    k = rng.randint(3, min(5, n))
    chosen = sorted(rng.sample(range(n), k))  # chronological
    shown = chosen[:]
    rng.shuffle(shown)  # any order: the chronological one too, as often as chance shows it (1 in k!)
    number = {idx: pos + 1 for pos, idx in enumerate(shown)}
    correct = tuple(number[idx] for idx in chosen)
    distractors = order_distractors(correct, rng)
    rng.shuffle(distractors)  # the near miss has no fixed place either
    fmt = lambda p: ", ".join(str(x) for x in p)
    listing = "\n".join(f"{pos + 1}. {clues[idx]['text']}" for pos, idx in enumerate(shown))
    question = (f"These events happen in the video:\n{listing}\n"
                "Which order of the numbered events is chronological?")
    return question, _place(fmt(correct), [fmt(d) for d in distractors], target), [clues[i]["clip_id"] for i in chosen]


def clue_time(clues, rng, target, seconds, duration, asked=frozenset()):
    """At what time does this clue happen? Four time ranges, the clip's among them.

    The truth's rank among the options in time is drawn evenly (0 to 3 options earlier than it),
    then distractors are drawn to fit it, so "pick the earliest" or "the latest" is right only by
    chance. Distractors are other clues' clips first, then other windows of the video. Only clues
    not yet `asked` about are candidates, so retries never force a clue into the one rank it fits."""
    rank = rng.randrange(4)  # options earlier than the truth
    for i in rng.sample(range(len(clues)), len(clues)):
        clue = clues[i]
        question = f'At what time in the video does this happen: "{clue["text"]}"?'
        if question in asked:
            continue
        pool = [(c["start_s"], c["end_s"]) for j, c in enumerate(clues) if j != i]
        rng.shuffle(pool)
        # Not enough other clues: other windows of the same video that do not overlap this clue.
        windows = [(k * seconds, min((k + 1) * seconds, duration)) for k in range(int(duration // seconds))]
        rng.shuffle(windows)
        earlier, later = [], []
        for start, end in pool + windows:
            text = time_range(start, end)
            if end <= clue["start_s"] and text not in earlier:
                earlier.append(text)
            elif start >= clue["end_s"] and text not in later:
                later.append(text)
        if len(earlier) < rank or len(later) < 3 - rank:
            continue  # this clue cannot have the drawn rank: try another
        options = earlier[:rank] + later[:3 - rank]
        rng.shuffle(options)
        return question, _place(time_range(clue["start_s"], clue["end_s"]), options, target), [clue["clip_id"]]
    return None


def _alike_distractors(quoted: str, answer: str, others: list[str], above: int | None) -> list[str] | None:
    """Three of `others`, exactly `above` of them sharing more words with `quoted` than `answer`
    does (None when `others` cannot give that); `above=None`: three sharing exactly as many words
    as the answer, so the four tie and "pick the most similar" is a plain guess."""
    mine = overlap(quoted, answer)
    if above is None:
        tied = [t for t in others if overlap(quoted, t) == mine]
        return tied[:3] if len(tied) >= 3 else None
    more = [t for t in others if overlap(quoted, t) > mine]
    below = sorted((t for t in others if overlap(quoted, t) <= mine), key=lambda t: overlap(quoted, t) == mine)
    if len(more) < above or len(below) < 3 - above:
        return None
    return more[:above] + below[:3 - above]


def next_event(clues, rng, target, seconds, duration, asked=frozenset()):
    """Which of these events comes next after X? The key is the next selected clue.

    Neighbouring events often share words, so the answer would often be the option sharing most
    words with X. The number of distractors sharing more words with X than the answer does is
    drawn evenly (0 to 3) and distractors are drawn to fit it, so "pick the most similar option"
    is right only by chance. When no pair fits the drawn number, a pair whose options all share as
    many words with X will do (a tie is a guess). Only pairs not yet `asked` about are candidates."""
    n = len(clues)
    if n < 5:
        return None
    pairs = rng.sample(range(n - 1), n - 1)
    for above in (rng.randrange(4), None):
        for i in pairs:
            quoted, answer = clues[i]["text"], clues[i + 1]["text"]
            question = f'Of the events listed below, which one comes next in the video after "{quoted}"?'
            if question in asked:
                continue
            others = [t for t in dict.fromkeys(c["text"] for c in clues) if t not in (quoted, answer)]
            rng.shuffle(others)
            distractors = _alike_distractors(quoted, answer, others, above)
            if distractors is None:
                continue
            rng.shuffle(distractors)
            # The key is the next of the video's selected events, often a minute or more later: the
            # wording asks for the listed event that comes next, never for what happens "right after".
            return question, _place(answer, distractors, target), [clues[i]["clip_id"], clues[i + 1]["clip_id"]]
    return None


def before_after(clues, rng, target, seconds, duration):
    if len(clues) < 2:
        return None
    i, j = sorted(rng.sample(range(len(clues)), 2))  # clue i is earlier
    a, b = (clues[i], clues[j]) if target == 0 else (clues[j], clues[i])
    question = f'Does "{a["text"]}" happen before or after "{b["text"]}"?'
    return question, ["before", "after"], [clues[i]["clip_id"], clues[j]["clip_id"]]


def timeline(clues):
    answer = "\n".join(f"{time_range(c['start_s'], c['end_s'])}: {c['text']}" for c in clues)
    return "List the main events of the video in chronological order, with their times.", answer


def at_time(clues, rng, target, seconds, duration):
    """What happens at mm:ss? The time is a whole second at least one second inside the clue's
    window and inside no other clue's, so the shown mm:ss names that clip and no other."""
    if len(clues) < 4:
        return None
    i = rng.randrange(len(clues))
    clue = clues[i]
    inside = [t for t in range(math.floor(clue["start_s"]) + 1, math.ceil(clue["end_s"]))
              if not any(c["start_s"] <= t <= c["end_s"] for j, c in enumerate(clues) if j != i)]
    others = list(dict.fromkeys(c["text"] for j, c in enumerate(clues) if j != i and c["text"] != clue["text"]))
    if not inside or len(others) < 3:
        return None
    question = f"What happens at {clock(rng.choice(inside))} in the video?"
    return question, _place(clue["text"], rng.sample(others, 3), target), [clue["clip_id"]]


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


def gap(clues, rng, target, seconds, duration):
    """About how much time passes between two clues (start to start)?

    Options: 4 consecutive buckets of GAP_MINUTES, in increasing order, no longer than the video;
    the key is the bucket nearest to the true gap (the two clips' start times), by at least
    GAP_MARGIN_MIN, so exactly one option is closest to the truth. The truth sits at the dealt
    letter: the bucket is drawn evenly from those that fit there, then a pair of clues in it,
    so the options alone do not say where the truth is."""
    usable = sum(1 for m in GAP_MINUTES if m * 60 <= duration)
    if usable < 4:
        return None
    pairs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, j in itertools.combinations(range(len(clues)), 2):
        k = gap_bucket(abs(clues[j]["start_s"] - clues[i]["start_s"]))
        if k is not None and clues[i]["text"] != clues[j]["text"]:
            pairs[k].append((i, j))
    fitting = [k for k in sorted(pairs) if target <= k <= usable - 4 + target]
    if not fitting:
        return None
    k = rng.choice(fitting)
    i, j = rng.choice(pairs[k])
    a, b = (clues[i], clues[j]) if rng.random() < 0.5 else (clues[j], clues[i])  # either order: no order given away
    question = (f'About how much time passes between "{a["text"]}" and "{b["text"]}" '
                "(from the start of one to the start of the other)?")
    options = [minutes_text(m) for m in GAP_MINUTES[k - target:k - target + 4]]
    return question, options, [clues[i]["clip_id"], clues[j]["clip_id"]]


SUMMARY_QUESTION = "What happens in the video? Summarize it from beginning to end."


def video_summary(summaries: list[dict]) -> dict | None:
    """The video's `level == "video"` summaries row with text, or None."""
    return next((s for s in summaries if s.get("level") == "video" and (s.get("text") or "").strip()), None)


# A quoted line names one moment: at least 3 words (not "Yeah."), at most 30.
LINE_WORDS = (3, 30)


def subtitle_track(subtitles: list[dict]) -> list[dict]:
    """The track `said_when` quotes, in time order: the one the caption and clue prompts read
    (stages/cues.py `preferred_track`: the most trusted source)."""
    return preferred_track(subtitles)


def spoken(text: str) -> str:
    """A cue's text as quoted: one line, double quotes made single."""
    return " ".join((text or "").replace('"', "'").split())


def spoken_lines(cues: list[dict], scenes: list[dict], subtitles: list[dict]) -> list[tuple[str, dict]]:
    """(line, clip) for each cue of the track of LINE_WORDS words lying inside one captioned clip,
    whose words are said in no other clip (in any track: a line said twice names no one moment)."""
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
        if clip is not None and LINE_WORDS[0] <= len(line.split()) <= LINE_WORDS[1] \
                and places[line.lower()] == {clip["clip_id"]}:
            out.append((line, clip))
    return out


def said_when(facts: "VideoFacts", rng, target):
    """What is on screen when a line is said? The options are key events of captioned clips; the
    key is the key event of the clip holding the cue. Distractors are clips further than a clip
    away (a neighbour often shows the same scene), each with a different key event."""
    scenes = [c for c in facts.captions if (c.get("key_event") or "").strip()]
    lines = spoken_lines(facts.cues, scenes, facts.subtitles)
    if not lines:
        return None
    line, clip = rng.choice(lines)
    key = clip["key_event"].strip()
    others = list(dict.fromkeys(c["key_event"].strip() for c in scenes
                                if abs(c["start_s"] - clip["start_s"]) > 1.5 * facts.seconds
                                and c["key_event"].strip() != key))
    if len(others) < 3:
        return None
    question = f'What is on screen when someone says "{line}"?'
    return question, _place(key, rng.sample(others, 3), target), [clip["clip_id"]]


def conversation(question: str, options: list[str], answer: str, lettered: bool) -> list[dict]:
    if lettered:
        human = "<video>\n" + question + "\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options)) + \
            "\nAnswer with the option's letter."
        reply = f"({answer})"
    elif options:
        human = "<video>\n" + question + f"\nAnswer with {' or '.join(options)}."
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
    captions: list[dict] = field(default_factory=list)  # clip_id, start_s, end_s, key_event
    cues: list[dict] = field(default_factory=list)  # one subtitle track (subtitle_track)
    subtitles: list[dict] = field(default_factory=list)  # every cue of every track
    summary: dict | None = None  # the level == "video" summaries row
    asked: set[str] = field(default_factory=set)  # the questions made so far


def _on_clues(build, fresh: bool = False):
    """A task built from the clues alone, called like the others; a `fresh` builder is also told the
    questions already made, to choose among clues not asked about yet."""
    if fresh:
        return lambda facts, rng, target: build(facts.clues, rng, target, facts.seconds, facts.duration, facts.asked)
    return lambda facts, rng, target: build(facts.clues, rng, target, facts.seconds, facts.duration)


LETTERED = {"event_order": _on_clues(event_order), "clue_time": _on_clues(clue_time, fresh=True),
            "next_event": _on_clues(next_event, fresh=True), "at_time": _on_clues(at_time), "gap": _on_clues(gap),
            "said_when": said_when}
OPEN = ("timeline", "summary")
# Tasks whose key fits only some letters (a short video has no long gap): they try each letter left in the deck.
LETTER_BOUND = frozenset({"gap"})


def tasks_without_input(tasks: list[str], summaries: list[dict], subtitles: list[dict]) -> list[str]:
    """The configured tasks a video lacks the input of: `summary` without a video summary,
    `said_when` without a subtitle cue. They are not made for it, which is no error."""
    missing = {"summary": video_summary(summaries) is None, "said_when": not subtitles}
    return [t for t in tasks if missing.get(t)]


def _lettered(task: str, facts: VideoFacts, rng: random.Random, letters: Deck):
    """(question, options, evidence, index) with the key at a dealt letter, or None (the letter
    goes back on the deck, so the spread stays even)."""
    target = letters.deal()
    built = LETTERED[task](facts, rng, target)
    if built is None and task in LETTER_BOUND:
        for other in reversed(list(letters.cards)):  # the letters left in this deck, in dealing order
            built = LETTERED[task](facts, rng, other)
            if built is not None:
                letters.cards.remove(other)
                letters.cards.append(target)
                target = other
                break
    if built is None:
        letters.cards.append(target)
        return None
    return (*built, target)


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
    """Every question for one video; `clues` need clip_id, start_s, end_s, text; `provenance`
    holds caption_engine, caption_model, clue_engine, clue_model. `captions` (clip_id, start_s,
    end_s, key_event), `summaries` and `subtitles` are the video's rows of those tables."""
    clues = sorted(clues, key=lambda c: (c["start_s"], c["clip_id"]))
    captions = sorted(captions or [], key=lambda c: (c["start_s"], c["clip_id"]))
    facts = VideoFacts(clues, clip_seconds, duration_s, captions, subtitle_track(subtitles or []),
                       list(subtitles or []), video_summary(summaries or []))
    window = {c["clip_id"]: [float(c["start_s"]), float(c["end_s"])] for c in captions + clues}
    if len(clues) < 2:
        return []  # no task can be built on one event
    rng = random.Random(f"{seed}:{video_id}")
    letters, sides = Deck(rng, 4), Deck(rng, 2)
    split = split_for(video_id, val_fraction)
    skipped = set(tasks_without_input(tasks, summaries or [], subtitles or []))
    rows = []
    for task in tasks:
        if task in skipped:
            continue
        made: set[str] = set()
        count = 1 if task in OPEN else per_task
        for _ in range(count * 6):
            if len(made) >= count:
                break
            if task == "timeline":
                question, answer = timeline(clues)
                options, index, evidence = [], -1, [c["clip_id"] for c in clues]
            elif task == "summary":
                # The evidence of a summary is the whole video; its clues stand for it.
                question, answer = SUMMARY_QUESTION, facts.summary["text"].strip()
                options, index, evidence = [], -1, [c["clip_id"] for c in clues]
            elif task == "before_after":
                target = sides.deal()
                built = before_after(clues, rng, target, clip_seconds, duration_s)
                if built is None:
                    break
                question, options, evidence = built
                index, answer = target, options[target]
            else:
                built = _lettered(task, facts, rng, letters)
                if built is None:
                    break
                question, options, evidence, index = built
                answer = LETTERS[index]
            if question in made:
                if task in LETTERED:
                    letters.cards.append(index)
                elif task == "before_after":
                    sides.cards.append(index)
                continue
            made.add(question)
            facts.asked.add(question)
            rows.append({
                "question_id": f"{video_id}-{task}-{len(made):02d}", "video_id": video_id, "task": task,
                "question": question, "options": options, "answer": answer, "answer_index": index,
                "evidence_clip_ids": evidence, "evidence_windows_s": [window[c] for c in evidence], "split": split,
                "conversations": conversation(question, options, answer, task in LETTERED),
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
