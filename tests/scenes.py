"""A viewer with the scene script: is a question's key what someone watching would answer?

The script is the video's scenes (start_s, end_s), in order; `shows[clip_id]` is the set of scene
indices a clip's key event shows (what its captioner saw). The viewer never looks at clip windows
or event spans: only at which scene is on screen when. Overlaps shorter than SLIVER_S (a frame or
two at a cut) are not seen.
"""
from __future__ import annotations

import re

SLIVER_S = 0.25


def seconds_of(clock: str) -> int:
    value = 0
    for part in clock.split(":"):
        value = 60 * value + int(part)
    return value


def on_screen(scenes: list[tuple[float, float]], start: float, end: float) -> set[int]:
    """The scenes seen during [start, end): those overlapping it for more than SLIVER_S (any
    overlap for an instant)."""
    if end <= start:
        return {i for i, (a, b) in enumerate(scenes) if a <= start < b}
    return {i for i, (a, b) in enumerate(scenes) if min(b, end) - max(a, start) > min(SLIVER_S, (end - start) / 2)}


def before(a: set[int], b: set[int]) -> bool:
    """Every scene of a comes before every scene of b."""
    return max(a) < min(b)


def _quoted(question: str) -> list[str]:
    return re.findall(r'"([^"]+)"', question)


def judge(q: dict, scenes: list[tuple[float, float]], shows: dict[str, set[int]], clues: list[dict],
          captions: list[dict] = (), subtitles: list[dict] = ()) -> list[str]:
    """What a viewer holding the script finds wrong with the question's key (empty: nothing)."""
    by_text: dict[str, list[str]] = {}
    for row in clues:
        by_text.setdefault(row["text"], []).append(row["clip_id"])
    for row in captions:
        by_text.setdefault((row.get("key_event") or "").strip(), []).append(row["clip_id"])
    task, options, index = q["task"], q["options"], q["answer_index"]
    wrong = []
    if task == "at_time":
        (shown,) = re.findall(r"\b((?:\d+:)?\d+:\d\d)\b", q["question"])
        t = seconds_of(shown)
        seen = on_screen(scenes, t, t + 1)
        key = shows[q["evidence_clip_ids"][0]]
        if not seen <= key:
            wrong.append(f"at {shown} scenes {seen} are on screen, the key shows {key}")
        for i, option in enumerate(options):
            if i != index and any(seen & shows[c] for c in by_text[option]):
                wrong.append(f"at {shown} the wrong option {option!r} is on screen too")
    elif task == "said_when":
        (line,) = _quoted(q["question"])
        cues = [c for c in subtitles if " ".join(c["text"].replace('"', "'").split()) == line]
        key = shows[q["evidence_clip_ids"][0]]
        for cue in cues:
            seen = on_screen(scenes, cue["start_s"], cue["end_s"])
            if not seen <= key:
                wrong.append(f"{line!r} is said over scenes {seen}, the key shows {key}")
            for i, option in enumerate(options):
                if i != index and any(seen & shows[c] for c in by_text[option] if c in shows):
                    wrong.append(f"{line!r} is said while the wrong option {option!r} is on screen")
    elif task == "clue_time":
        (text,) = _quoted(q["question"])
        event = shows[by_text[text][0]]
        for i, option in enumerate(options):
            a, b = (seconds_of(x) for x in option.split("–"))
            seen = on_screen(scenes, a, b)
            if i == index and not seen & event:
                wrong.append(f"the key range {option} does not show the event")
            if i != index and seen & event:
                wrong.append(f"the wrong range {option} shows the event too")
    elif task == "before_after":
        a, b = _quoted(q["question"])[:2]
        sa, sb = shows[by_text[a][0]], shows[by_text[b][0]]
        truth = "before" if before(sa, sb) else "after" if before(sb, sa) else None
        if truth != q["answer"]:
            wrong.append(f"before/after: scenes {sa} vs {sb}, key {q['answer']}")
    elif task == "event_order":
        listed = dict(re.findall(r"^(\d)\. (.+)$", q["question"], re.M))
        order = [listed[n] for n in options[index].split(", ")]
        events = [shows[by_text[t][0]] for t in order]
        if not all(before(x, y) for x, y in zip(events, events[1:])):
            wrong.append(f"event_order: the key order shows scenes {events}")
    elif task == "next_event":
        (text,) = _quoted(q["question"])[:1]
        quoted, answer = shows[by_text[text][0]], shows[by_text[options[index]][0]]
        if not before(quoted, answer):
            wrong.append(f"next_event: the key {answer} is not after {quoted}")
        for i, option in enumerate(options):
            other = shows[by_text[option][0]]
            if i != index and (other & (quoted | answer) or (before(quoted, other) and before(other, answer))):
                wrong.append(f"next_event: the wrong option {option!r} (scenes {other}) could come next")
    elif task == "gap":
        a, b = _quoted(q["question"])[:2]
        starts = [scenes[min(shows[by_text[t][0]])][0] for t in (a, b)]
        truth = abs(starts[0] - starts[1]) / 60
        minutes = [int(re.search(r"(\d+)", o).group(1)) for o in options]
        if min(range(4), key=lambda i: abs(minutes[i] - truth)) != index:
            wrong.append(f"gap: events start {truth:.2f} min apart, key {options[index]}")
    return wrong
