"""How much of a version's answer keys a model could get without learning the video.

    python bench/leakage.py VERSION [VERSION ...] [--json] [--seed 0] [--before-blind]

For each version (e.g. the same run with `blind.enabled=false`, then with the filter):

- per task, the accuracy of each trivial rule that reads only the question's text, and of its
  inverse: `longest` / `shortest` option, `most_overlap` / `least_overlap` (words shared with
  the question), `earliest` / `latest` time among options that carry one, `identity` /
  `never_identity` (the order 1, 2, 3, ... / any other); a tie counts as a uniform guess among
  the tied options, so a rule that cannot tell the options apart scores chance. A rule far BELOW
  chance is a tell too (its inverse wins): the goal is every rule within chance ± 0.05.
- per task, whether the wording (`template_id`) tells the answer: answering each question with
  the commonest answer of the other questions of its wording (leave one out), against chance.
- cross-turn leakage: the share of turns whose answer follows from the answers of earlier
  turns of the same conversation, with one question a sample (the shards), with the trainer's
  packing (`samples.pack_questions`, `train.pack_questions: true`), and with the old packing
  (all of a video's questions in one conversation, in task order) for comparison.
- letter balance: per task, how far the commonest answer position is from an even share.

`--before-blind` also measures each version's questions as the questions stage wrote them,
before the blind filter (the stage's cached parts), as "VERSION:before-blind".
Reads the version's `questions` table; no Ray, no model.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vico_pipeline.text import overlap  # noqa: E402

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})")
_MINUTES = re.compile(r"about (\d+) minutes?")  # gap options
_PERMUTATION = re.compile(r"^\s*\d+(\s*,\s*\d+)+\s*$")
# Every rule with its inverse: a rule far below chance is a tell as much as one far above.
RULES = ("longest", "shortest", "most_overlap", "least_overlap", "earliest", "latest", "identity", "never_identity")
MARGIN = 0.05
TASK_ORDER = ("event_order", "clue_time", "next_event", "before_after", "timeline",
              "at_time", "gap", "summary", "said_when")  # stages/questions.py


# --------------------------------------------------------------------------- trivial rules
def first_time(option: str) -> float | None:
    """Seconds of the first mm:ss (or h:mm:ss) an option names ("about N minutes": N * 60), or None."""
    match = _TIME.search(option)
    if not match and _MINUTES.search(option):
        return int(_MINUTES.search(option).group(1)) * 60
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)


def is_identity(option: str) -> bool:
    numbers = [int(x) for x in option.split(",")]
    return numbers == list(range(1, len(numbers) + 1))


def rule_picks(rule: str, question: str, options: list[str]) -> list[int] | None:
    """The options a rule would choose among (ties), or None when it does not apply to these options."""
    if rule in ("longest", "shortest", "most_overlap", "least_overlap"):
        score = {"longest": len, "shortest": lambda o: -len(o), "most_overlap": lambda o: overlap(question, o),
                 "least_overlap": lambda o: -overlap(question, o)}[rule]
        values = [score(o) for o in options]
    elif rule in ("earliest", "latest"):
        times = [first_time(o) for o in options]
        if any(t is None for t in times):
            return None
        values = [-t if rule == "earliest" else t for t in times]
    else:  # identity / never_identity: "the order shown is (never) the answer"
        if not all(_PERMUTATION.match(o) for o in options):
            return None
        values = [int(is_identity(o) == (rule == "identity")) for o in options]
    best = max(values)
    return [i for i, v in enumerate(values) if v == best]


def multiple_choice(questions: list[dict]) -> list[dict]:
    return [q for q in questions if len(q.get("options") or []) >= 2 and (q.get("answer_index") or 0) >= 0
            and q.get("answer_index") is not None]


def rule_accuracy(questions: list[dict]) -> dict[str, dict]:
    """{task: {questions, chance, rule: accuracy or None}}: expected accuracy, ties guessed uniformly."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for q in multiple_choice(questions):
        by_task[q["task"]].append(q)
    out = {}
    for task, rows in sorted(by_task.items()):
        entry = {"questions": len(rows), "chance": round(sum(1 / len(q["options"]) for q in rows) / len(rows), 4)}
        for rule in RULES:
            scores = []
            for q in rows:
                picks = rule_picks(rule, q["question"], list(q["options"]))
                if picks is not None:
                    scores.append((1 / len(picks) if q["answer_index"] in picks else 0.0, 1 / len(q["options"])))
            # A rule that applies to only some questions is compared with those questions' chance.
            entry[rule] = round(sum(s for s, _ in scores) / len(scores), 4) if scores else None
            entry[f"{rule}_chance"] = round(sum(c for _, c in scores) / len(scores), 4) if scores else None
        out[task] = entry
    return out


def off_chance(accuracy: dict[str, dict]) -> list[str]:
    """'task/rule' for every rule more than MARGIN from its chance, above or below."""
    return [f"{task}/{rule}" for task, e in accuracy.items() for rule in RULES
            if e[rule] is not None and abs(e[rule] - e[f"{rule}_chance"]) > MARGIN]


def worst_rule(accuracy: dict[str, dict]) -> dict[str, tuple[str, float]]:
    """{task: (rule, |rule - chance|)} for the rule furthest from its chance."""
    out = {}
    for task, e in accuracy.items():
        gaps = [(abs(e[r] - e[f"{r}_chance"]), r) for r in RULES if e[r] is not None]
        if gaps:
            gap, rule = max(gaps)
            out[task] = (rule, round(gap, 4))
    return out


def template_balance(questions: list[dict]) -> dict[str, dict]:
    """{task: {templates, questions, chance, template_rule}}: does the wording (`template_id`)
    tell the answer? `template_rule` answers each question with the commonest answer position
    among the OTHER questions of its task and template (leave one out, ties guessed uniformly):
    a wording that goes with one answer would score above chance."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for q in multiple_choice(questions):
        groups[(q["task"], q.get("template_id"))].append(q)
    scores: dict[str, list[tuple[float, float]]] = defaultdict(list)
    templates: Counter = Counter()
    for (task, _), rows in groups.items():
        templates[task] += 1
        counts = Counter(q["answer_index"] for q in rows)
        for q in rows:
            others = counts.copy()
            others[q["answer_index"]] -= 1
            best = max(others.values()) if +others else 0
            picks = [i for i in range(len(q["options"])) if others.get(i, 0) == best]
            scores[task].append(((q["answer_index"] in picks) / len(picks), 1 / len(q["options"])))
    return {task: {"templates": templates[task], "questions": len(s),
                   "chance": round(sum(c for _, c in s) / len(s), 4),
                   "template_rule": round(sum(a for a, _ in s) / len(s), 4)} for task, s in sorted(scores.items())}


# --------------------------------------------------------------------------- cross-turn leakage
def clip_rank(clip_id: str) -> int:
    """A clip's place in its video: clip ids end in the window index (stages/frames.py)."""
    return int(clip_id.rsplit("-", 1)[-1])


class Known:
    """What the answers of the turns so far reveal: orders between clips, clips' times, next events."""

    def __init__(self):
        self.after: dict[str, set[str]] = defaultdict(set)  # a -> clips known to come after a
        self.timed: set[str] = set()
        self.next_of: set[str] = set()
        self.everything = False

    def _edge(self, a: str, b: str) -> None:
        self.after[a].add(b)

    def ordered(self, a: str, b: str) -> bool:
        if self.everything or a == b or (a in self.timed and b in self.timed):
            return True
        return self._reaches(a, b) or self._reaches(b, a)

    def _reaches(self, a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            for c in self.after[todo.pop()]:
                if c == b:
                    return True
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return False

    def answers(self, q: dict) -> bool:
        """Whether `q`'s answer follows from what is known."""
        clips = list(q.get("evidence_clip_ids") or [])
        task = q["task"]
        if task in ("summary", "said_when"):  # no earlier answer holds a summary or a clip's picture
            return False
        if self.everything:
            return True
        if task in ("clue_time", "at_time"):
            return bool(clips) and clips[0] in self.timed
        if task == "next_event":
            return bool(clips) and clips[0] in self.next_of
        if task == "gap":  # the distance of two clips follows from both their times
            return bool(clips) and all(c in self.timed for c in clips)
        if task == "timeline":
            return False
        ordered = sorted(clips, key=clip_rank)
        return len(ordered) >= 2 and all(self.ordered(a, b) for a, b in zip(ordered, ordered[1:]))

    def learn(self, q: dict) -> None:
        clips = sorted(q.get("evidence_clip_ids") or [], key=clip_rank)  # evidence in time order
        task = q["task"]
        if task in ("timeline", "summary"):  # a summary tells the events in order, too
            self.everything = True
        elif task in ("clue_time", "at_time"):
            self.timed.update(clips[:1])
        elif task in ("gap", "said_when"):
            pass  # a distance without a direction; a clip's picture without its time
        else:
            if task == "next_event" and clips:
                self.next_of.add(clips[0])
            for a, b in zip(clips, clips[1:]):
                self._edge(a, b)


def leaked_turns(conversation: list[dict]) -> list[bool]:
    """For each turn of one conversation: is its answer given by the earlier turns' answers?"""
    known, out = Known(), []
    for q in conversation:
        out.append(known.answers(q))
        known.learn(q)
    return out


def by_video(questions: list[dict]) -> dict[str, list[dict]]:
    videos: dict[str, list[dict]] = defaultdict(list)
    for q in sorted(questions, key=lambda q: q["question_id"]):
        videos[q["video_id"]].append(q)
    return videos


def task_order_packing(questions: list[dict], rng) -> list[list[dict]]:
    """The old shards: every question of the video in one conversation, in the order tasks are built."""
    return [sorted(questions, key=lambda q: (TASK_ORDER.index(q["task"]) if q["task"] in TASK_ORDER else 99,
                                             q["question_id"]))]


def one_per_sample(questions: list[dict], rng) -> list[list[dict]]:
    return [[q] for q in questions]


def trainer_packing():
    """The trainer's packing (train.pack_questions), where it exists."""
    try:
        from vico_pipeline.samples import pack_questions
    except ImportError:
        return None
    return pack_questions


def leakage(questions: list[dict], packing, seed: int = 0) -> dict:
    """{task: share of its turns answerable from earlier turns} under `packing`, plus 'all'."""
    rng = random.Random(seed)
    turns, leaked = Counter(), Counter()
    for vid, rows in sorted(by_video(questions).items()):
        for conversation in packing(rows, rng):
            for q, bad in zip(conversation, leaked_turns(conversation)):
                turns[q["task"]] += 1
                leaked[q["task"]] += int(bad)
    out = {task: round(leaked[task] / turns[task], 4) for task in sorted(turns)}
    out["all"] = round(sum(leaked.values()) / max(1, sum(turns.values())), 4)
    return out


# --------------------------------------------------------------------------- letter balance
def letter_balance(questions: list[dict]) -> dict[str, dict]:
    """{task: {counts by position, max_deviation}}: the commonest position's share minus 1/k."""
    counts: dict[str, Counter] = defaultdict(Counter)
    sizes: dict[str, int] = {}
    for q in multiple_choice(questions):
        counts[q["task"]]["ABCDEFGH"[q["answer_index"]]] += 1
        sizes[q["task"]] = len(q["options"])
    out = {}
    for task, c in sorted(counts.items()):
        total = sum(c.values())
        out[task] = {"counts": dict(sorted(c.items())),
                     "max_deviation": round(max(c.values()) / total - 1 / sizes[task], 4)}
    return out


# --------------------------------------------------------------------------- a version
def read_questions(version_root: str) -> list[dict]:
    from vico_pipeline.export import read_table
    from vico_pipeline.versions import open_version

    open_version(version_root)
    return read_table(version_root, "questions").to_pylist()


def read_questions_before_blind(version_root: str) -> list[dict]:
    """The version's questions as the questions stage wrote them, before the blind filter: the
    stage's cached parts (`_stages/questions-{fingerprint}`) of the version's videos."""
    from vico_pipeline import layout, storage
    from vico_pipeline.export import read_table
    from vico_pipeline.versions import open_version

    manifest = open_version(version_root)
    fingerprint = manifest["stage_fingerprints"]["questions"]
    stage_root = storage.join(os.path.dirname(version_root.rstrip("/")), "_stages", f"questions-{fingerprint}")
    videos = sorted(set(read_table(version_root, "questions", ["video_id"]).column("video_id").to_pylist()))
    parts = [layout.part_uri(stage_root, v) for v in videos]
    return storage.read_parquet([p for p in parts if storage.exists(p)]).to_pylist()


def measure(questions: list[dict], seed: int = 0) -> dict:
    packings = {"one_per_sample": one_per_sample, "task_order_packing": task_order_packing}
    if trainer_packing() is not None:
        packings["pack_questions"] = trainer_packing()
    accuracy = rule_accuracy(questions)
    return {"questions": len(questions), "rules": accuracy, "off_chance": off_chance(accuracy),
            "worst_rule": worst_rule(accuracy), "templates": template_balance(questions),
            "leakage": {name: leakage(questions, fn, seed) for name, fn in packings.items()},
            "letters": letter_balance(questions)}


def markdown(results: dict[str, dict]) -> str:
    """One table of rule accuracy (rows: version x task) and one of leakage and letters."""
    lines = ["| version | task | n | chance | " + " | ".join(RULES) + " | max \\|rule − chance\\| |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in RULES) + " | --- |"]
    for name, r in results.items():
        for task, e in r["rules"].items():
            cells = []
            for rule in RULES:
                value = e[rule]
                mark = "**" if value is not None and abs(value - e[f"{rule}_chance"]) > MARGIN else ""
                cells.append("–" if value is None else f"{mark}{value:.2f}{mark}")
            worst = r["worst_rule"].get(task)
            cells.append(f"{worst[1]:.2f} ({worst[0]})" if worst else "–")
            lines.append(f"| {name} | {task} | {e['questions']} | {e['chance']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "| version | task | templates | n | chance | template_rule (the commonest answer of the other "
              "questions of its wording) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        for task, e in r["templates"].items():
            # Only above chance is a tell here: leaving one out of letters dealt from even decks
            # makes the rest of its group lean away from it, so balanced wordings score below chance.
            mark = "**" if e["template_rule"] - e["chance"] > MARGIN else ""
            lines.append(f"| {name} | {task} | {e['templates']} | {e['questions']} | {e['chance']:.2f} | "
                         f"{mark}{e['template_rule']:.2f}{mark} |")
    lines += ["", "| version | packing | leaked turns (all) | by task |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        for packing, shares in r["leakage"].items():
            detail = ", ".join(f"{t} {v:.2f}" for t, v in shares.items() if t != "all")
            lines.append(f"| {name} | {packing} | {shares['all']:.2f} | {detail} |")
    lines += ["", "| version | task | answer positions | commonest share - even share |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        for task, e in r["letters"].items():
            counts = " ".join(f"{k} {v}" for k, v in e["counts"].items())
            lines.append(f"| {name} | {task} | {counts} | {e['max_deviation']:+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of Markdown tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before-blind", action="store_true",
                        help="also measure each version's questions before the blind filter")
    args = parser.parse_args(argv)
    results = {}
    for v in args.versions:
        name = v.rstrip("/").rsplit("/", 1)[-1]
        if args.before_blind:
            results[f"{name}:before-blind"] = measure(read_questions_before_blind(v), args.seed)
        results[name] = measure(read_questions(v), args.seed)
    print(json.dumps(results, indent=1) if args.json else markdown(results))


if __name__ == "__main__":
    main()
