"""What every stage is: a small class that turns one item into rows.

A stage knows nothing about Ray. `vico_pipeline.pipeline` builds it once per
worker, calls `setup()` once, then `process(item)` for each item, and writes the
rows it yields into the stage's table. A stage can be run on a plain list:

    stage = FramesStage(config); stage.setup()
    rows = [r for video in videos for r in stage.process(video)]

`process` yields `ErrorRow`s for inputs that failed; the run goes on.
"""
from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from typing import ClassVar, Iterator, Union

import pyarrow as pa


@dataclass
class ErrorRow:
    """One failed item, in the errors table's columns (`stage` is filled in by the runner)."""
    item_id: str
    source: str
    error_type: str
    message: str
    stage: str = ""

    def as_row(self) -> dict:
        return asdict(self)


ERRORS_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("item_id", pa.string()),
    ("source", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
])


class Stage:
    """Base class: subclasses set `name` and `schema` and implement `process`."""

    name: ClassVar[str]
    schema: ClassVar[pa.Schema]
    # Heavy stages (models, engines) run in long-lived actors; light ones as tasks.
    heavy: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def setup(self) -> None:
        """Load heavy objects once per worker."""

    def process(self, item: dict) -> Iterator[Union[dict, ErrorRow]]:
        raise NotImplementedError

    def run_stats(self) -> dict:
        """What the worker adds to this stage's per-video stats (run.py keeps the max over videos):
        its peak memory (`peak_memory`), and for stages with a context budget (clues, summaries) the
        largest prompt sent so far against the prompt room (the worker's, over every video it ran)."""
        stats = peak_memory()
        budget = getattr(self, "budget", None)
        if budget is not None:
            stats.update(max_prompt_tokens=budget.largest, prompt_tokens_room=budget.room)
        return stats

    def safe_process(self, item: dict, item_id: str, source: str) -> Iterator[Union[dict, ErrorRow]]:
        """`process`, with any unexpected exception turned into an error row."""
        try:
            yield from self.process(item)
        except Exception as exc:  # a bug or an unforeseen input must not end the run
            last = traceback.extract_tb(exc.__traceback__)[-1]
            yield ErrorRow(item_id, source, type(exc).__name__,
                           f"{exc} (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})")


def reset_peak_memory() -> bool:
    """Set this process's peak RSS back to its current RSS (Linux: "5" to /proc/self/clear_refs),
    so the next `peak_memory()` covers only what ran since. False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory() -> dict:
    """Peak resident memory (bytes) of this process: Linux's VmHWM, which `reset_peak_memory` resets
    (the runner does so before each video, so a reused Ray worker reports that video's peak, which
    still holds whatever earlier tasks left allocated). Elsewhere ru_maxrss: the lifetime peak, an
    upper bound, and after exec it also holds the parent's size at the fork. Children such as
    ffmpeg are in neither (bench/hour.py samples them)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return {"peak_rss_bytes": int(line.split()[1]) * 1024}
    except OSError:
        pass
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows to a table of exactly `schema` (extra keys dropped, missing ones null)."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)
