"""What a finished run says about its version: one line for people, the same facts for `--json`.

    version v1 complete in 21.3 s: 3 videos: 2 with questions, 1 failed (download 1);
    120 clips: 102 kept, 18 dropped by the filter; 101 captions (1 failed); 24 clues;
    60 questions (40 train, 20 val); 2 error rows

Every count says what it counts: videos split into with questions / without / failed
(by the stage where they failed), clips into kept / dropped by the filter, and the
failed items of each stage are its error rows.
"""
from __future__ import annotations

from collections import Counter

from vico_pipeline import layout, storage
from vico_pipeline.versions import open_version


def _column(version_root: str, table: str, column: str) -> list:
    import pyarrow.dataset as pads

    folder = layout.table_dir(version_root, table)
    if not storage.exists(folder):
        return []
    fs, path = storage.fs_and_path(folder)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if column not in dataset.schema.names:
        return []
    return dataset.to_table(columns=[column]).column(column).to_pylist()


def run_summary(version_root: str, manifest: dict | None = None) -> dict:
    """The counts of a complete version, each with what it is made of."""
    version_root = version_root.rstrip("/")
    manifest = manifest or open_version(version_root)
    statuses = [s or "" for s in _column(version_root, "videos", "status")]
    with_questions = set(_column(version_root, "questions", "video_id"))
    video_ids = _column(version_root, "videos", "video_id")
    failed_at = Counter(s.split(":")[1] for s in statuses if s.startswith("failed:") and s.count(":") >= 1)
    kept = _column(version_root, "filtered", "kept")
    splits = Counter(_column(version_root, "questions", "split"))
    stages = manifest.get("stages", {})
    tables = manifest.get("tables", {})
    rows = {t: c.get("rows", 0) for t, c in tables.items()}
    failed = sum(failed_at.values())
    return {
        "version": manifest.get("version"),
        "version_dir": version_root,
        "seconds": manifest.get("seconds"),
        "videos": {"total": len(statuses), "with_questions": len(with_questions & set(video_ids)),
                   "without_questions": max(0, len(statuses) - failed - len(with_questions & set(video_ids))),
                   "failed": failed, "failed_by_stage": dict(failed_at)},
        "clips": {"total": rows.get("clips", 0), "kept": sum(1 for k in kept if k),
                  "dropped": sum(1 for k in kept if not k)},
        "captions": {"total": rows.get("captions", 0), "failed": stages.get("caption", {}).get("failed", 0)},
        "clues": {"total": rows.get("clues", 0), "failed": stages.get("clues", {}).get("failed", 0)},
        "questions": {"total": rows.get("questions", 0), "train": splits.get("train", 0), "val": splits.get("val", 0)},
        "shards": {"samples": rows.get("shards", 0), "files": tables.get("shards", {}).get("files", 0)},
        "errors": rows.get("errors", 0),
    }


def summary_line(s: dict) -> str:
    v, c = s["videos"], s["clips"]
    by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(v["failed_by_stage"].items()))
    videos = f"{v['total']} video{'s' if v['total'] != 1 else ''}: {v['with_questions']} with questions"
    if v["without_questions"]:
        videos += f", {v['without_questions']} without (no clip or clue left)"
    videos += f", {v['failed']} failed" + (f" ({by_stage})" if by_stage else "")
    return (f"version {s['version']} complete in {s['seconds']} s: {videos}; "
            f"{c['total']} clips: {c['kept']} kept, {c['dropped']} dropped by the filter; "
            f"{s['captions']['total']} captions ({s['captions']['failed']} failed); "
            f"{s['clues']['total']} clues ({s['clues']['failed']} failed); "
            f"{s['questions']['total']} questions ({s['questions']['train']} train, {s['questions']['val']} val); "
            f"{s['errors']} error rows")


def no_questions_line(s: dict) -> str:
    """The last line of a run whose version is complete but empty (exit status 3)."""
    v = s["videos"]
    return (f"vico: no video produced a question ({v['total']} video{'s' if v['total'] != 1 else ''}, "
            f"{v['failed']} failed): {s['version_dir']} is complete and empty; "
            f"its errors table says why (vico report {s['version_dir']})")


__all__ = ["run_summary", "summary_line", "no_questions_line"]
