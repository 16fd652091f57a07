"""`vico export VERSION --format llava --out DIR`: LLaVA / Video-XL JSON plus the frames.

    DIR/frames/{video_id}/{000000}.jpg   a video's training frames in time order (once per video)
    DIR/frames/{video_id}/times.json     their timestamps in seconds
    DIR/train.json  DIR/val.json         one record per question:
        {"id", "video": "frames/{video_id}" (relative to DIR), "conversations": [{from, value}],
         "video_id", "task", "split", "frame_times_s"}

The JSON files are written last, so a loader never finds a record whose frames
are missing. Frames come from the version's clips table; only videos with
questions are exported.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads

from vico_pipeline import layout, storage
from vico_pipeline.errors import UserError
from vico_pipeline.versions import open_version

LETTERS = "ABCDEFGH"


def read_table(version_root: str, table: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """A version's table (the Parquet files in its folder), optionally some columns / rows."""
    fs, path = storage.fs_and_path(layout.table_dir(version_root, table))
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns, filter=filter)


def conversation_for(question: dict) -> list[dict]:
    """The question's own conversation; built from its text and options when it has none."""
    if question.get("conversations"):
        return [{"from": t["from"], "value": t["value"]} for t in question["conversations"]]
    options = question.get("options") or []
    text = question["question"]
    if options:
        text += "\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        text += "\nAnswer with the option's letter."
        answer = f"({LETTERS[question['answer_index']]})"
    else:
        answer = question["answer"]
    return [{"from": "human", "value": f"<video>\n{text}"}, {"from": "gpt", "value": answer}]


def video_frames(version_root: str, video_id: str) -> tuple[list[bytes], list[float]]:
    """A video's training frames in time order, from its clips."""
    clips = read_table(version_root, "clips", ["video_id", "start_s", "train_frames", "train_frame_times_s"],
                       filter=pads.field("video_id") == video_id).to_pylist()
    pairs = []
    for clip in clips:
        pairs += zip(clip["train_frame_times_s"] or [], clip["train_frames"] or [])
    pairs.sort(key=lambda p: p[0])
    return [jpeg for _, jpeg in pairs], [float(t) for t, _ in pairs]


def export_llava(version_root: str, out_dir: str) -> str:
    """Export a complete version; returns `out_dir`."""

    open_version(version_root)
    out_dir = out_dir.rstrip("/")
    try:
        storage.makedirs(out_dir)
    except OSError as exc:
        raise UserError(f"export folder is not writable: {out_dir} ({exc.strerror or exc})") from None
    questions = read_table(version_root, "questions").to_pylist() \
        if storage.exists(layout.table_dir(version_root, "questions")) else []
    questions.sort(key=lambda q: (q["video_id"], q["question_id"]))
    records: dict[str, list[dict]] = {"train": [], "val": []}
    times_of: dict[str, list[float]] = {}
    for question in questions:
        vid = question["video_id"]
        if vid not in times_of:
            frames, times = video_frames(version_root, vid)
            for i, jpeg in enumerate(frames):
                storage.write_bytes(storage.join(out_dir, "frames", vid, f"{i:06d}.jpg"), jpeg)
            storage.write_json(storage.join(out_dir, "frames", vid, "times.json"), times)
            times_of[vid] = times
        if not times_of[vid]:
            continue
        split = question.get("split") or "train"
        records.setdefault(split, []).append({
            "id": question["question_id"],
            "video": f"frames/{vid}",
            "conversations": conversation_for(question),
            "video_id": vid,
            "task": question.get("task"),
            "split": split,
            "frame_times_s": times_of[vid],
        })
    for split, rows in records.items():
        storage.write_bytes(storage.join(out_dir, f"{split}.json"), json.dumps(rows, indent=1).encode())
    return out_dir
