"""Questions: a video's clues in, VICO question sets out, every answer key from timestamps.

Five tasks (vico.md): `event_order`, `clue_time`, `next_event`,
`before_after`, `timeline`, chosen by `questions.tasks`, `questions.per_task`
of each per video. Options and distractors come from the same video. The
correct option's letter is dealt from shuffled decks of A-D (a seeded RNG per
video), so letters are spread evenly within every video and over the
dataset. Each question comes with its LLaVA-style conversation (the
`<video>` placeholder first) and its split (train or val, by a hash of the
video id, so a video is never split).
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
    ("split", pa.string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
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


def event_order(clues, rng, target, seconds, duration):
    n = len(clues)
    if n < 3:
        return None
    k = rng.randint(3, min(5, n))
    chosen = sorted(rng.sample(range(n), k))  # chronological
    shown = chosen[:]
    for _ in range(10):  # shown shuffled, not already in order
        rng.shuffle(shown)
        if shown != chosen:
            break
    number = {idx: pos + 1 for pos, idx in enumerate(shown)}
    correct = tuple(number[idx] for idx in chosen)
    others = [p for p in itertools.permutations(range(1, k + 1)) if p != correct]
    distractors = rng.sample(others, 3)
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
    question = f'What happens next in the video, right after this: "{clues[i]["text"]}"?'
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
                    clip_seconds: float, duration_s: float, val_fraction: float) -> list[dict]:
    """Every question for one video; `clues` need clip_id, start_s, end_s, text."""
    clues = sorted(clues, key=lambda c: (c["start_s"], c["clip_id"]))
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
                "evidence_clip_ids": evidence, "split": split,
                "conversations": conversation(question, options, answer, task in LETTERED),
            })
    return rows


class QuestionsStage(Stage):
    name = "questions"
    schema = QUESTIONS_SCHEMA

    def process(self, item: dict) -> Iterator[dict | ErrorRow]:
        cfg = self.config
        clues = item["clues"]
        rows = build_questions(item["video_id"], clues, list(cfg.questions.tasks), cfg.questions.per_task,
                               cfg.questions.seed, cfg.clips.seconds, float(item["video"]["duration_s"] or 0.0),
                               cfg.shards.val_fraction)
        if not rows:
            yield ErrorRow(item["video_id"], item["source"], "no_questions",
                           f"{len(clues)} clues make none of the tasks {', '.join(cfg.questions.tasks)}")
        yield from rows
