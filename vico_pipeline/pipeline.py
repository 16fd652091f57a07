"""The Ray Data DAG: stages wired together, their output cached, a version assembled.

Rows that flow through Ray are small references, one per video:
    {video_id, source, refs: {stage: part uri}, error_parts: [uri], stats: {stage: {...}}}
Each stage's worker reads its inputs' part files, runs the stage on the video,
writes its own part file atomically and adds its uri to `refs`. A part that
already exists is reused without running the stage: that is how a killed run
resumes and how a new version reuses unchanged stages (docs/design.md).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import replace
from functools import partial
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from stages.base import ERRORS_SCHEMA, ErrorRow, reset_peak_memory, rows_to_table
from stages.manifest import normalise_source, source_kind, video_id_for
from vico_pipeline import layout, storage
from vico_pipeline import progress as stage_progress
from vico_pipeline.fingerprint import stage_fingerprints
from vico_pipeline.registry import StageSpec, stage_specs

ROW_GROUP_ROWS = 32  # clips carry frames: a few MB a row group


# --------------------------------------------------------------------------- part files
def write_part(rows: Iterable[dict | ErrorRow], schema: pa.Schema, part: str, errors: str,
               stage: str) -> tuple[int, int]:
    """Stream `rows` into `part` (atomically); error rows go to `errors`, written first.

    The part's existence is the completion marker, so it is renamed into place last.
    """
    fd, tmp = tempfile.mkstemp(prefix="vico-part-", suffix=".parquet")
    os.close(fd)
    count, failed, buffer = 0, [], []
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for row in rows:
                if isinstance(row, ErrorRow):
                    row.stage = stage
                    failed.append(row.as_row())
                    continue
                buffer.append(row)
                count += 1
                if len(buffer) >= ROW_GROUP_ROWS:
                    writer.write_table(rows_to_table(buffer, schema))
                    buffer = []
            if buffer:
                writer.write_table(rows_to_table(buffer, schema))
        if failed:
            storage.write_parquet(rows_to_table(failed, ERRORS_SCHEMA), errors)
        else:
            storage.remove(errors)  # rows of an earlier attempt, killed before its part, that failed
        storage.upload_file(tmp, part)
    finally:
        os.unlink(tmp)
    return count, len(failed)


def _read_rows(uri: str, video_id: str | None = None, skip: tuple[str, ...] = ()) -> list[dict]:
    table = storage.read_parquet([uri], skip=skip)
    if video_id is not None and "video_id" in table.column_names:
        table = table.filter(pa.compute.equal(table["video_id"], video_id))
    return table.to_pylist()


# --------------------------------------------------------------------------- workers
class StageRunner:
    """Runs one stage on the videos that reach it; built once per Ray worker."""

    def __init__(self, spec: StageSpec, config, stage_root: str):
        self.spec = spec
        self.config = config
        self.stage_root = stage_root
        self._stage = None

    @property
    def stage(self):
        """The stage object, built (models loaded, actors found) the first time a video needs it:
        a worker that finds every part cached never pays for it."""
        if self._stage is None:
            self._stage = self.spec.build(self.config, self.stage_root)
            self._stage.setup()
        return self._stage

    def __call__(self, row: dict, done_here: dict | None = None) -> dict:
        """`done_here`: {part uri: stats} of parts this run wrote before the DAG (headstart.py):
        such a part is this run's work, reported with its stats, not as a cached part."""
        refs = json.loads(row["refs"])
        if not all(refs.get(name) for name in self.spec.inputs):
            stage_progress.report(self.spec.name, done=0, dropped=1)
            return row  # the video failed upstream; its error row is already written
        part = layout.part_uri(self.stage_root, row["video_id"])
        if storage.exists(part):
            return self.finish(row, (done_here or {}).get(part) or {"cached": True})
        reset_peak_memory()  # the stats' peak_rss_bytes is this video's, not the worker's lifetime
        started = time.perf_counter()
        item = self.item(row, refs)
        if item is None:
            stage_progress.report(self.spec.name, done=0, dropped=1)
            return row  # nothing upstream to work on (e.g. every clip filtered out)
        count, failed = self.write(row, item)
        return self.finish(row, {"rows": count, "errors": failed, "seconds": round(time.perf_counter() - started, 3),
                                 **self.stage.run_stats()})

    def item(self, row: dict, refs: dict) -> dict | None:
        """The stage's input for a video: its download row and its rows of the other inputs."""
        vid = row["video_id"]
        item = {"video_id": vid, "source": row["source"], "video": _read_rows(refs["download"], vid)[0]}
        for name in self.spec.inputs:
            if name != "download":
                item[name] = _read_rows(refs[name], skip=self.spec.unread_columns)
        if any(name != "download" and not item[name] for name in self.spec.inputs):
            return None
        for name in self.optional:  # a video may have none (no subtitles): the stage gets []
            item[name] = _read_rows(refs[name]) if refs.get(name) else []
        return item

    @property
    def optional(self) -> tuple[str, ...]:
        return self.spec.used_optional(self.config, {spec.name for spec in stage_specs()})

    def write(self, row: dict, item: dict) -> tuple[int, int]:
        """Run the stage on a video's item; write its part (atomically) and its error rows."""
        vid = row["video_id"]
        return write_part(self.stage.safe_process(item, vid, row["source"]), self.spec.schema,
                          layout.part_uri(self.stage_root, vid), layout.errors_uri(self.stage_root, vid),
                          self.spec.name)

    def finish(self, row: dict, stats: dict) -> dict:
        """The reference row after this stage: its stats, its errors, its part when it has rows."""
        vid = row["video_id"]
        part, errors = layout.part_uri(self.stage_root, vid), layout.errors_uri(self.stage_root, vid)
        if storage.exists(errors):
            parts = json.loads(row["error_parts"])
            if errors not in parts:
                row["error_parts"] = json.dumps(parts + [errors])
        refs = json.loads(row["refs"])
        if storage.parquet_rows(part) > 0:
            refs[self.spec.name] = part
        row["refs"] = json.dumps(refs)
        row["stats"] = json.dumps({**json.loads(row["stats"]), self.spec.name: stats})
        stage_progress.report_stage_result(self.spec.name, stats)
        return row


class DownloadRunner(StageRunner):
    """The first stage: a manifest line in, one reference row per video out."""

    def __call__(self, line: dict, done_here: dict | None = None) -> list[dict]:
        unit = download_unit(line["url"])
        part = layout.part_uri(self.stage_root, unit)
        errors = layout.errors_uri(self.stage_root, unit)
        started = time.perf_counter()
        done_here = done_here or {}
        if storage.exists(part) and part not in done_here and transient_failure(part, errors):
            storage.remove(part)  # the unit is to do again; write_part replaces its error rows
        if storage.exists(part):
            stats = done_here.get(part) or {"cached": True}
        else:
            reset_peak_memory()
            count, failed = write_part(self.stage.safe_process(line, unit, line["url"]), self.stage.schema,
                                       part, errors, self.spec.name)
            stats = {"rows": count, "errors": failed, "seconds": round(time.perf_counter() - started, 3),
                     **self.stage.run_stats()}
        error_parts = [errors] if storage.exists(errors) else []
        videos = _read_rows(part)
        out = [{"video_id": v["video_id"], "source": v["source"], "refs": json.dumps({"download": part}),
                "error_parts": json.dumps(error_parts),
                "stats": json.dumps({"download": stats if i == 0 else {"cached": True, "rows": 0}})}
               for i, v in enumerate(videos)]
        if not out:  # every video of the line failed: a row still carries its errors
            from vico_pipeline.redact import redact_text  # the real URL stays in the manifest line

            out = [{"video_id": unit, "source": redact_text(line["url"]), "refs": "{}",
                    "error_parts": json.dumps(error_parts), "stats": json.dumps({"download": stats})}]
        stage_progress.report("download", failed=int(stats.get("errors") or 0), cached=int(bool(stats.get("cached"))),
                        found=len(out))
        return out


def transient_failure(part: str, errors: str) -> bool:
    """A download unit that got no video and failed only for reasons that may pass (throttled,
    5xx, timeout, truncated): its part is not taken as finished work, so the next run retries it."""
    from stages.download import TRANSIENT

    if storage.parquet_rows(part) > 0 or not storage.exists(errors):
        return False
    kinds = set(storage.read_parquet([errors])["error_type"].to_pylist())
    return bool(kinds) and kinds <= TRANSIENT


def download_unit(url: str) -> str:
    if source_kind(url) == "invalid":
        import hashlib
        return "invalid-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    return video_id_for(url)


# Light stages run as Ray tasks; the stage object is kept per worker process.
_RUNNERS: dict[tuple, StageRunner] = {}


def _runner(spec: StageSpec, config, stage_root: str, runner_cls=StageRunner) -> StageRunner:
    key = (spec.name, spec.build, stage_root)
    if key not in _RUNNERS:
        _RUNNERS[key] = runner_cls(spec, config, stage_root)
    return _RUNNERS[key]


def _run_task(row: dict, spec: StageSpec, config, stage_root: str, runner_cls=StageRunner,
              done_here: dict | None = None):
    return _runner(spec, config, stage_root, runner_cls)(row, done_here)


# --------------------------------------------------------------------------- caption on ray.data.llm
# `caption.runner: ray_data_llm`: the caption step as Ray Data's LLM processor, one request row
# per kept clip, instead of the stage's own actors. The reference rows (small, one per video) are
# materialised first; videos that need no request (cached, failed upstream, no clip kept) are
# settled as the actor runner would settle them; the others' clips go through the processor, and
# the answers are grouped back per video, parsed by the caption stage's code and written to the
# video's part like any stage's. docs/engines.md has the trade-off.
REFERENCE_COLUMNS = ("video_id", "source", "refs", "stats", "error_parts")
CLIP_COLUMNS = ("clip_id", "clip_index", "start_s", "end_s", "caption_frame_times_s")
# What a request row carries to its answer; `shots_s`: its video's shots, for the key event's span.
ANSWER_CARRY = REFERENCE_COLUMNS + CLIP_COLUMNS + ("shots_s",)
MAX_GROUP_PARTITIONS = 64  # the regrouping's hash partitions (Ray's default: 200, whatever the videos)


def _caption_answers_stage(config, root):
    from stages.caption import CaptionAnswers
    return CaptionAnswers(config)


def _needs_requests(row: dict, spec: StageSpec, stage_root: str) -> bool:
    """The video's inputs are there, its caption part is not, and the filter kept a clip."""
    refs = json.loads(row["refs"])
    return (all(refs.get(name) for name in spec.inputs)
            and not storage.exists(layout.part_uri(stage_root, row["video_id"]))
            and any(verdict["kept"] for verdict in _read_rows(refs["filter"])))


def _settled(row: dict, spec: StageSpec, stage_root: str) -> bool:
    return not _needs_requests(row, spec, stage_root)


def _caption_requests(row: dict, use_subtitles: bool = False) -> list[dict]:
    """One request row per clip the filter kept, carrying its video's reference row (and the
    subtitle lines of the clip for its prompt, `caption.use_subtitles`)."""
    from stages.caption import clip_subtitles, kept_clips
    from vico_pipeline.spans import video_shots

    refs = json.loads(row["refs"])
    video = {name: row[name] for name in REFERENCE_COLUMNS}
    cues = _read_rows(refs["subtitles"]) if use_subtitles and refs.get("subtitles") else []
    clips = _read_rows(refs["frames"])
    shots = [list(s) for s in video_shots(clips, _read_rows(refs["download"], row["video_id"])[0]["duration_s"])]
    return [{**video, **{name: clip[name] for name in CLIP_COLUMNS}, "caption_frames": clip["caption_frames"],
             "subtitles": clip_subtitles(cues, clip["start_s"], clip["end_s"]), "shots_s": shots}
            for clip in kept_clips(clips, _read_rows(refs["filter"]))]


def _write_captions(answers: pa.Table, spec: StageSpec, config, stage_root: str) -> dict:
    """One video's answers (a group) -> its caption part; returns its reference row."""
    from vico_pipeline.engines import batch_processor

    to_result = batch_processor(config.caption.engine).to_result
    answers = answers.to_pylist()
    row = {name: answers[0][name] for name in REFERENCE_COLUMNS}
    runner = _runner(spec, config, stage_root)
    item = {"video_id": row["video_id"], "source": row["source"],
            "answers": [{**answer, "result": to_result(answer)} for answer in answers]}
    count, failed = runner.write(row, item)
    # The engine time of the video's requests (a replica works on many at once).
    seconds = round(sum(answer["latency_s"] for answer in answers), 3)
    row = runner.finish(row, {"rows": count, "errors": failed, "seconds": seconds})
    return {name: [row[name]] for name in REFERENCE_COLUMNS}


def caption_processor(config):
    """Ray Data's vLLM processor for caption request rows (built, not run, until the dataset is)."""
    from stages.caption import caption_request
    from vico_pipeline.engines import batch_processor

    section = config.caption
    return batch_processor(section.engine).build(section, section.frames_per_clip, partial(caption_request, section.prompt_version),
                 carry=ANSWER_CARRY, drop=("caption_frames",))


def caption_with_processor(ds, spec: StageSpec, config, stage_root: str, make_processor=caption_processor):
    """The caption step on `ds` (reference rows) through `make_processor(config)`, a Dataset ->
    Dataset callable; returns the reference rows after captioning."""
    from vico_pipeline.engines import batch_processor

    answer = batch_processor(config.caption.engine).answer
    spec = replace(spec, build=_caption_answers_stage)  # parses answers; never builds an engine
    where, args = {"spec": spec, "stage_root": stage_root}, {"spec": spec, "config": config, "stage_root": stage_root}
    videos = ds.materialize()  # read twice below, so the stages before run once
    settled = videos.filter(partial(_settled, **where)).map(_run_task, fn_kwargs=args)
    pending = videos.filter(partial(_needs_requests, **where)).materialize()
    count = pending.count()
    if count == 0:
        return settled  # every caption cached: no processor, no GPU
    use_subtitles = "subtitles" in _runner(spec, config, stage_root).optional
    requests = pending.flat_map(_caption_requests, fn_kwargs={"use_subtitles": use_subtitles})
    answers = make_processor(config)(requests).map(partial(answer, carry=ANSWER_CARRY))
    captioned = answers.groupby("video_id", num_partitions=min(count, MAX_GROUP_PARTITIONS)).map_groups(
        _write_captions, batch_format="pyarrow", fn_kwargs=args)
    return settled.union(captioned)


# --------------------------------------------------------------------------- the DAG
def build_dataset(manifest_rows: list[dict], config, stage_roots: dict[str, str], done_here: dict | None = None):
    """The DAG on Ray Data; `done_here`: parts this run wrote before it (StageRunner.__call__)."""
    import ray.data

    specs = stage_specs()
    ds = ray.data.from_items(manifest_rows, override_num_blocks=max(1, len(manifest_rows)))
    for spec in specs:
        if spec.name == "caption" and config.caption.runner == "ray_data_llm":
            ds = caption_with_processor(ds, spec, config, stage_roots[spec.name])
            continue
        res = spec.resources(config)
        runner_cls = DownloadRunner if spec.name == "download" else StageRunner
        apply = ds.flat_map if spec.name == "download" else ds.map
        kwargs = {"num_cpus": res["num_cpus"]}
        if res.get("num_gpus"):
            kwargs["num_gpus"] = res["num_gpus"]
        if res.get("actor"):
            # Heavy stages (models) live in an actor pool: built once per actor, reused for every video.
            size = res.get("concurrency") or 1
            pool = ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1]) if isinstance(size, (tuple, list)) \
                else ray.data.ActorPoolStrategy(size=size)
            ds = apply(runner_cls, fn_constructor_args=(spec, config, stage_roots[spec.name]), compute=pool, **kwargs)
        else:
            if res.get("concurrency"):
                size = res["concurrency"]
                if spec.name == "download":  # never more download tasks than manifest lines
                    size = min(size, max(1, len(manifest_rows)))
                kwargs["compute"] = ray.data.TaskPoolStrategy(size=size)
            ds = apply(_run_task, fn_kwargs={"spec": spec, "config": config,
                                             "stage_root": stage_roots[spec.name], "runner_cls": runner_cls,
                                             "done_here": done_here},
                       **kwargs)
    return ds


def run_stages(manifest_rows: list[dict], config, stage_roots: dict[str, str], progress: bool = True,
               log=None, done_here: dict | None = None) -> list[dict]:
    """Run the DAG to the end; returns the reference rows, one per video, in source order.
    `done_here`: {part uri: stats} of the parts a head start wrote (headstart.py).

    While it runs, a line per stage (vico_pipeline/progress.py) goes to the terminal, or to `log`
    every `ray.status_every_s` seconds when stderr is not a terminal."""
    import contextlib
    import sys

    unique = {download_unit(line["url"]): line for line in reversed(manifest_rows)}  # a line listed twice runs once
    lines = [unique[u] for u in dict.fromkeys(download_unit(l["url"]) for l in manifest_rows)]
    ds = build_dataset(lines, config, stage_roots, done_here)
    tally = stage_progress.start_tally([spec.name for spec in stage_specs()], len(lines), use_ray=True)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    # With Ray's own bars on (ray.progress, `-v`), vico's lines are plain lines, never redrawn over Ray's.
    display = stage_progress.Display(tally, log, config.ray.status_every_s, redraw=not config.ray.progress) \
        if progress else contextlib.nullcontext()
    with display:
        rows = [dict(row) for row in ds.iter_rows()]
    return sorted(merge_duplicates(rows), key=lambda r: (r["source"], r["video_id"]))


def merge_duplicates(rows: list[dict]) -> list[dict]:
    """One row per video: a video reached from two manifest lines (a URL and a playlist
    naming it) was written to the same parts, so keep the row that got furthest."""
    by_id: dict[str, dict] = {}
    for row in rows:
        kept = by_id.get(row["video_id"])
        if kept is None:
            by_id[row["video_id"]] = row
            continue
        errors = sorted(set(json.loads(kept["error_parts"])) | set(json.loads(row["error_parts"])))
        if len(json.loads(row["refs"])) > len(json.loads(kept["refs"])):
            row, kept = kept, row
            by_id[kept["video_id"]] = kept
        kept["error_parts"] = json.dumps(errors)
    return list(by_id.values())


def stage_roots_for(config) -> tuple[dict[str, str], dict[str, str]]:
    fps = stage_fingerprints(config, stage_specs())
    roots = {name: layout.stage_dir(config.output.root, config.dataset.name, name, fp) for name, fp in fps.items()}
    return roots, fps


__all__ = ["run_stages", "stage_roots_for", "write_part", "StageRunner", "DownloadRunner", "normalise_source"]
