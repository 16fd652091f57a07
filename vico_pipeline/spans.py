"""Shots and event spans: where in a video a clip's key event is seen.

A clip is a 14-second window; its key event is often a part of it, and sometimes runs on into
the next one. The frames stage finds the cuts (stages/frames.py, one decode); a shot is the
stretch between two cuts. A caption's event span is the shots holding the frames that show its
key event (the caption engine names them), from the first such shot's start to the last one's
end, so a span may run into a neighbouring clip that shows the same shot.

Question keys are judged against spans, not clip windows (stages/questions.py). Plain lists;
no stage imports here, so every stage may use it.
"""
from __future__ import annotations

# Spans that share less than this (seconds) do not overlap: a cut is one frame, and a span that
# ends at a cut touches the next one without showing any of it.
TOUCH_S = 0.05


def shots_from_cuts(cuts_s: list[float], duration_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of each shot: from 0 to the first cut, cut to cut, the last cut to the end."""
    bounds = [0.0, *sorted(t for t in cuts_s if 0.0 < t < duration_s), float(duration_s)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def video_shots(clips: list[dict], duration_s: float | None = None) -> list[tuple[float, float]]:
    """The shots of a video from its clip rows (their `cuts_s`); the last clip's end when the
    duration is unknown."""
    cuts = [t for clip in clips for t in (clip.get("cuts_s") or [])]
    end = duration_s or max((float(c["end_s"]) for c in clips), default=0.0)
    return shots_from_cuts(cuts, float(end))


def shot_at(shots: list[tuple[float, float]], t: float) -> tuple[float, float] | None:
    return next(((a, b) for a, b in shots if a <= t < b), None)


def event_span(frame_times_s: list[float], shots: list[tuple[float, float]], window: tuple[float, float]
               ) -> tuple[float, float]:
    """The span of the shots holding these frames (the key event's); the shots the clip's window
    shows when no frame is named. Without shots, the window itself."""
    start, end = window
    held = [s for s in (shot_at(shots, t) for t in frame_times_s) if s is not None]
    if not held:
        held = [(a, b) for a, b in shots if a < end and b > start]
    if not held:
        return float(start), float(end)
    return float(min(a for a, _ in held)), float(max(b for _, b in held))


def overlap_s(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two spans show some of the same moment."""
    return overlap_s(a, b) > TOUCH_S


def contains(span: tuple[float, float], t: float) -> bool:
    return span[0] <= t < span[1]


def span_of(row: dict) -> tuple[float, float]:
    """A clue's or caption's event span; its clip window for rows made before spans existed."""
    start, end = row.get("event_start_s"), row.get("event_end_s")
    if start is None or end is None:
        return float(row["start_s"]), float(row["end_s"])
    return float(start), float(end)
