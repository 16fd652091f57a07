"""Questions: a video's clues in, VICO question sets out, every answer key from timestamps.

Five tasks (vico.md): `event_order`, `clue_time`, `next_event`,
`before_after`, `timeline`, chosen by `questions.tasks`, `questions.per_task`
of each per video. Options and distractors come from the same video. The
correct option's letter is dealt from shuffled decks of A-D (a seeded RNG per
video), so letters are spread evenly within every video and over the
dataset. The wording says exactly what the key computes (`next_event` asks
for the listed event that comes next, not what happens "right after"), and
no option stands out by its form: the chronological order is shown as often
as chance shows it, and `event_order` distractors include a near miss (one
swap from the truth) without making the truth the hub of the options.

Each question comes with its conversation (the `<video>` placeholder, then the
question; consumers add the time header, vico_pipeline/samples.py), its
evidence clips and their windows, its split (train or val, by a hash of the
video id, so a video is never split), and the engines that made its captions
and clues.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from typing import Iterator

import pyarrow as pa

from stages.base import ErrorRow, Stage
from stages.caption import clock

LETTERS = "ABCD"

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
    # [start_s, end_s] of each evidence clip, in the order of evidence_clip_ids.
    ("evidence_windows_s", pa.list_(pa.list_(pa.float64()))),
    ("split", pa.string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
    # Rotations of the options a model answered right without the video; filled by the blind stage.
    ("blind_correct", pa.int32()),
    # Provenance: what made the captions and the clues this question stands on.
    ("caption_engine", pa.string()),
    ("caption_model", pa.string()),
    ("clue_engine", pa.string()),
    ("clue_model", pa.string()),
])


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


def clue_time(clues, rng, target, seconds, duration):
    i = rng.randrange(len(clues))
    clue = clues[i]
    correct = time_range(clue["start_s"], clue["end_s"])
    pool = [time_range(c["start_s"], c["end_s"]) for j, c in enumerate(clues) if j != i]
    rng.shuffle(pool)
    # Not enough other clues: other windows of the same video that do not overlap this clue.
    windows = [time_range(k * seconds, min((k + 1) * seconds, duration)) for k in range(int(duration // seconds))
               if (k + 1) * seconds <= clue["start_s"] or k * seconds >= clue["end_s"]]
    rng.shuffle(windows)
    distractors = []
    for text in pool + windows:
        if text != correct and text not in distractors:
            distractors.append(text)
    if len(distractors) < 3:
        return None
    question = f'At what time in the video does this happen: "{clue["text"]}"?'
    return question, _place(correct, distractors[:3], target), [clue["clip_id"]]


def next_event(clues, rng, target, seconds, duration):
    n = len(clues)
    if n < 5:
        return None
    i = rng.randrange(n - 1)
    others = [c["text"] for j, c in enumerate(clues) if j not in (i, i + 1)]
    distractors = rng.sample(others, 3)
    # The key is the next of the video's selected events, often a minute or more later: the wording
    # asks for the listed event that comes next, never for what happens "right after".
    question = f'Of the events listed below, which one comes next in the video after "{clues[i]["text"]}"?'
    return question, _place(clues[i + 1]["text"], distractors, target), [clues[i]["clip_id"], clues[i + 1]["clip_id"]]


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


LETTERED = {"event_order": event_order, "clue_time": clue_time, "next_event": next_event}


def build_questions(video_id: str, clues: list[dict], tasks: list[str], per_task: int, seed: int,
                    clip_seconds: float, duration_s: float, val_fraction: float,
                    provenance: dict | None = None) -> list[dict]:
    """Every question for one video; `clues` need clip_id, start_s, end_s, text; `provenance`
    holds caption_engine, caption_model, clue_engine, clue_model."""
    clues = sorted(clues, key=lambda c: (c["start_s"], c["clip_id"]))
    window = {c["clip_id"]: [float(c["start_s"]), float(c["end_s"])] for c in clues}
    if len(clues) < 2:
        return []  # no task can be built on one event
    rng = random.Random(f"{seed}:{video_id}")
    letters, sides = Deck(rng, 4), Deck(rng, 2)
    split = split_for(video_id, val_fraction)
    rows = []
    for task in tasks:
        made: set[str] = set()
        count = 1 if task == "timeline" else per_task
        for _ in range(count * 6):
            if len(made) >= count:
                break
            if task == "timeline":
                if len(clues) < 2:
                    break
                question, answer = timeline(clues)
                options, index, evidence = [], -1, [c["clip_id"] for c in clues]
            elif task == "before_after":
                target = sides.deal()
                built = before_after(clues, rng, target, clip_seconds, duration_s)
                if built is None:
                    break
                question, options, evidence = built
                index, answer = target, options[target]
            else:
                target = letters.deal()
                built = LETTERED[task](clues, rng, target, clip_seconds, duration_s)
                if built is None:
                    letters.cards.append(target)  # the letter is dealt again, the spread stays even
                    break
                question, options, evidence = built
                index, answer = target, LETTERS[target]
            if question in made:
                if task in LETTERED:
                    letters.cards.append(index)
                elif task == "before_after":
                    sides.cards.append(index)
                continue
            made.add(question)
            rows.append({
                "question_id": f"{video_id}-{task}-{len(made):02d}", "video_id": video_id, "task": task,
                "question": question, "options": options, "answer": answer, "answer_index": index,
                "evidence_clip_ids": evidence, "evidence_windows_s": [window[c] for c in evidence], "split": split,
                "conversations": conversation(question, options, answer, task in LETTERED),
                "blind_correct": None, **(provenance or {}),
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
                               cfg.shards.val_fraction, provenance(item.get("caption") or [], clues))
        if not rows:
            yield ErrorRow(item["video_id"], item["source"], "no_questions",
                           f"{len(clues)} clues make none of the tasks {', '.join(cfg.questions.tasks)}")
        yield from rows
