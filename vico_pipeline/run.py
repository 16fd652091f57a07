"""A run end to end: manifest in, a complete version folder out.

    claim      .claim.json (the fingerprint) written first, so a killed run finds its folder again
    stages     the Ray Data DAG; every stage part is cached under _stages/ (docs/design.md)
    assemble   each table's folder gets the parts the run reached; videos/ and errors/ are written
    shards     shards/train/ and shards/val/ (both in vico_pipeline/assemble.py)
    card       README.md
    manifest   manifest.json with "status": "complete", written LAST

A version without that manifest is incomplete and every reader here refuses it.
Every file is written under a temporary name and renamed (`storage`), so a
killed run leaves at most stale temp files, whose names readers skip.
"""
from __future__ import annotations

import datetime as dt
import sys
import time

import pyarrow as pa

from stages.manifest import read_manifest
from vico_pipeline import __version__, layout, storage
from vico_pipeline.assemble import assemble, drop_duplicates, write_question_splits, write_version_shards
from vico_pipeline.claim import Heartbeat, claim_version, new_owner
from vico_pipeline.config import to_plain
from vico_pipeline.errors import RunError
from vico_pipeline.fingerprint import version_fingerprint
from vico_pipeline.redact import redact, redact_text
from vico_pipeline.registry import stage_specs
from vico_pipeline.runtime import ray_ready
from vico_pipeline.summary import (blind_stats, rejected_then_retried, reused_map, stage_stats,
                                   tasks_without_input_stats, transient_failures)
from vico_pipeline.versions import is_complete, list_versions
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
    from vico_pipeline.inline import HEAVY_STAGES, describe as describe_inline, light_work, one_file_work, run_inline
    from vico_pipeline.pipeline import run_stages, stage_roots_for
    from vico_pipeline.headstart import HeadStart
    from vico_pipeline.runtime import configure_data_context, init_ray

    started = time.time()
    manifest_rows = read_manifest(config.sources.manifest)
    fingerprint = version_fingerprint(config, manifest_rows, stage_specs())
    dataset_root = layout.dataset_dir(config.output.root, config.dataset.name)
    reason = storage.unwritable(dataset_root)  # a file written and removed: a read-only folder too
    if reason:
        raise RunError(f"output.root is not writable: {config.output.root} ({reason})")
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
        name, resumed = claim_version(config, dataset_root, fingerprint, owner, log,
                                      replacing={v["version"] for v in same})  # --retry-failed
    except OSError as exc:
        raise RunError(f"output.root is not writable: {config.output.root} ({exc.strerror or exc})") from None
    version_root = layout.version_dir(config.output.root, config.dataset.name, name)
    if resumed is None:
        log(f"version {name} was completed meanwhile by a run of this config and manifest; nothing to do")
        return version_root
    heartbeat = Heartbeat(version_root, owner, fingerprint, name)
    heartbeats.append(heartbeat.start())

    roots, stage_fps = stage_roots_for(config)
    light = None  # {stage: videos} of work to run in this process, without Ray (inline.py)
    if not ray_ready():
        light = light_work(manifest_rows, config, roots)  # {}: nothing left to do, still no Ray
        if light is None:
            light = one_file_work(manifest_rows, config)  # one video and no model: Ray would add only its start
    done_here: dict = {}
    head_start_s = None
    if light is None:
        with HeadStart(manifest_rows, config, roots) as early:  # the first video's decode while Ray starts
            log("starting Ray…")  # its start takes seconds: say so before, not after
            log(init_ray(config.ray))
            early.full_speed()  # Ray is up: the head start's decode is now the critical path
            configure_data_context(config.ray.progress)
            from vico_pipeline.resources import check_resources
            check_resources(config, log)  # actor pools that take every CPU would hang the run: say so instead
            done_here = early.result()
        head_start_s = early.seconds
    else:
        log(describe_inline(light))
    log(f"{'resuming' if resumed else 'writing'} {version_root} from {len(manifest_rows)} manifest lines")
    t_dag = time.time()
    refs = run_stages(manifest_rows, config, roots, log=log, done_here=done_here) if light is None \
        else run_inline(manifest_rows, config, roots, log=log, progress=any(s in light for s in HEAVY_STAGES))
    dropped, dedup_s = {}, 0.0
    if config.dedup.enabled:  # one copy of each video (vico_pipeline/dedup.py)
        refs, dropped, dedup_s = drop_duplicates(version_root, refs)
        for vid, kept in sorted(dropped.items()):
            log(f"dedup: video {vid} is a copy of {kept}: dropped (kept {kept})")
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
    if "caption" in stats:
        stats["caption"]["rejected_then_retried"] = rejected_then_retried(refs)
    if config.dedup.enabled:
        stats["dedup"] = {"items_in": stats.get("frames", {}).get("items_in", 0), "items_out": len(dropped),
                          "failed": len(dropped), "cached": 0, "seconds": dedup_s,
                          "duplicate_of": dict(sorted(dropped.items()))}
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
        # start: manifest, claim and Ray's start; head_start: the part of it spent downloading and
        # decoding the first videos meanwhile (vico_pipeline/headstart.py), when there was one.
        "phases_s": {"start": round(t_dag - started, 2), "stages": round(t_assemble - t_dag, 2),
                     "assemble": round(t_shards - t_assemble, 2), "shards": round(finished - t_shards, 2),
                     **({"head_start": head_start_s} if head_start_s is not None else {})},
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
    # Temp files older than this run are killed runs' (it holds the claim): none stays in a complete version.
    storage.sweep_temp_files(version_root, started)
    storage.write_json(storage.join(version_root, layout.MANIFEST), manifest)  # last: the version is complete
    from vico_pipeline.summary import run_summary, summary_line
    log(summary_line(run_summary(version_root, manifest)))
    return version_root


def _validate_engines(config) -> None:
    """Engine mistakes, and model engines whose model cannot be had (engines/hub.py), as one line."""
    from vico_pipeline.engines.base import EngineError
    from vico_pipeline.engines.hub import check_model
    from vico_pipeline.engines.registry import validate_engine
    from vico_pipeline.runtime import cluster_address

    on_cluster = bool(cluster_address(config.ray))
    for role in ("caption", "clues", "blind"):
        section = getattr(config, role, None)
        if section is None or (role == "blind" and not getattr(section, "enabled", True)):
            continue
        try:
            validate_engine(section, role)
            check_model(section, role, on_cluster)
        except EngineError as exc:
            raise RunError(str(exc)) from None


def _still_ours(version_root: str, heartbeat) -> None:
    """Never (re)write a complete version, nor one another run took over."""
    heartbeat.check()
    if is_complete(version_root):
        raise RunError(f"{version_root} is complete already (written by another run); nothing is rewritten")


def log_failures(errors: pa.Table, log, limit: int = 20) -> None:
    """One line a failed item, naming the stage and the video (its id and source)."""
    rows = errors.to_pylist()
    for e in rows[:limit]:
        log(redact_text(f"failed: {e['stage']}: video {e['item_id']} ({e['source']}): {e['error_type']}: {e['message']}"))
    if len(rows) > limit:
        log(f"failed: ... and {len(rows) - limit} more in the errors table")


