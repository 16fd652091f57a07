"""What `vico eval` prints: a line per needle cell while it runs, and the results as tables at the end.

    needle vst-r2 retrieval 16 frames depth 25%: 1/2 right (letter; chance 0.39%)

    needle accuracy by frame count (mean over depths; chance 0.39% = 1/256)
    method   4 frames  16 frames  32 frames
    vst-r2      50.0%      20.0%      10.0%
    intp         0.0%       skip        OOM

    VICO QA on val questions (accuracy by option likelihood)
    task          questions  accuracy  chance
    event_order           4     50.0%   25.0%

Plain text from results.json's facts only (no torch), so it is the same for a resumed run.
"""
from __future__ import annotations

from collections import defaultdict

CELL_FIELDS = ("method", "task", "style", "frames", "depth", "scoring")


def cell_line(cell: dict, trials: int | None = None) -> str:
    """One needle cell, as it finishes."""
    where = f"needle {cell['method']} {cell.get('task', 'retrieval')} {cell['frames']} frames depth {cell['depth']:.0%}"
    if cell.get("status") == "skipped":
        return f"{where}: skipped ({cell.get('skipped', 'too few frames')})"
    if cell.get("status") == "oom":
        return f"{where}: out of memory"
    accuracy = cell.get("accuracy") or 0.0
    right = f"{round(accuracy * trials)}/{trials} right" if trials else f"{accuracy:.0%} right"
    chance = f"; chance {cell['chance']:.2%}" if cell.get("chance") else ""
    return f"{where}: {right} ({cell.get('scoring', 'letter')}{chance})"


class CellPrinter:
    """Called with every needle cell known so far after each new one; prints those not printed yet."""

    def __init__(self, trials: int | None, say):
        self.trials, self.say = trials, say
        self.printed: set[tuple] = set()

    def __call__(self, cells: list[dict]) -> None:
        for cell in cells:
            key = tuple(cell.get(k) for k in CELL_FIELDS)
            if key not in self.printed:
                self.printed.add(key)
                self.say(cell_line(cell, self.trials))


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    align = [str.ljust] + [str.rjust] * (len(header) - 1)  # names left, numbers right
    return ["  ".join(a(c, w) for a, c, w in zip(align, row, widths)).rstrip() for row in [header, *rows]]


def needle_table(cells: list[dict]) -> list[str]:
    """Per method (and task, style, scoring where there are several), accuracy by frame count,
    the mean over depths; `skip` where every depth was skipped, `OOM` where one ran out of memory."""
    if not cells:
        return []
    varied = [k for k in ("task", "style", "scoring") if len({c.get(k) for c in cells}) > 1]
    frames = sorted({c["frames"] for c in cells})
    groups: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        groups[(c["method"], *(c.get(k) for k in varied))][c["frames"]].append(c)
    rows = []
    for key, by_frames in groups.items():
        row = [str(k) for k in key]
        for f in frames:
            mine = by_frames.get(f, [])
            scored = [c["accuracy"] for c in mine if c.get("accuracy") is not None]
            if any(c.get("status") == "oom" for c in mine):
                row.append("OOM")
            elif scored:
                row.append(_percent(sum(scored) / len(scored)))
            else:
                row.append("skip" if mine else "-")
        rows.append(row)
    chances = sorted({c["chance"] for c in cells if c.get("chance")})
    chance = "; chance " + ", ".join(f"{x:.2%} = 1/{round(1 / x)}" for x in chances) if chances else ""
    depths = len({c["depth"] for c in cells})
    title = f"needle accuracy by frame count (mean over {depths} depth{'s' if depths != 1 else ''}{chance})"
    return [title, *_grid(["method", *varied, *(f"{f} frames" for f in frames)], rows)]


def qa_table(results: dict) -> list[str]:
    """VICO QA accuracy per task against chance (a uniform guess among each question's options)."""
    accuracy = results.get("vico_qa") or {}
    if not accuracy:
        note = results.get("note")
        return [f"VICO QA: no val question{f' ({note})' if note else ''}"]
    count, chance = results.get("vico_qa_count") or {}, results.get("vico_qa_chance") or {}
    letter = results.get("vico_qa_letter") or {}
    header = ["task", "questions", "accuracy", *(["letter"] if letter else []), "chance"]
    lost = results.get("vico_qa_oom") or {}  # questions an out-of-memory error took (not in the accuracy)
    rows = [[task, str(count.get(task, "")) + (f" ({lost[task]} oom)" if lost.get(task) else ""), _percent(acc),
             *([_percent(letter.get(task))] if letter else []), _percent(chance.get(task))]
            for task, acc in accuracy.items()]
    total = sum(count.get(t, 0) for t in accuracy)
    if len(rows) > 1 and total:
        mean = lambda table: sum((table.get(t) or 0) * count.get(t, 0) for t in accuracy) / total  # noqa: E731
        rows.append(["all", str(total), _percent(mean(accuracy)), *([_percent(mean(letter))] if letter else []),
                     _percent(mean(chance))])
    return ["VICO QA on val questions (accuracy: the most likely option)", *_grid(header, rows)]


def results_table(results: dict) -> str:
    """The end of `vico eval`: the needle table, then VICO QA."""
    needle = needle_table(results.get("needle") or [])
    return "\n".join([*needle, *([""] if needle else []), *qa_table(results)])


__all__ = ["CellPrinter", "cell_line", "needle_table", "qa_table", "results_table"]
