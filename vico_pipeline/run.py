"""A run end to end: manifest in, a complete version folder out.

    claim      .claim.json (the fingerprint) written first, so a killed run finds its folder again
    stages     the Ray Data DAG; every stage part is cached under _stages/ (docs/design.md)
    assemble   each table's folder gets the parts the run reached; videos/ and errors/ are written
    shards     shards/train/ and shards/val/ (stages/shards.py)
    card       README.md
    manifest   manifest.json with "status": "complete", written LAST

A version without that manifest is incomplete and every reader here refuses it.
Every file is written under a temporary name and renamed (`storage`), so a
killed run leaves at most stale temp files, whose names readers skip.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import uuid

import pyarrow as pa

from stages.base import ERRORS_SCHEMA, rows_to_table
from stages.download import TRANSIENT, VIDEOS_SCHEMA
from stages.manifest import read_manifest
from vico_pipeline import __version__, layout, storage
from vico_pipeline.config import to_plain
from vico_pipeline.fingerprint import version_fingerprint
from vico_pipeline.errors import RunError
from vico_pipeline.redact import redact, redact_text
from vico_pipeline.registry import stage_specs
from vico_pipeline.claim import Heartbeat, claim_version, new_owner
from vico_pipeline.versions import CLAIM, is_complete, list_versions
CARD = "README.md"


def run(config, log=lambda msg: print(msg, file=sys.stderr), retry_failed: bool = False) -> str:
    """Run the pipeline for `config` (see `_run`); the version's claim is refreshed while it runs,
    and released at once when the run fails."""
    heartbeats: list = []
    failed = True
    try:
        version_root = _run(config, log, retry_failed, heartbeats)
        failed = False
        return version_root
    finally:
        for heartbeat in heartbeats:
            heartbeat.stop(failed=failed)


def _run(config, log, retry_failed: bool, heartbeats: list) -> str:
    """Run the pipeline for `config`; returns the version folder (new, or found complete).

    With `retry_failed`, a complete version of the same config whose downloads failed for
    reasons that may pass (throttled, 5xx, timeouts) is not the answer: a new version
    retries those downloads and reuses everything else."""
    from vico_pipeline.inline import describe as describe_inline, light_work, run_inline
    from vico_pipeline.pipeline import run_stages, stage_roots_for
    from vico_pipeline.runtime import configure_data_context, init_ray

    started = time.time()
    manifest_rows = read_manifest(config.sources.manifest)
    fingerprint = version_fingerprint(config, manifest_rows)
    dataset_root = layout.dataset_dir(config.output.root, config.dataset.name)
    try:
        storage.makedirs(dataset_root)
    except OSError as exc:
        raise RunError(f"output.root is not writable: {config.output.root} ({exc.strerror or exc})") from None
    versions = list_versions(dataset_root)
    same = [v for v in versions if v["status"] == "complete" and v["manifest"].get("fingerprint") == fingerprint]
    if same:
        latest = same[-1]
        transient = latest["manifest"].get("transient_failures", 0)
        if not (retry_failed and transient):
            hint = (f" ({transient} download{'s' if transient != 1 else ''} failed for reasons that may pass: "
                    "`vico run --retry-failed` tries them again in a new version)") if transient else ""
            log(f"version {latest['version']} already holds this config and manifest; nothing to do{hint}")
            return latest["path"]
        if config.dataset.version:
            raise RunError(f"--retry-failed writes a new version; dataset.version={config.dataset.version} "
                           "names one: leave it out or choose another name")
        log(f"version {latest['version']} has {transient} transient download failures: retrying them in a new version")
    _validate_engines(config)  # before any claim or Ray: a mistake in an engine section is one line
    # Claim the folder first, exclusively, so no other run writes it and a killed run, started again, finds it.
    owner = new_owner()
    try:
        name, resumed = claim_version(config, dataset_root, fingerprint, owner, log)
    except OSError as exc:
        raise RunError(f"output.root is not writable: {config.output.root} ({exc.strerror or exc})") from None
    version_root = layout.version_dir(config.output.root, config.dataset.name, name)
    if resumed is None:
        log(f"version {name} was completed meanwhile by a run of this config and manifest; nothing to do")
        return version_root
    heartbeat = Heartbeat(version_root, owner, fingerprint, name)
    heartbeats.append(heartbeat.start())

    roots, stage_fps = stage_roots_for(config)
    light = None if _ray_ready() else light_work(manifest_rows, config, roots)
    if light is None:
        log(init_ray(config.ray))
        configure_data_context(config.ray.progress)
        from vico_pipeline.resources import check_resources
        check_resources(config, log)  # actor pools that take every CPU would hang the run: say so instead
    else:
        log(describe_inline(light))
    log(f"{'resuming' if resumed else 'writing'} {version_root} from {len(manifest_rows)} manifest lines")
    t_dag = time.time()
    refs = run_stages(manifest_rows, config, roots, log=log) if light is None \
        else run_inline(manifest_rows, config, roots)
    t_assemble = time.time()
    _still_ours(version_root, heartbeat)
    counts, part_rows, errors = assemble(version_root, refs, roots)
    log_failures(errors, log)
    t_shards = time.time()
    splits = write_question_splits(version_root, config.shards.val_fraction, counts)
    shard_index = write_version_shards(config, version_root, refs, splits)
    counts["shards"] = {"rows": sum(s["rows"] for s in shard_index), "bytes": sum(s["bytes"] for s in shard_index),
                        "files": len(shard_index)}
    finished = time.time()
    stats = stage_stats(refs, part_rows, errors)
    if "blind" in stats:
        stats["blind"]["accuracy_by_task"] = blind_stats(refs)
    if "questions" in stats:
        stats["questions"]["tasks_without_input"] = tasks_without_input_stats(refs, config.questions.tasks)
    stats["shards"] = {"items_in": counts["questions"]["rows"] if "questions" in counts else 0,
                       "items_out": counts["shards"]["rows"], "failed": 0, "cached": 0,
                       "seconds": round(finished - t_shards, 3)}
    manifest = {
        "version": name,
        "dataset": config.dataset.name,
        "fingerprint": fingerprint,
        "code_version": __version__,
        "stage_code_versions": {spec.name: spec.code_version for spec in stage_specs()},
        "created": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(),
        "seconds": round(finished - started, 2),
        "phases_s": {"stages": round(t_assemble - t_dag, 2), "assemble": round(t_shards - t_assemble, 2),
                     "shards": round(finished - t_shards, 2)},
        # Wall-clock rate of the stage DAG over the whole cluster (what a bigger cluster should raise).
        "throughput": {"videos_per_s": round(len(refs) / max(t_assemble - t_dag, 1e-9), 4),
                       "clip_rows_per_s": round(counts.get("clips", {}).get("rows", 0) / max(t_assemble - t_dag, 1e-9), 3)},
        "resumed": resumed,
        "transient_failures": transient_failures(errors),
        "config": redact(to_plain(config)),
        "manifest_source": redact_text(config.sources.manifest),
        "manifest_lines": len(manifest_rows),
        "clips_mode": config.clips.write_files,
        "tables": counts,
        "stages": stats,
        "stage_fingerprints": stage_fps,
        "reused": reused_map(stats, roots, stage_fps, versions, version_root),
        "shards": shard_index,
    }
    from vico_pipeline.card import write_card
    write_card(version_root, manifest)
    manifest["status"] = "complete"
    _still_ours(version_root, heartbeat)
    storage.write_json(storage.join(version_root, layout.MANIFEST), manifest)  # last: the version is complete
    from vico_pipeline.summary import run_summary, summary_line
    log(summary_line(run_summary(version_root, manifest)))
    return version_root


def transient_failures(errors: pa.Table) -> int:
    """Download error rows of kinds that may pass on another try (the next run retries them)."""
    return sum(1 for stage, kind in zip(errors["stage"].to_pylist(), errors["error_type"].to_pylist())
               if stage == "download" and kind in TRANSIENT)


def _validate_engines(config) -> None:
    from vico_pipeline.engines.base import EngineError
    from vico_pipeline.engines.registry import validate_engine

    for role in ("caption", "clues", "blind"):
        section = getattr(config, role, None)
        if section is None or (role == "blind" and not getattr(section, "enabled", True)):
            continue
        try:
            validate_engine(section, role)
        except EngineError as exc:
            raise RunError(str(exc)) from None


def _still_ours(version_root: str, heartbeat) -> None:
    """Never (re)write a complete version, nor one another run took over."""
    heartbeat.check()
    if is_complete(version_root):
        raise RunError(f"{version_root} is complete already (written by another run); nothing is rewritten")


def _resumable(versions: list[dict], fingerprint: str) -> str | None:
    """An incomplete version claimed by the same fingerprint: a killed run to finish."""
    for version in versions:
        claim = storage.join(version["path"], CLAIM)
        if version["status"] != "complete" and storage.exists(claim):
            try:
                if storage.read_json(claim).get("fingerprint") == fingerprint:
                    return version["version"]
            except ValueError:
                continue
    return None


# --------------------------------------------------------------------------- stats
PEAK_STATS = ("peak_rss_bytes", "max_prompt_tokens", "prompt_tokens_room")


def stage_stats(refs: list[dict], part_rows: dict[str, int], errors: pa.Table) -> dict:
    """Per stage: items_in (videos that reached it), items_out (rows), failed (error rows),
    error_types (error rows by type: the gates' rejections among them), cached (videos whose
    part was reused), seconds (worker time spent on the rest); and the largest over the videos
    it worked on of peak_rss_bytes (its worker's peak RSS during the video, stages/base.py
    peak_memory) and, for the clue and summary steps, max_prompt_tokens against prompt_tokens_room."""
    failed: dict[str, int] = {}
    kinds: dict[str, dict[str, int]] = {}
    for stage, kind in zip(errors.column("stage").to_pylist(), errors.column("error_type").to_pylist()):
        failed[stage] = failed.get(stage, 0) + 1
        kinds.setdefault(stage, {})[kind] = kinds.get(stage, {}).get(kind, 0) + 1
    stats: dict[str, dict] = {}
    for spec in stage_specs():
        stats[spec.name] = {"items_in": 0, "items_out": 0, "failed": failed.get(spec.name, 0),
                            "error_types": dict(sorted(kinds.get(spec.name, {}).items())), "cached": 0,
                            "seconds": 0.0}
    for row in refs:
        refs_of = json.loads(row["refs"])
        for stage, s in json.loads(row["stats"]).items():
            acc = stats.setdefault(stage, {"items_in": 0, "items_out": 0, "failed": 0, "cached": 0, "seconds": 0.0})
            if stage == "download" and s.get("cached") and s.get("rows") == 0:
                pass  # the 2nd.. video of one manifest line (a playlist): counted with the first
            else:
                acc["items_in"] += 1
            acc["cached"] += int(bool(s.get("cached")))
            acc["seconds"] = round(acc["seconds"] + s.get("seconds", 0.0), 3)
            for key in PEAK_STATS:  # worker peaks (stages/base.py run_stats): the max over videos
                if key in s:
                    acc[key] = max(acc.get(key, 0), s[key])
        for stage, part in refs_of.items():
            if stage != "download" and stage in stats:
                stats[stage]["items_out"] += part_rows.get(part, 0)
    download_parts = {json.loads(r["refs"]).get("download") for r in refs} - {None}
    if "download" in stats:
        stats["download"]["items_out"] = sum(part_rows.get(p, 0) for p in download_parts)
    for acc in stats.values():  # throughput of the work done (cached videos cost nothing), per worker-second
        done = acc["items_in"] - acc["cached"]
        acc["items_per_s"] = round(done / acc["seconds"], 4) if acc["seconds"] > 0 and done > 0 else None
    return stats


def blind_stats(refs: list[dict]) -> dict:
    """Blind accuracy per task before and after the blind filter: its input and output parts."""
    from stages.blind import blind_accuracy

    before, after = [], []
    for row in refs:
        parts = json.loads(row["refs"])
        if parts.get("questions") and "blind" in json.loads(row["stats"]):
            before += storage.read_parquet([parts["questions"]]).to_pylist()
            after += storage.read_parquet([parts["blind"]]).to_pylist() if parts.get("blind") else []
    return blind_accuracy(before, after)


def tasks_without_input_stats(refs: list[dict], tasks: list[str]) -> dict[str, int]:
    """Per task that needs a table besides the clues (`summary`, `said_when`): the videos that
    reached the questions stage without its rows (no video summary, no subtitle cue). The task
    is not made for them; that is counted here, not an error."""
    from stages.questions import tasks_without_input

    counts = {task: 0 for task in tasks_without_input(tasks, [], [])}
    for row in refs:
        if "questions" not in json.loads(row["stats"]):
            continue  # the video failed before the questions stage
        parts = json.loads(row["refs"])
        summaries = storage.read_parquet([parts["summaries"]]).to_pylist() if parts.get("summaries") else []
        cues = [{}] if parts.get("subtitles") else []  # a part is referenced only when it has rows
        for task in tasks_without_input(tasks, summaries, cues):
            counts[task] += 1
    return counts


def log_failures(errors: pa.Table, log, limit: int = 20) -> None:
    """One line a failed item, naming the stage and the video (its id and source)."""
    rows = errors.to_pylist()
    for e in rows[:limit]:
        log(redact_text(f"failed: {e['stage']}: video {e['item_id']} ({e['source']}): {e['error_type']}: {e['message']}"))
    if len(rows) > limit:
        log(f"failed: ... and {len(rows) - limit} more in the errors table")


def reused_map(stats: dict, roots: dict[str, str], stage_fps: dict[str, str], versions: list[dict],
               version_root: str) -> dict:
    """{stage: where its output came from}, for every stage that reused cached parts.

    `version` is the first complete version made with the same stage fingerprint
    (None: parts an interrupted run of this version had already written).
    """
    out = {}
    for stage, s in stats.items():
        if stage not in roots or not s.get("cached"):
            continue
        origin = next((v["version"] for v in versions if v["status"] == "complete"
                       and v["manifest"].get("stage_fingerprints", {}).get(stage) == stage_fps[stage]), None)
        out[stage] = {"from": roots[stage], "version": origin, "videos": s["cached"], "of": s["items_in"],
                      "all": s["cached"] >= s["items_in"]}
    return out


# --------------------------------------------------------------------------- assembly
def _link(src: str, dst: str) -> None:
    """Put an immutable part into a version: a hard link on a local disk, else a copy."""
    if storage.is_local(src) and storage.is_local(dst):
        src, dst = _local(src), _local(dst)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.exists(dst):
            os.remove(dst)
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
        storage.upload_file(src, dst)
    else:
        fs, src_path = storage.fs_and_path(src)
        _, dst_path = storage.fs_and_path(dst)
        fs.copy(src_path, dst_path)


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _size(uri: str) -> int:
    fs, path = storage.fs_and_path(uri)
    return fs.size(path)


def table_parts(refs: list[dict]) -> dict[str, list[str]]:
    """{table: sorted part uris} for the tables the stages fill (the last stage filling a table wins)."""
    out: dict[str, list[str]] = {}
    for spec in stage_specs():
        if spec.name == "download":
            continue
        out[spec.table] = sorted({json.loads(r["refs"])[spec.name] for r in refs
                                  if json.loads(r["refs"]).get(spec.name)})
    return out


def side_table_parts(refs: list[dict], roots: dict[str, str]) -> dict[str, list[str]]:
    """Tables a stage writes beside its own: `clue_candidates`, for every video the clue stage saw."""
    if "clues" not in roots:
        return {}
    root = storage.join(roots["clues"], "clue_candidates")
    uris = [layout.part_uri(root, r["video_id"]) for r in refs if "clues" in json.loads(r["stats"])]
    return {"clue_candidates": sorted(u for u in set(uris) if storage.exists(u))}


def assemble(version_root: str, refs: list[dict], roots: dict[str, str] | None = None
             ) -> tuple[dict, dict[str, int], pa.Table]:
    """Fill the version's tables from the stage parts the run reached (`roots`: the stage folders,
    for the tables a stage writes beside its own).

    Returns ({table: rows, bytes, files}, {part uri: rows}, the errors table).
    Each table is built whole in a staging folder, then renamed into place (`storage.rename_dir`),
    so a reader sees a table's old folder or its new one, never a half-filled one.
    """
    from stages.clues import CLUE_CANDIDATES_SCHEMA

    counts, part_rows = {}, {}
    schemas = {spec.table: spec.schema for spec in stage_specs()}
    schemas["clue_candidates"] = CLUE_CANDIDATES_SCHEMA
    tables = {**table_parts(refs), **side_table_parts(refs, roots or {})}
    for name in storage.listdir(version_root):  # a killed assembly's leftovers (this run owns the folder)
        if name.startswith(".staging-"):
            storage.remove(storage.join(version_root, name))
    staging = storage.join(version_root, f".staging-{uuid.uuid4().hex[:8]}")
    for table, parts in tables.items():
        table_root = storage.join(staging, table)
        nbytes = rows = 0
        for part in parts:
            target = storage.join(table_root, part.rsplit("/", 1)[-1])
            _link(part, target)
            part_rows[part] = storage.parquet_rows(target)
            rows += part_rows[part]
            nbytes += _size(target)
        if not parts:  # an empty table is still a readable dataset
            nbytes = storage.write_parquet(schemas[table].empty_table(), storage.join(table_root, "empty.parquet"))
        counts[table] = {"rows": rows, "bytes": nbytes, "files": max(1, len(parts))}
    # Parts outside the tables too: download's, and those of a stage a later one replaces (questions).
    for part in {p for r in refs for p in json.loads(r["refs"]).values()} - set(part_rows):
        part_rows[part] = storage.parquet_rows(part)
    errors = assemble_errors(refs)
    counts["errors"] = {"rows": errors.num_rows,
                        "bytes": storage.write_parquet(errors, storage.join(staging, "errors", "part-00000.parquet")),
                        "files": 1}
    videos = assemble_videos(refs, errors)
    counts["videos"] = {"rows": videos.num_rows,
                        "bytes": storage.write_parquet(videos, storage.join(staging, "videos", "part-00000.parquet")),
                        "files": 1}
    for table in counts:  # every table whole, then into place
        storage.rename_dir(storage.join(staging, table), layout.table_dir(version_root, table))
    storage.remove(staging)
    order = {t: i for i, t in enumerate(layout.TABLES)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], 99))), part_rows, errors


def assemble_errors(refs: list[dict]) -> pa.Table:
    uris = sorted({u for r in refs for u in json.loads(r["error_parts"])})
    return storage.read_parquet(uris, ERRORS_SCHEMA)


def assemble_videos(refs: list[dict], errors: pa.Table) -> pa.Table:
    """One row per input video: its download row, with `status` saying how far it got."""
    download_parts = sorted({json.loads(r["refs"])["download"] for r in refs if json.loads(r["refs"]).get("download")})
    # A video named by two manifest lines (a URL and a playlist) is in two download parts: one row.
    videos = list({v["video_id"]: v for v in storage.read_parquet(download_parts, VIDEOS_SCHEMA).to_pylist()}.values())
    last_stage = {r["video_id"]: list(json.loads(r["refs"])) for r in refs}
    first_error = {}
    for e in errors.to_pylist():
        first_error.setdefault(e["item_id"], e)
    final = stage_specs()[-1].name
    for video in videos:
        reached = last_stage.get(video["video_id"], [])
        if final in reached:
            video["status"] = "ok"
        else:
            error = first_error.get(video["video_id"])
            video["status"] = f"failed:{error['stage']}:{error['error_type']}" if error else f"stopped_after:{reached[-1] if reached else 'download'}"
    seen = {v["video_id"] for v in videos}
    for e in errors.to_pylist():  # videos that never downloaded still get a row
        if e["stage"] == "download" and e["item_id"] not in seen:
            seen.add(e["item_id"])
            videos.append({"video_id": e["item_id"], "source": e["source"], "status": f"failed:download:{e['error_type']}"})
    return rows_to_table(videos, VIDEOS_SCHEMA)


# --------------------------------------------------------------------------- shards
def write_question_splits(version_root: str, val_fraction: float, counts: dict) -> dict[str, str]:
    """Train/val for the version's videos with questions, by hash rank (stages/shards.assign_splits),
    written into the version's questions table so that it and the shards say the same."""
    from stages.shards import assign_splits

    folder = layout.table_dir(version_root, "questions")
    files = [storage.join(folder, name) for name in storage.listdir(folder) if name.endswith(".parquet")
             and not name.startswith(".")]
    tables = {uri: storage.read_parquet([uri]) for uri in files}
    splits = assign_splits([v for t in tables.values() for v in t.column("video_id").to_pylist()], val_fraction)
    nbytes = 0
    for uri, table in tables.items():
        if table.num_rows and "split" in table.column_names:
            column = pa.array([splits[v] for v in table.column("video_id").to_pylist()], pa.string())
            table = table.set_column(table.column_names.index("split"), "split", column)
            nbytes += storage.write_parquet(table, uri)  # a new file replaces the link: the cached part is untouched
        else:
            nbytes += _size(uri)
    if "questions" in counts:
        counts["questions"]["bytes"] = nbytes
    return splits


def write_version_shards(config, version_root: str, refs: list[dict], splits: dict[str, str] | None = None) -> list[dict]:
    """shards/train and shards/val from the version's questions and clips; returns the shard index."""
    from stages.shards import plan_shards, sample_inputs, write_shard

    parts = table_parts(refs)
    video_parts = sorted({json.loads(r["refs"]).get("download") for r in refs} - {None})
    inputs = sample_inputs(parts.get("questions", []), parts.get("clips", []), video_parts)
    for sample in inputs:  # the split the questions table says (write_question_splits)
        sample.split = (splits or {}).get(sample.video_id, sample.split)
    plans = plan_shards(inputs, config.shards)
    for split in ("train", "val"):
        storage.remove(layout.shards_dir(version_root, split))
    if len(plans) > 1 and _ray_ready():
        import ray

        task = ray.remote(num_cpus=1)(write_shard)
        index = ray.get([task.remote(plan, version_root, config.shards) for plan in plans])
    else:
        index = [write_shard(plan, version_root, config.shards) for plan in plans]
    return [entry for entries in index for entry in entries]


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()
