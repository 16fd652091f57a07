"""`vico export VERSION --format llava --out DIR`: LLaVA / Video-XL JSON plus the frames.

    DIR/frames/{video_id}/{000000}.jpg   a video's training frames in time order (once per video)
    DIR/frames/{video_id}/times.json     their timestamps in seconds
    DIR/train.json  DIR/val.json         one record per question (one question a sample):
        {"id", "video": "frames/{video_id}", "frames": [paths of the frames shown, relative to DIR],
         "frame_times_s": [their times], "conversations": [{from, value}], "video_id", "task", "split",
         "caption_engine", "caption_model", "clue_engine", "clue_model",       (provenance)
         "answer_source", "answer_engine", "answer_model", "blind_correct", "template_id"}
    DIR/export.json                      counts: questions, exported, left out; stand-in engines

Data that stand-in engines made (`describe`, `template`, `rules`; a stand-in summary as an
answer) is for demos and tests: like `vico train`, the export refuses it (one line, exit 2)
unless `allow_stand_in` (`--allow-stand-in`), and then says so on stderr and in export.json.

Records are built from the version's shards, the trainer's input, through
`samples.question_sample`: the human turn opens with the time header (the
video's length and the time of every frame shown), and `frames` /
`frame_times_s` are exactly the frames that header lists, at most
`export.max_frames` of them (the version's config, or `max_frames`). A question
whose evidence cannot be shown within that budget is left out and counted.
The JSON files are written last, so a loader never finds a record whose frames
are missing.
"""
from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vico_pipeline import layout, storage
from vico_pipeline.errors import UserError
from vico_pipeline.samples import question_sample
from vico_pipeline.versions import open_version


def read_table(version_root: str, table: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """A version's table (the Parquet files in its folder), optionally some columns / rows."""
    fs, path = storage.fs_and_path(layout.table_dir(version_root, table))
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns, filter=filter)


def shard_rows(version_root: str, manifest: dict):
    """Every shard row of the version, one at a time (a row holds a whole video's frames)."""
    for entry in manifest.get("shards") or []:
        fs, path = storage.fs_and_path(storage.join(version_root, entry["path"]))
        with fs.open(path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1):
                yield from batch.to_pylist()


def export_budget(manifest: dict) -> int:
    """export.max_frames of the version's config (the default where the version predates it)."""
    from vico_pipeline.config import ExportConfig

    return int((manifest.get("config") or {}).get("export", {}).get("max_frames", ExportConfig().max_frames))


def write_frames(out_dir: str, row: dict) -> None:
    vid = row["video_id"]
    for i, jpeg in enumerate(row["frames"]):
        storage.write_bytes(storage.join(out_dir, "frames", vid, f"{i:06d}.jpg"), jpeg)
    storage.write_json(storage.join(out_dir, "frames", vid, "times.json"), row["frame_times_s"])


PROVENANCE = ("caption_engine", "caption_model", "clue_engine", "clue_model")
ANSWER_FIELDS = ("answer_source", "answer_engine", "answer_model", "blind_correct", "template_id")
STAND_IN_ENGINES = frozenset({"describe", "template", "rules"})


def stand_in_engines(version_root: str, manifest: dict) -> list[str]:
    """The stand-in engines that made a version's data: the shard rows' caption and clue engines,
    the engines of stand-in answers (a stand-in summary), the blind filter's; sorted."""
    found = set()
    for row in shard_rows(version_root, manifest):
        found.update(row.get(k) for k in ("caption_engine", "clue_engine"))
        found.update(q.get("answer_engine") for q in row["questions"] if q.get("answer_source") == "stand-in")
    blind = (manifest.get("config") or {}).get("blind") or {}
    if blind.get("enabled", True):
        found.add(blind.get("engine"))
    return sorted(e for e in found if e in STAND_IN_ENGINES)


def export_llava(version_root: str, out_dir: str, max_frames: int | None = None,
                 log=lambda msg: print(msg, file=sys.stderr), allow_stand_in: bool = False) -> str:
    """Export a complete version; returns `out_dir`."""
    manifest = open_version(version_root)
    budget = export_budget(manifest) if max_frames is None else max_frames
    out_dir = out_dir.rstrip("/")
    reason = storage.unwritable(out_dir)
    if reason:
        raise UserError(f"export folder is not writable: {out_dir} ({reason})")
    stand_ins = stand_in_engines(version_root, manifest)
    if stand_ins and not allow_stand_in:
        raise UserError(f"{version_root} was made by stand-in engines ({', '.join(stand_ins)}), not by models; "
                        "pass --allow-stand-in to export it anyway (for demos and tests)")
    if stand_ins:
        log(f"export: STAND-IN DATA: made by {', '.join(stand_ins)} (no model); every record says so")
    records: dict[str, list[dict]] = {"train": [], "val": []}
    counts = {"questions": 0, "exported": 0, "left_out_evidence_does_not_fit": 0, "max_frames": budget,
              "stand_in_engines": stand_ins}
    for row in shard_rows(version_root, manifest):
        if not row["frames"]:
            continue
        write_frames(out_dir, row)
        vid, split = row["video_id"], row.get("split") or "train"
        for question in row["questions"]:
            counts["questions"] += 1
            sample = question_sample(row, question, budget)
            if sample is None:  # an evidence clip would show no frame within the budget
                counts["left_out_evidence_does_not_fit"] += 1
                continue
            records.setdefault(split, []).append({
                "id": question["question_id"],
                "video": f"frames/{vid}",
                "frames": [f"frames/{vid}/{i:06d}.jpg" for i in sample["frame_indices"]],
                "frame_times_s": sample["frame_times_s"],
                "conversations": sample["conversations"],
                "video_id": vid,
                "task": question["task"],
                "split": split,
                **{name: row.get(name) for name in PROVENANCE},
                **{name: question.get(name) for name in ANSWER_FIELDS},
            })
    for split, rows in records.items():
        rows.sort(key=lambda r: r["id"])
        counts["exported"] += len(rows)
        storage.write_bytes(storage.join(out_dir, f"{split}.json"), json.dumps(rows, indent=1).encode())
    storage.write_json(storage.join(out_dir, "export.json"), counts)
    log(f"export: {counts['exported']} of {counts['questions']} questions, at most {budget or 'all'} frames each; "
        f"{counts['left_out_evidence_does_not_fit']} left out (evidence does not fit the frame budget)")
    return out_dir
