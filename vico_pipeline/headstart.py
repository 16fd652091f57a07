"""A head start: the first videos' download and decode while the embedded Ray starts.

Starting a local Ray takes seconds (its processes, their imports, the prestarted
workers) in which no stage can run, and on a run of one long video the decode is
most of the rest. The heavy stages before the models, download and frames, do not
need Ray: run here, in a thread of the driver, with the DAG's own runners
(`pipeline.DownloadRunner`, `StageRunner`), they write the very part files the DAG
would have written. The DAG then finds those parts and goes on from them.

So that the version says what happened, the stats the head start measured are
handed to the DAG's runners (`done_here`: {part uri: stats}) and reported as this
run's work, not as cached parts: the manifest, the summary and the progress lines
read as they would without a head start.

The head start tries each download once. A source that fails for a reason that
may pass (throttled, 5xx, a timeout) is left to the DAG, which retries it with the
configured backoff while the progress table shows it: retries here would hold up
the whole run behind a blank terminal.

Ray itself still starts on the main thread (it installs its signal handlers
there). When the start fails, or the user interrupts it, the head start stops at
the next clip (its ffmpeg is killed) and writes no half part.
"""
from __future__ import annotations

import os
import threading
import time

from vico_pipeline.pipeline import DownloadRunner, StageRunner, download_unit, transient_failure, write_part
from vico_pipeline.inline import runs_in_driver
from vico_pipeline.registry import stage_specs
from vico_pipeline import layout, storage

HEAD_START_STAGES = ("download", "frames")  # what a video needs before anything that uses a model
# Ray's start comes first: its raylet has 30 s to register, which a loaded machine can miss. The
# head start's thread (and the ffmpeg it starts, the threads it makes) runs at this niceness, so
# it takes only the CPU that Ray's start leaves. Linux keeps a niceness per thread.
NICENESS = 10


class Cancelled(Exception):
    """The run stopped while the head start worked: leave its part unwritten."""


class _StoppableRunner(StageRunner):
    """A StageRunner whose rows stop coming when the run no longer wants them."""

    def __init__(self, spec, config, stage_root, stop: threading.Event):
        super().__init__(spec, config, stage_root)
        self.stop = stop

    def write(self, row: dict, item: dict) -> tuple[int, int]:
        vid = row["video_id"]
        rows = self.stage.safe_process(item, vid, row["source"])
        return write_part(_until(self.stop, rows), self.spec.schema, layout.part_uri(self.stage_root, vid),
                          layout.errors_uri(self.stage_root, vid), self.spec.name)


def _until(stop: threading.Event, rows):
    for row in rows:
        if stop.is_set():
            rows.close()  # the stage's generator cleans up: the frames stage kills its ffmpeg
            raise Cancelled()
        yield row


class HeadStart:
    """`with HeadStart(...) as early: <start Ray>; done_here = early.result()`.

    A no-op (result `{}`) when there is nothing to overlap: Ray already up, a cluster to
    join (the driver may not be where the work should run), or `ray.head_start_videos: 0`.
    """

    def __init__(self, manifest_rows: list[dict], config, stage_roots: dict[str, str]):
        from vico_pipeline.runtime import cluster_address, ray_ready

        self.done: dict[str, dict] = {}
        self.error: BaseException | None = None
        self.seconds: float | None = None  # how long the head start worked (None: there was none)
        self.stop = threading.Event()
        self.native_id: int | None = None  # the head start thread's id (Linux: its own niceness)
        count = config.ray.head_start_videos
        if not count or ray_ready() or cluster_address(config.ray):
            self.thread = None
            return
        # The lines in the DAG's order, each unit once (pipeline.run_stages).
        first_lines = {download_unit(line["url"]): line for line in reversed(manifest_rows)}
        lines = [first_lines[u] for u in dict.fromkeys(download_unit(l["url"]) for l in manifest_rows)][:count]
        self.thread = threading.Thread(target=self._work, args=(lines, config, stage_roots),
                                       name="vico-head-start", daemon=True)

    def __enter__(self) -> "HeadStart":
        if self.thread is not None:
            self.thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and self.thread is not None:
            self.stop.set()  # the run failed or was interrupted: no more work, and no half part
            self.thread.join(timeout=10)

    def full_speed(self) -> None:
        """Ray is up: the head start no longer competes with its start. Its thread and the
        processes it started (its ffmpeg) go back to the run's own niceness, so that the rest of
        the decode, now the critical path, is not left to whatever else runs on the machine."""
        if self.thread is None or self.native_id is None:
            return
        own = _niceness(os.getpid())
        # Its thread, the threads it made (they inherit its niceness), and the processes it started.
        for ident in {self.native_id, *_threads(), *_children()}:
            try:
                if os.getpriority(os.PRIO_PROCESS, ident) > own:
                    os.setpriority(os.PRIO_PROCESS, ident, own)
            except OSError:  # gone meanwhile, or no right to lower a niceness (not root): leave it
                pass

    def result(self) -> dict[str, dict]:
        """Waits for the head start; {part uri: stats} of the parts it wrote (for the DAG's runners)."""
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        return dict(self.done)

    def _work(self, lines: list[dict], config, stage_roots: dict[str, str]) -> None:
        started = time.perf_counter()
        native_id = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, native_id, NICENESS)
        except (AttributeError, OSError):  # not Linux: the same work, at the same priority
            pass
        self.native_id = native_id  # set once niced: full_speed() may undo it from now on
        try:
            specs = {spec.name: spec for spec in stage_specs()}
            # One attempt: a source that fails is left to the DAG, which retries it with the configured
            # backoff while the progress table shows it (here, retries would hold up the whole run).
            one_try = config.model_copy(update={"download": config.download.model_copy(update={"retries": 0})})
            download = DownloadRunner(specs["download"], one_try, stage_roots["download"])
            later = [_StoppableRunner(specs[name], config, stage_roots[name], self.stop)
                     for name in HEAD_START_STAGES[1:] if runs_in_driver(specs[name], config)]
            for line in lines:
                if self.stop.is_set():
                    return
                rows = download(line)
                unit = download_unit(line["url"])
                part, errors = layout.part_uri(stage_roots["download"], unit), layout.errors_uri(stage_roots["download"], unit)
                if transient_failure(part, errors):  # throttled, 5xx, a timeout: the DAG tries again
                    storage.remove(part)
                    storage.remove(errors)
                    return
                self._record("download", part, rows[0])
                for row in rows:
                    for runner in later:
                        row = runner(row)
                        self._record(runner.spec.name, layout.part_uri(runner.stage_root, row["video_id"]), row)
        except Cancelled:
            pass
        except BaseException as exc:  # handed to the main thread by result()
            self.error = exc
        finally:
            self.seconds = round(time.perf_counter() - started, 2)

    def _record(self, stage: str, part: str, row: dict) -> None:
        import json

        stats = json.loads(row["stats"]).get(stage)
        if stats is not None and not stats.get("cached"):  # a part found before this run stays "cached"
            self.done[part] = stats


def _niceness(pid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except (AttributeError, OSError):
        return 0


def _threads() -> list[int]:
    """This process's threads (Linux /proc; none elsewhere)."""
    try:
        return [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _children() -> list[int]:
    """The processes this process started (Linux /proc; none elsewhere)."""
    pids: list[int] = []
    for task in _threads():
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return pids


__all__ = ["HeadStart", "HEAD_START_STAGES"]
