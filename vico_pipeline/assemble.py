"""A version's tables and shards, from the stage parts a run reached.

    assemble   each table's folder gets the parts the run reached; videos/ and errors/ are written
    splits     train/val for the videos with questions, written into the questions table
    shards     shards/train/ and shards/val/ (stages/shards.py)

Each table is built whole in a staging folder and renamed into place, so a reader never sees
a half-filled table. vico_pipeline/run.py calls these in that order.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pyarrow as pa

from stages.base import ERRORS_SCHEMA, rows_to_table
from stages.download import VIDEOS_SCHEMA
from vico_pipeline import layout, storage
from vico_pipeline.registry import stage_specs
from vico_pipeline.runtime import ray_ready


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


# Tables a stage writes beside its own: {table: the stage writing it}.
SIDE_TABLES = {"clue_candidates": "clues", "shots": "frames"}


def side_table_parts(refs: list[dict], roots: dict[str, str]) -> dict[str, list[str]]:
    """Tables a stage writes beside its own (SIDE_TABLES), for every video that stage saw:
    `clue_candidates` (the clue stage), `shots` (the frames stage)."""
    out = {}
    for table, stage in SIDE_TABLES.items():
        if stage not in roots:
            continue
        root = storage.join(roots[stage], table)
        uris = [layout.part_uri(root, r["video_id"]) for r in refs if stage in json.loads(r["stats"])]
        out[table] = sorted(u for u in set(uris) if storage.exists(u))
    return out


def assemble(version_root: str, refs: list[dict], roots: dict[str, str] | None = None
             ) -> tuple[dict, dict[str, int], pa.Table]:
    """Fill the version's tables from the stage parts the run reached (`roots`: the stage folders,
    for the tables a stage writes beside its own).

    Returns ({table: rows, bytes, files}, {part uri: rows}, the errors table).
    Each table is built whole in a staging folder, then renamed into place (`storage.rename_dir`),
    so a reader sees a table's old folder or its new one, never a half-filled one.
    """
    from stages.clues import CLUE_CANDIDATES_SCHEMA
    from stages.frames import SHOTS_SCHEMA

    counts, part_rows = {}, {}
    schemas = {spec.table: spec.schema for spec in stage_specs()}
    schemas["clue_candidates"] = CLUE_CANDIDATES_SCHEMA
    schemas["shots"] = SHOTS_SCHEMA
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


# Stages a duplicate video keeps: what it took to find it is a copy.
KEPT_BY_DUPLICATES = ("download", "subtitles", "frames")


def drop_duplicates(version_root: str, refs: list[dict]) -> tuple[list[dict], dict[str, str], float]:
    """Videos of the run that copy another one (vico_pipeline/dedup.py), dropped: each keeps its
    download, subtitles and frames (clips, shots), loses every later stage (so it is in neither
    train nor val), and gets a `dedup` error row `duplicate_of` naming the copy kept.
    Returns (refs, {dropped: kept}, seconds)."""
    from vico_pipeline.dedup import duplicates, video

    started = time.time()
    videos = []
    for row in refs:
        parts = json.loads(row["refs"])
        if not parts.get("frames") or not parts.get("download"):
            continue
        clips = storage.read_parquet([parts["frames"]], skip=("train_frames", "caption_frames")).to_pylist()
        meta = next((v for v in storage.read_parquet([parts["download"]]).to_pylist()
                     if v["video_id"] == row["video_id"]), {})
        clips.sort(key=lambda c: c["start_s"])
        videos.append(video(row["video_id"], meta.get("duration_s"), (meta.get("width") or 0) * (meta.get("height") or 0),
                            [h for c in clips for h in c.get("train_frame_hashes") or []],
                            [h for c in clips for h in c.get("train_frame_colours") or []]))
    found = duplicates(videos)
    out = []
    for row in refs:
        if row["video_id"] not in found:
            out.append(row)
            continue
        kept, match = found[row["video_id"]]
        # A dot folder: readers skip it; the errors table gets the row at assembly.
        error = storage.join(version_root, ".dedup", f"{row['video_id']}.parquet")
        storage.write_parquet(rows_to_table([{
            "stage": "dedup", "item_id": row["video_id"], "source": row["source"], "error_type": "duplicate_of",
            "message": f"duplicate_of {kept}: {match.share:.0%} of {match.overlap} overlapping frames match "
                       f"(offset {match.offset} frames)"}], ERRORS_SCHEMA), error)
        parts = {k: v for k, v in json.loads(row["refs"]).items() if k in KEPT_BY_DUPLICATES}
        stats = {k: v for k, v in json.loads(row["stats"]).items() if k in KEPT_BY_DUPLICATES}
        out.append({**row, "refs": json.dumps(parts), "stats": json.dumps(stats),
                    "error_parts": json.dumps(sorted(set(json.loads(row["error_parts"])) | {error}))})
    return out, {vid: kept for vid, (kept, _) in found.items()}, round(time.time() - started, 3)


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
    if len(plans) > 1 and ray_ready():
        import ray

        task = ray.remote(num_cpus=1)(write_shard)
        index = ray.get([task.remote(plan, version_root, config.shards) for plan in plans])
    else:
        index = [write_shard(plan, version_root, config.shards) for plan in plans]
    return [entry for entries in index for entry in entries]
