"""The dataset card: README.md in a version folder (what, how it was made, counts, config).

Written from the manifest the run is about to publish plus a light read of the
questions table (task and answer-letter counts), before manifest.json.
"""
from __future__ import annotations

from collections import Counter

import yaml

from vico_pipeline import layout, storage

# Engines with no model behind them: fine for demos and tests, nothing a model should learn from.
STAND_IN_ENGINES = {"describe": "measures colours and motion", "template": "picks captions by text dissimilarity",
                    "rules": "answers by option length, word overlap and position"}

_TASKS = {
    "event_order": "which order of 3-5 shuffled clues is chronological (4 permutations)",
    "clue_time": "at which time range a clue happens (keyframe retrieval)",
    "next_event": "which listed event comes next after a clue (temporal change)",
    "before_after": "does clue A happen before or after clue B",
    "timeline": "the main events in order, with times (open question)",
}


def question_stats(version_root: str) -> dict:
    """Counts by task, by answer letter and by split, from the version's questions table."""
    import pyarrow.dataset as pads

    folder = layout.table_dir(version_root, "questions")
    out = {"tasks": {}, "letters": {}, "splits": {}}
    if not storage.exists(folder):
        return out
    fs, path = storage.fs_and_path(folder)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    names = set(dataset.schema.names)
    columns = [c for c in ("task", "answer_index", "split", "options") if c in names]
    if not columns:
        return out
    table = dataset.to_table(columns=columns).to_pydict()
    n = len(next(iter(table.values())))
    out["tasks"] = dict(sorted(Counter(table["task"]).items())) if "task" in table else {}
    if "answer_index" in table:
        letters = Counter("ABCDEFGH"[i] if i is not None and 0 <= i < 8 else "open" for i in table["answer_index"])
        out["letters"] = dict(sorted(letters.items()))
    out["splits"] = dict(sorted(Counter(table["split"]).items())) if "split" in table else {}
    out["rows"] = n
    return out


def stand_in_lines(config: dict) -> list[str]:
    """What stand-in engines made (one line each), from a version's resolved config; [] for model-made data."""
    roles = [("caption", "captions"), ("clues", "clues")]
    made = [(role, (config.get(section) or {}).get("engine")) for section, role in roles]
    made = [(role, engine) for role, engine in made if engine in STAND_IN_ENGINES]
    lines = []
    if made:
        lines.append("**Stand-in data: no model made the " + " or the ".join(role for role, _ in made) + ".** "
                     + "; ".join(f"{role} by `{engine}` ({STAND_IN_ENGINES[engine]})" for role, engine in made)
                     + ". It exercises the pipeline; a model trained on it learns nothing about video "
                     "(`vico train` refuses it unless `train.allow_stand_in_data: true`).")
    blind = config.get("blind") or {}
    if blind.get("engine") in STAND_IN_ENGINES and blind.get("enabled", True):
        lines.append(f"The blind-answer filter was `{blind['engine']}` ({STAND_IN_ENGINES[blind['engine']]}), "
                     "an offline baseline, not a model.")
    return lines


def card_text(manifest: dict, qstats: dict) -> str:
    config = manifest.get("config", {})
    tables = manifest.get("tables", {})
    caption, clues = config.get("caption", {}), config.get("clues", {})
    warning = stand_in_lines(config)
    lines = [
        f"# {manifest.get('dataset')} {manifest.get('version')}",
        "",
        *(line for text in warning for line in (text, "")),
        "VICO-style long-video instruction data (visual clue order, after the Video-XL paper): "
        "videos cut into fixed windows, every clip captioned, salient clues picked and put in "
        "chronological order, and question sets whose answer keys are computed from timestamps.",
        "",
        "## How it was made",
        "",
        f"- fingerprint `{manifest.get('fingerprint')}`, code {manifest.get('code_version')}, "
        f"created {manifest.get('created')}, {manifest.get('seconds')} s",
        f"- sources: `{manifest.get('manifest_source')}` ({manifest.get('manifest_lines')} lines)",
        f"- clips: {config.get('clips', {}).get('seconds')} s windows; training frames at "
        f"{config.get('frames', {}).get('fps')} fps, short side {config.get('frames', {}).get('size')} px",
        f"- captions: engine `{caption.get('engine')}`, model `{caption.get('model')}`, prompt {caption.get('prompt_version')}",
        f"- clues: engine `{clues.get('engine')}`, model `{clues.get('model')}`, prompt {clues.get('prompt_version')}, "
        f"at most {clues.get('max_clues')} a video",
        "- answer keys: computed by code from the clips' timestamps, never taken from a model",
    ]
    reused = manifest.get("reused") or {}
    if reused:
        lines.append("- reused from earlier runs: " + ", ".join(
            f"{stage} ({r.get('version') or 'interrupted run'}, {r.get('videos')}/{r.get('of')} videos)"
            for stage, r in reused.items()))
    lines += ["", "## Tables", "", "| table | rows | bytes |", "| --- | ---: | ---: |"]
    for table, c in tables.items():
        lines.append(f"| {table} | {c.get('rows')} | {c.get('bytes')} |")
    if qstats.get("tasks"):
        lines += ["", "## Question tasks", "", "| task | questions | what it asks |", "| --- | ---: | --- |"]
        for task, count in qstats["tasks"].items():
            lines.append(f"| {task} | {count} | {_TASKS.get(task, '')} |")
        if qstats.get("letters"):
            lines += ["", "Answer letters: " + ", ".join(f"{k} {v}" for k, v in qstats["letters"].items())]
        if qstats.get("splits"):
            lines += ["", "Splits (by video): " + ", ".join(f"{k} {v} questions" for k, v in qstats["splits"].items())]
    lines += gate_lines(manifest, qstats)
    shards = manifest.get("shards") or []
    lines += ["", "## Training shards", "",
              "`shards/train/` and `shards/val/`: one row per video (`video_id`, `duration_s`, `frames` as JPEG "
              "bytes in time order, `frame_times_s`, `questions`: each with its own conversation, one question "
              "a training sample; `split`; the engines that made it); a video is never in both splits. Read them "
              "with pyarrow, pandas, DuckDB, `datasets.load_dataset(\"parquet\", ...)` or Ray Data.", ""]
    for split in ("train", "val"):
        mine = [s for s in shards if s["split"] == split]
        lines.append(f"- {split}: {sum(s['rows'] for s in mine)} samples in {len(mine)} files, "
                     f"{sum(s['bytes'] for s in mine)} bytes")
    lines += ["", "## Config (secrets redacted)", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def gate_lines(manifest: dict, qstats: dict) -> list[str]:
    """The quality gates' rejections: captions by error type, clue candidates by reason."""
    captions = (manifest.get("stages") or {}).get("caption", {}).get("error_types") or {}
    rejected = {k: v for k, v in captions.items() if k in ("caption_unparsed", "caption_truncated",
                                                           "caption_refusal", "caption_repetitive")}
    candidates = qstats.get("candidates") or {}
    if not rejected and not candidates:
        return []
    lines = ["", "## Quality gates", "",
             "- captions rejected: " + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none")]
    if candidates:
        lines.append("- clue candidates: " + ", ".join(f"{k or 'kept'} {v}" for k, v in candidates.items())
                     + " (table `clue_candidates`)")
    return lines


def candidate_stats(version_root: str) -> dict:
    """Clue candidates by reject reason ('' for kept), from the version's clue_candidates table."""
    import pyarrow.dataset as pads

    folder = layout.table_dir(version_root, "clue_candidates")
    if not storage.exists(folder):
        return {}
    fs, path = storage.fs_and_path(folder)
    reasons = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["reject_reason"])
    return dict(sorted(Counter(reasons.column("reject_reason").to_pylist()).items()))


def write_card(version_root: str, manifest: dict) -> str:
    path = storage.join(version_root, "README.md")
    qstats = {**question_stats(version_root), "candidates": candidate_stats(version_root)}
    storage.write_bytes(path, card_text(manifest, qstats).encode())
    return path
