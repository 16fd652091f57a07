"""A run end to end: manifest in, a complete version folder out.

A version is written table by table; `manifest.json` with `"status": "complete"`
is written last, so a version without it is incomplete and readers skip it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import time

import pyarrow as pa

from stages.base import ERRORS_SCHEMA, rows_to_table
from stages.download import VIDEOS_SCHEMA
from stages.manifest import read_manifest
from vico_pipeline import __version__, layout, storage
from vico_pipeline.config import to_plain
from vico_pipeline.fingerprint import digest
from vico_pipeline.registry import stage_specs


class RunError(Exception):
    """The run as a whole cannot go on (one line for the user)."""


def redact(plain: dict) -> dict:
    """Secrets never reach a manifest: values of keys that look like credentials are masked."""
    out = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            out[key] = redact(value)
        elif any(word in key.lower() for word in ("secret", "token", "password")) or key.lower() in ("api_key", "key"):
            out[key] = "***" if value else value
        else:
            out[key] = value
    return out


def version_fingerprint(config, manifest_rows: list[dict]) -> str:
    plain = to_plain(config)
    plain.pop("output", None)
    plain["dataset"].pop("version", None)
    plain["ray"] = None  # where it runs does not change what it makes
    for section in ("model", "train", "eval"):
        plain.pop(section, None)
    return digest({"config": plain, "manifest": manifest_rows, "code": __version__})


def list_versions(dataset_root: str) -> list[dict]:
    """Every version folder with its manifest (or status 'incomplete')."""
    out = []
    for name in storage.listdir(dataset_root):
        if name.startswith(("_", ".")):
            continue
        path = storage.join(dataset_root, name)
        manifest_path = storage.join(path, layout.MANIFEST)
        manifest = storage.read_json(manifest_path) if storage.exists(manifest_path) else {}
        out.append({"version": name, "path": path, "manifest": manifest,
                    "status": manifest.get("status", "incomplete")})
    return sorted(out, key=lambda v: (layout.version_number(v["version"]) or 1 << 30, v["version"]))


def next_version_name(dataset_root: str) -> str:
    numbers = [layout.version_number(v["version"]) or 0 for v in list_versions(dataset_root)]
    return f"v{max(numbers, default=0) + 1}"


def is_complete(version_root: str) -> bool:
    path = storage.join(version_root, layout.MANIFEST)
    return storage.exists(path) and storage.read_json(path).get("status") == "complete"


def run(config, log=lambda msg: print(msg, file=sys.stderr)) -> str:
    """Run the pipeline for `config`; returns the version folder (new, or found complete)."""
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
    for existing in list_versions(dataset_root):
        if existing["status"] == "complete" and existing["manifest"].get("fingerprint") == fingerprint:
            log(f"version {existing['version']} already holds this config and manifest; nothing to do")
            return existing["path"]
    name = config.dataset.version or _resumable(dataset_root, fingerprint) or next_version_name(dataset_root)
    version_root = layout.version_dir(config.output.root, config.dataset.name, name)
    if is_complete(version_root):
        raise RunError(f"version {name} exists with another config; choose another dataset.version")
    # Claim the folder first, so a resumed run finds its version again.
    storage.write_json(storage.join(version_root, ".claim.json"), {"fingerprint": fingerprint})

    log(init_ray(config.ray))
    configure_data_context(config.ray.progress)
    roots, stage_fps = stage_roots_for(config)
    log(f"writing {version_root} from {len(manifest_rows)} manifest lines")
    refs = run_stages(manifest_rows, config, roots, progress=config.ray.progress)
    counts = assemble(version_root, refs)
    stats = stage_stats(refs)
    manifest = {
        "version": name,
        "dataset": config.dataset.name,
        "fingerprint": fingerprint,
        "code_version": __version__,
        "created": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds": round(time.time() - started, 2),
        "config": redact(to_plain(config)),
        "manifest_source": config.sources.manifest,
        "clips_mode": config.clips.write_files,
        "tables": counts,
        "stages": stats,
        "stage_fingerprints": stage_fps,
        "reused": {stage: roots[stage] for stage, s in stats.items() if s["items"] and s["cached"] == s["items"]},
        "status": "complete",
    }
    storage.write_json(storage.join(version_root, layout.MANIFEST), manifest)
    return version_root


def _resumable(dataset_root: str, fingerprint: str) -> str | None:
    """An incomplete version claimed by the same fingerprint: a killed run to finish."""
    for version in list_versions(dataset_root):
        claim = storage.join(version["path"], ".claim.json")
        if version["status"] != "complete" and storage.exists(claim) and \
                storage.read_json(claim).get("fingerprint") == fingerprint:
            return version["version"]
    return None


def stage_stats(refs: list[dict]) -> dict:
    stats: dict[str, dict] = {}
    for row in refs:
        for stage, s in json.loads(row["stats"]).items():
            acc = stats.setdefault(stage, {"items": 0, "cached": 0, "rows": 0, "errors": 0, "seconds": 0.0})
            acc["items"] += 1
            acc["cached"] += int(bool(s.get("cached")))
            acc["rows"] += s.get("rows", 0)
            acc["errors"] += s.get("errors", 0)
            acc["seconds"] = round(acc["seconds"] + s.get("seconds", 0.0), 3)
    return stats


def _link(src: str, dst: str) -> None:
    """Put an immutable part into a version: a hard link on a local disk, else a copy."""
    if storage.is_local(src) and storage.is_local(dst):
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


def assemble(version_root: str, refs: list[dict]) -> dict:
    """Fill the version's tables from the stage parts the run reached; returns counts and bytes."""
    counts = {}
    for spec in stage_specs():
        if spec.name == "download":
            continue
        parts = sorted({json.loads(r["refs"])[spec.name] for r in refs if json.loads(r["refs"]).get(spec.name)})
        table_root = layout.table_dir(version_root, spec.table)
        storage.remove(table_root)
        nbytes = rows = 0
        for part in parts:
            target = storage.join(table_root, part.rsplit("/", 1)[-1])
            _link(part, target)
            rows += storage.parquet_rows(target)
            nbytes += storage.fs_and_path(target)[0].size(storage.fs_and_path(target)[1])
        if not parts:  # an empty table is still a readable dataset
            nbytes = storage.write_parquet(spec.schema.empty_table(), storage.join(table_root, "empty.parquet"))
        counts[spec.table] = {"rows": rows, "bytes": nbytes, "files": max(1, len(parts))}
    errors = assemble_errors(refs)
    counts["errors"] = {"rows": errors.num_rows,
                        "bytes": storage.write_parquet(errors, storage.join(version_root, "errors", "part-00000.parquet")),
                        "files": 1}
    videos = assemble_videos(refs, errors)
    counts["videos"] = {"rows": videos.num_rows,
                        "bytes": storage.write_parquet(videos, storage.join(version_root, "videos", "part-00000.parquet")),
                        "files": 1}
    return counts


def assemble_errors(refs: list[dict]) -> pa.Table:
    uris = sorted({u for r in refs for u in json.loads(r["error_parts"])})
    return storage.read_parquet(uris, ERRORS_SCHEMA)


def assemble_videos(refs: list[dict], errors: pa.Table) -> pa.Table:
    """One row per input video: its download row, with `status` saying how far it got."""
    download_parts = sorted({json.loads(r["refs"])["download"] for r in refs if json.loads(r["refs"]).get("download")})
    videos = storage.read_parquet(download_parts, VIDEOS_SCHEMA).to_pylist()
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
