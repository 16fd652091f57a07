"""One question a sample: the frames it shows and the time header that names them (vico.md).

A shard row holds a video's frames once, with their presentation times, and
the list of its questions. The trainer, the eval and the export each turn one
(row, question) into a sample here, so all three show a model the same thing:

    <video>
    The video lasts 62:14. Its 128 frames shown here were taken at 00:00, 00:29, ..., 61:57.
    {the question}

Under a frame budget the frames are spread evenly (one from each equal stretch
of the video), and every evidence event of the question keeps at least one frame
inside its window (the event's span, `evidence_windows_s`: a frame there shows the
event), placed so that it cannot be told from the others; a question
whose evidence cannot fit gets no sample (None), and the caller counts it.
No torch, no Ray: plain lists.
"""
from __future__ import annotations

import random

VIDEO_TOKEN = "<video>"


def format_time(seconds: float) -> str:
    """mm:ss, or h:mm:ss from one hour on, rounded down to the second."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def time_header(duration_s: float, frame_times_s: list[float]) -> str:
    """The sentence that grounds time: the video's length and the time of every frame shown, in order."""
    n = len(frame_times_s)
    times = ", ".join(format_time(t) for t in frame_times_s)
    frames = f"Its {n} frames shown here were taken at {times}." if n != 1 else f"Its one frame shown here was taken at {times}."
    return f"The video lasts {format_time(duration_s)}. {frames}"


def select_frames(frame_times_s: list[float], budget: int, evidence_windows: list[tuple[float, float]],
                  seed: str = "") -> list[int] | None:
    """Indices of the frames to show: one from each of `budget` equal stretches of the video, and a
    frame inside every evidence window.

    Each stretch gives a frame at a random (seeded) place in it; an evidence window's frame is the
    one its stretch gives. So the times in the header look alike whether a frame was kept for the
    evidence or not: an even grid with one frame moved onto the evidence would point at the answer.
    Returns None when an evidence window holds no frame at all, or when there are more evidence
    windows than the budget allows.
    """
    n = len(frame_times_s)
    insides = []
    for start, end in evidence_windows:
        inside = [i for i, t in enumerate(frame_times_s) if start <= t < end]
        if not inside:
            return None
        insides.append(inside)
    if not budget or n <= budget:
        return list(range(n))
    rng = random.Random(f"frames:{seed}")
    bounds = [n * k // budget for k in range(budget + 1)]
    stretch = [k for k in range(budget) for _ in range(bounds[k], bounds[k + 1])]  # stretch of each frame
    pick: dict[int, int] = {}  # stretch -> the frame it shows
    for inside in insides:
        if any(pick.get(stretch[i]) == i for i in inside):
            continue  # another window's frame is inside this one too
        free = [i for i in inside if stretch[i] not in pick]
        if free:
            chosen = rng.choice(free)
            pick[stretch[chosen]] = chosen
            continue
        # Two evidence windows inside one stretch: the nearest stretch without evidence gives its place.
        chosen = rng.choice(inside)
        spare = [k for k in range(budget) if k not in pick]
        if not spare:
            return None
        pick[min(spare, key=lambda k: abs(k - stretch[chosen]))] = chosen
    for k in range(budget):
        if k not in pick:
            pick[k] = rng.randrange(bounds[k], bounds[k + 1])
    return sorted(pick.values())


def with_time_header(conversations: list[dict], duration_s: float, frame_times_s: list[float]) -> list[dict]:
    """The conversation with `<video>` and the time header opening its first human turn."""
    header = time_header(duration_s, frame_times_s)
    out, placed = [], False
    for turn in conversations:
        value = turn["value"]
        if turn["from"] == "human":
            body = value.replace(VIDEO_TOKEN + "\n", "", 1).replace(VIDEO_TOKEN, "", 1).lstrip("\n")
            value = f"{VIDEO_TOKEN}\n{header}\n{body}" if not placed else body
            placed = True
        out.append({"from": turn["from"], "value": value})
    return out


def question_sample(row: dict, question: dict, max_frames: int = 0) -> dict | None:
    """One training / eval / export sample from a shard row and one of its questions.

    Returns {frame_indices, frame_times_s, conversations}, or None when the
    question's evidence cannot be shown within `max_frames` (0: no budget).
    """
    times = [float(t) for t in row["frame_times_s"] or []]
    windows = [tuple(w) for w in question.get("evidence_windows_s") or []]
    indices = select_frames(times, max_frames, windows, seed=str(question.get("question_id", "")))
    if indices is None:
        return None
    shown = [times[i] for i in indices]
    duration = float(row.get("duration_s") or (times[-1] if times else 0.0))
    return {"frame_indices": indices, "frame_times_s": shown,
            "conversations": with_time_header(question["conversations"], duration, shown)}


# --- packing several questions into one conversation (train.pack_questions) -----------------

# Every VICO task is about time: its answer tells the order of its evidence clips.
# The open `timeline` question lists every event in order: it gives all order away, so it is never packed.
UNPACKABLE_TASKS = frozenset({"timeline", "summary"})  # a summary tells the events in order, too
# One of each a pack: one's answer is a wrong option of the other (a clue's time range; the clue
# that comes right after another cannot come right after a second one).
ONE_PER_PACK = frozenset({"clue_time", "next_event", "at_time", "said_when"})
# A question that asks for a clip's time: any earlier mention of the clip hints at it (its rank).
TIME_TASKS = frozenset({"clue_time", "at_time", "gap"})
# Answers that give one clip's time in the video: any two clips they time are ordered.
PINS_TIME = frozenset({"clue_time", "at_time"})


def _find(parent: dict, x: str) -> str:
    while parent.setdefault(x, x) != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def gives_away(earlier: list[dict], question: dict) -> bool:
    """Whether the answers of `earlier` turns tell anything about `question`'s answer.

    Conservative: two clips count as ordered as soon as earlier answers connect them at
    all (A<B and A<C leave B, C unordered, but are counted as ordering them).
    """
    task = question.get("task")
    clips = list(dict.fromkeys(question.get("evidence_clip_ids") or []))
    own = set(clips)
    parent: dict = {}
    for turn in earlier:
        theirs = list(dict.fromkeys(turn.get("evidence_clip_ids") or []))
        if len(own.intersection(theirs)) >= 2 or (own and own == set(theirs)):
            return True  # two questions about the same pair (or the same clue)
        if task in ONE_PER_PACK and turn.get("task") == task:
            return True
        if task in TIME_TASKS and own.intersection(theirs):
            return True
        for clip in theirs[1:]:
            parent[_find(parent, clip)] = _find(parent, theirs[0])
        if turn.get("task") in PINS_TIME:  # all timed clips are ordered among themselves
            for clip in theirs:
                parent[_find(parent, clip)] = _find(parent, "@timed")
    roots = [_find(parent, c) for c in clips]
    return len(set(roots)) < len(roots)


def pack_questions(questions: list[dict], rng) -> list[list[dict]]:
    """One video's questions, shuffled, grouped into packs (conversations) where no turn is
    answerable from an earlier one. Every question lands in exactly one pack; `timeline` alone."""
    order = list(questions)
    rng.shuffle(order)
    packs: list[list[dict]] = []
    for question in order:
        if question.get("task") not in UNPACKABLE_TASKS:
            home = next((p for p in packs if p[0].get("task") not in UNPACKABLE_TASKS and not gives_away(p, question)), None)
            if home is not None:
                home.append(question)
                continue
        packs.append([question])
    return packs


def packed_sample(row: dict, questions: list[dict], max_frames: int = 0) -> dict | None:
    """Like `question_sample`, for several questions in one conversation: the frames hold every
    question's evidence, and the time header opens the first turn only. None when they don't fit."""
    if len(questions) == 1:
        return question_sample(row, questions[0], max_frames)
    times = [float(t) for t in row["frame_times_s"] or []]
    windows = [tuple(w) for q in questions for w in q.get("evidence_windows_s") or []]
    indices = select_frames(times, max_frames, windows, seed="|".join(str(q.get("question_id", "")) for q in questions))
    if indices is None:
        return None
    shown = [times[i] for i in indices]
    duration = float(row.get("duration_s") or (times[-1] if times else 0.0))
    turns = [turn for q in questions for turn in q["conversations"]]
    return {"frame_indices": indices, "frame_times_s": shown, "conversations": with_time_header(turns, duration, shown)}
