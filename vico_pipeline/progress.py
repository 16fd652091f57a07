"""The run's progress display: a line per stage, fed by the stages as each video finishes.

    download       2/3     sources                         0 failed              ETA 0:04
    frames         1/2     videos       3.1 clips/s        0 failed              ETA 0:07

Stage workers report each video they finish (`report`), to one small named Ray
actor (a plain object when the run is inline, without Ray); the driver polls it
while it waits for the DAG. In a terminal the block of lines is redrawn in
place; piped, a plain line per stage that moved is logged every
`ray.status_every_s` seconds. The last state of every stage is always shown.

Counts: `done` of `total` videos reached the end of the stage; a video that
failed upstream leaves the total of the stages after (so totals fall as
failures happen). `failed` is the stage's error rows (a video, or a clip in the
clip stages). Rates are the stage's output rows per second of run time, for the
stages that work per clip. ETA: the stage's remaining videos at its rate so far.
"""
from __future__ import annotations

import sys
import threading
import time

ACTOR = "vico-progress"
# Output rows per second are shown for the stages that work per clip (their row unit).
CLIP_UNITS = {"frames": "clips", "filter": "clips", "caption": "captions"}
TTY_TICK_S = 0.5


class Tally:
    """Counts per stage; the same object serves in-process runs and, as an actor, Ray runs."""

    def __init__(self):
        self.reset([])

    def reset(self, stages: list[str], sources: int = 0) -> None:
        self.stages = list(stages)
        self.sources = sources
        self.found = 0  # reference rows the download stage sent on (one a video)
        self.counts = {s: {"done": 0, "failed": 0, "rows": 0, "cached": 0, "dropped": 0} for s in stages}

    def report(self, stage: str, done: int = 1, failed: int = 0, rows: int = 0, cached: int = 0,
               dropped: int = 0, found: int = 0) -> None:
        counts = self.counts.setdefault(stage, {"done": 0, "failed": 0, "rows": 0, "cached": 0, "dropped": 0})
        for key, value in (("done", done), ("failed", failed), ("rows", rows), ("cached", cached),
                           ("dropped", dropped)):
            counts[key] += value
        self.found += found

    def snapshot(self) -> dict:
        return {"stages": self.stages, "sources": self.sources, "found": self.found,
                "counts": {s: dict(c) for s, c in self.counts.items()}}


_local: Tally | None = None  # set by the driver for an inline run (no Ray)
_handle = None  # the actor, looked up once per worker process


def start_tally(stages: list[str], sources: int, use_ray: bool):
    """The run's tally, reset: an actor under Ray (the driver keeps the handle), else a local object."""
    global _local, _handle
    if not use_ray:
        _local = Tally()
        _local.reset(stages, sources)
        return _local
    import ray

    _local = None
    if _handle:
        # An earlier run of this driver made the actor: reuse it, since dropping the handle that
        # created it would end it (a handle found by name does not keep an actor alive).
        try:
            ray.get(_handle.reset.remote(stages, sources), timeout=30)
            return _handle
        except Exception:
            pass  # that Ray session is gone: make a new actor
    _handle = ray.remote(num_cpus=0)(Tally).options(name=ACTOR, get_if_exists=True).remote()
    ray.get(_handle.reset.remote(stages, sources))
    return _handle


def report(stage: str, **counts) -> None:
    """Called by a stage worker when a video leaves the stage; never fails the stage."""
    global _handle
    try:
        if _local is not None:
            _local.report(stage, **counts)
            return
        import ray

        if _handle is False or not ray.is_initialized():
            return
        if _handle is None:
            _handle = ray.get_actor(ACTOR)
        _handle.report.remote(stage, **counts)  # fire and forget: the display is best effort
    except Exception:
        _handle = False  # no tally in this run: stop looking


def report_stage_result(stage: str, stats: dict) -> None:
    """A video finished a stage with these stats (rows, errors, cached) from the stage runner."""
    cached = bool(stats.get("cached"))
    report(stage, failed=int(stats.get("errors") or 0), rows=int(stats.get("rows") or 0), cached=int(cached))


# --------------------------------------------------------------------------- lines
def stage_lines(snap: dict, elapsed: float, final: bool = False, stopped: bool = False) -> list[str]:
    """One line a stage: done/total, clips/s where the stage works per clip, failed, ETA.

    A stage is `done` only when every stage before it is: the stages are a chain, so its total is
    known only once the ones feeding it have sent every video on. `stopped` (the run was
    interrupted): the stages not done say so instead of an ETA."""
    width = max((len(s) for s in snap["stages"]), default=8)
    lines = []
    upstream_done = True
    for stage in snap["stages"]:
        c = snap["counts"].get(stage, {})
        done = c.get("done", 0)
        if stage == "download":
            total, unit = snap["sources"], "sources"
        else:
            total, unit = max(snap["found"] - c.get("dropped", 0), 0), "videos"
        rate_unit = CLIP_UNITS.get(stage)
        rate = f"{c.get('rows', 0) / elapsed if elapsed > 0 else 0.0:7.1f} {rate_unit}/s" if rate_unit else ""
        cached = f"{c['cached']} cached" if c.get("cached") else ""
        finished = final or (upstream_done and done >= total and (total or stage != "download"))
        upstream_done = finished
        eta = "done" if finished else "stopped" if stopped else _eta(done, total, elapsed)
        lines.append(f"{stage:<{width}}  {done:>5}/{total:<5} {unit:<7}  {rate:<18}  "
                     f"{c.get('failed', 0):>4} failed  {cached:<10}  {eta}")
    return lines


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return "ETA ?"
    return "ETA " + clock((total - done) * elapsed / done)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --------------------------------------------------------------------------- display
class Display:
    """Polls the tally in a thread while the driver waits for the DAG; see the module docstring."""

    def __init__(self, tally, log, every_s: float = 5.0, stream=None, redraw: bool = True):
        """`redraw=False`: plain lines even in a terminal (Ray's own bars are on there: `-v`, and two
        displays redrawing the same lines would garble each other)."""
        self.tally = tally
        self.log = log
        self.stream = stream or sys.stderr
        self.tty = redraw and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = TTY_TICK_S if self.tty else max(0.1, every_s)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._drawn = 0  # lines of the block on the terminal
        self._last: dict = {}  # per stage, the counts last logged
        self._snap: dict | None = None  # the last snapshot: shown again when the tally is gone (Ctrl-C)
        self._thread = threading.Thread(target=self._loop, name="vico-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._thread.join()
        # Finished: every stage done. Interrupted or failed: the states as they were, "stopped".
        self.show(final=exc_type is None, stopped=exc_type is not None)

    def _snapshot(self, timeout: float = 10.0) -> dict | None:
        try:
            if isinstance(self.tally, Tally):
                self._snap = self.tally.snapshot()
            else:
                import ray
                self._snap = ray.get(self.tally.snapshot.remote(), timeout=timeout)
        except BaseException:  # a slow poll skips a beat; a Ctrl-C may have taken the tally's actor
            pass
        return self._snap

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.show()

    def show(self, final: bool = False, stopped: bool = False) -> None:
        # After a Ctrl-C, Ray's processes got the signal too: a short wait, else the last snapshot.
        snap = self._snapshot(timeout=2.0 if stopped else 10.0)
        if snap is None:
            return
        elapsed = time.monotonic() - self.started
        lines = stage_lines(snap, elapsed, final, stopped)
        if self.tty:
            self._redraw(lines)
            return
        for stage, line in zip(snap["stages"], lines):  # piped: the stages that moved, every stage at the end
            counts = (snap["counts"].get(stage), snap["found"])
            if final or stopped or self._last.get(stage) != counts:
                self.log(f"[{clock(elapsed):>7}] {line}")
            self._last[stage] = counts

    def _redraw(self, lines: list[str]) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the block's first line
        out += [f"\x1b[2K{line}\n" for line in lines]
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(lines)


__all__ = ["Tally", "Display", "start_tally", "report", "report_stage_result", "stage_lines", "clock"]
