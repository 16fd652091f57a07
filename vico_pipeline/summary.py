"""What a finished run says about its version: one line for people, the same facts for `--json`.

    version v1 complete in 21.3 s: 3 videos: 2 with questions, 1 failed (download 1);
    120 clips: 102 kept, 18 dropped by the filter; 101 captions (1 failed); 24 clues;
    60 questions (40 train, 20 val); 2 error rows

Every count says what it counts: videos split into with questions / without / failed
(by the stage where they failed), clips into kept / dropped by the filter, and the
failed items of each stage are its error rows.

Below the summary, the statistics a run writes into manifest.json (`stages`, `reused`,
`transient_failures`), computed from the stage reference rows.
"""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from stages.download import TRANSIENT
from vico_pipeline import layout, storage
from vico_pipeline.registry import stage_specs
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


# --------------------------------------------------------------------------- a run's statistics
def transient_failures(errors: pa.Table) -> int:
    """Download error rows of kinds that may pass on another try (the next run retries them)."""
    return sum(1 for stage, kind in zip(errors["stage"].to_pylist(), errors["error_type"].to_pylist())
               if stage == "download" and kind in TRANSIENT)


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


def rejected_then_retried(refs: list[dict]) -> dict[str, int]:
    """Caption answers the gates rejected whose clip a retry then fixed, by error type (the caption
    rows' `rejected`): what the gates caught, though no error row is left of it."""
    counts: dict[str, int] = {}
    parts = sorted({json.loads(r["refs"]).get("caption") for r in refs} - {None})
    if parts:
        for rejected in storage.read_parquet(parts).column("rejected").to_pylist():
            for kind in rejected or []:
                counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


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
