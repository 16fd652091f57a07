"""Training shards: one row per video, its frames stored once, the list of its questions.

    video_id  duration_s  frames (list of JPEG bytes, time order)  frame_times_s
    questions (list of {question_id, task, conversations, evidence_clip_ids,
               evidence_windows_s, options, answer_index})
    split  caption_engine  caption_model  clue_engine  clue_model

One question a sample (vico.md, "Training sample format"): a question's
`conversations` are its own two turns, `<video>` first, WITHOUT the time header.
The trainer, the eval and the export call `vico_pipeline.samples.question_sample`
on (row, question), which picks the frames to show (every evidence window keeps
one) and writes the header naming them. `evidence_windows_s` are the evidence
clips' [start_s, end_s], so that choice needs no other table.

Three steps, none of which imports Ray:

- `sample_inputs`: which videos have questions, with their part files and the
  estimated bytes of their frames (from the Parquet footers, no data read);
- `plan_shards`: split (the questions' own `split`, by video), a seeded shuffle
  across videos, and cuts into shards of at most `shards.max_rows` rows and
  about `shards.max_bytes` bytes;
- `write_shard`: builds the rows of one planned shard and writes it, in row
  groups of `shards.row_group_rows` (or fewer when they grow past
  ROW_GROUP_MAX_BYTES), rolling over to a next file if a shard would pass
  `max_bytes`; returns index entries with rows, bytes and sha256.

The shuffle orders videos by a seeded hash of their id, so it is the same
however the videos reached the run, and adding a video never reorders the others.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from vico_pipeline import layout, storage

CONVERSATION = pa.struct([("from", pa.string()), ("value", pa.string())])
QUESTION = pa.struct([
    ("question_id", pa.string()),
    ("task", pa.string()),
    ("conversations", pa.list_(CONVERSATION)),
    ("evidence_clip_ids", pa.list_(pa.string())),
    ("evidence_windows_s", pa.list_(pa.list_(pa.float64()))),
    ("options", pa.list_(pa.string())),
    ("answer_index", pa.int32()),
    # Where the answer comes from and what the blind filter found (the questions table's columns).
    ("answer_source", pa.string()),
    ("answer_engine", pa.string()),
    ("answer_model", pa.string()),
    ("blind_correct", pa.int32()),
    ("template_id", pa.string()),
])
PROVENANCE = ("caption_engine", "caption_model", "clue_engine", "clue_model")
SHARDS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("duration_s", pa.float64()),
    ("frames", pa.list_(pa.binary())),
    ("frame_times_s", pa.list_(pa.float64())),
    ("questions", pa.list_(QUESTION)),
    ("split", pa.string()),
] + [(name, pa.string()) for name in PROVENANCE])
SPLITS = ("train", "val")
# A row group is also cut when its frames pass this, so a streaming reader holds a bounded amount.
ROW_GROUP_MAX_BYTES = 128 * 1024**2
# Room kept under shards.max_bytes for the Parquet footer and page headers.
FOOTER_ALLOWANCE = 64 * 1024


def split_for(video_id: str, val_fraction: float) -> str:
    """The split of a video when its questions carry none: a hash of its id, never per row."""
    bucket = int(hashlib.sha1(f"split:{video_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"


def split_rank_key(video_id: str) -> str:
    return hashlib.sha1(f"split:{video_id}".encode()).hexdigest()


def assign_splits(video_ids, val_fraction: float) -> dict[str, str]:
    """{video_id: 'train' | 'val'} for a version's videos: by hash rank, never per row.

    The videos are ordered by a hash of their id and the first round(val_fraction * n)
    go to val, so the fraction holds to one video (0.34 of 6 videos is 2, where a
    threshold on each hash alone may give 0 or 4). A video's place depends only on its
    id, so the split is the same in every run of the same videos, and when videos are
    added a video changes split only at the boundary: a val video moves to train when
    a new one ranks before it and val has no room left; a train video moves to val when
    val grows by one and it is the next in rank. That is the least movement an exact
    fraction allows (a pure threshold never moves a video, but misses the fraction)."""
    ids = sorted(set(video_ids), key=split_rank_key)
    n_val = int(len(ids) * val_fraction + 0.5)  # round half up: 0.5 of 3 videos is 2
    return {vid: ("val" if rank < n_val else "train") for rank, vid in enumerate(ids)}


def shuffle_key(video_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{video_id}".encode()).hexdigest()


@dataclass
class SampleInput:
    video_id: str
    questions: str          # the video's questions part
    clips: str              # the video's clips part (training frames)
    split: str = ""
    est_bytes: int = 0
    duration_s: float | None = None  # from the videos table; None: the last frame's time


@dataclass
class ShardPlan:
    split: str
    index: int
    samples: list[SampleInput] = field(default_factory=list)



# --------------------------------------------------------------------------- inputs
def _video_of(part: str) -> str:
    return part.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _frames_bytes(clips_part: str) -> int:
    """Bytes of the training-frame column, from the footer (JPEGs barely compress: close to raw)."""
    fs, path = storage.fs_and_path(clips_part)
    with fs.open(path, "rb") as handle:
        meta = pq.ParquetFile(handle).metadata
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema.startswith(("train_frames.", "train_frame_times_s.")):
                total += column.total_uncompressed_size
    return total


def video_durations(video_parts: list[str]) -> dict[str, float]:
    """{video_id: duration_s} from the download stage's parts (the videos table)."""
    out: dict[str, float] = {}
    for part in video_parts:
        for row in _read(part, ["video_id", "duration_s"]).to_pylist():
            if row["duration_s"]:
                out[row["video_id"]] = float(row["duration_s"])
    return out


def sample_inputs(question_parts: list[str], clip_parts: list[str], video_parts: list[str] = ()) -> list[SampleInput]:
    """One input per video that has both questions and clips (parts are named by video id)."""
    clips = {_video_of(p): p for p in clip_parts}
    durations = video_durations(list(video_parts))
    out = []
    for part in sorted(question_parts):
        vid = _video_of(part)
        if vid in clips and storage.parquet_rows(part) > 0:
            out.append(SampleInput(vid, part, clips[vid], est_bytes=_frames_bytes(clips[vid]),
                                   duration_s=durations.get(vid)))
    return out


def _split_of(sample: SampleInput, val_fraction: float) -> str:
    fs, path = storage.fs_and_path(sample.questions)
    with fs.open(path, "rb") as handle:
        file = pq.ParquetFile(handle)
        if "split" in file.schema_arrow.names:
            splits = {s for s in file.read(columns=["split"]).column("split").to_pylist() if s}
            if len(splits) == 1:
                return splits.pop()
    return split_for(sample.video_id, val_fraction)


def plan_shards(inputs: list[SampleInput], shards_config) -> list[ShardPlan]:
    """Split, seeded shuffle, and cuts by rows and estimated bytes; both splits always get a shard."""
    plans: list[ShardPlan] = []
    for sample in inputs:
        if not sample.split:
            sample.split = _split_of(sample, shards_config.val_fraction)
    for split in SPLITS:
        ordered = sorted((s for s in inputs if s.split == split), key=lambda s: shuffle_key(s.video_id, shards_config.seed))
        current = ShardPlan(split, 0)
        current_bytes = 0
        for sample in ordered:
            full = len(current.samples) >= shards_config.max_rows or \
                current_bytes + sample.est_bytes > shards_config.max_bytes - FOOTER_ALLOWANCE
            if current.samples and full:
                plans.append(current)
                current, current_bytes = ShardPlan(split, current.index + 1), 0
            current.samples.append(sample)
            current_bytes += sample.est_bytes
        plans.append(current)  # possibly empty: an empty split is still a readable dataset
    return plans


# --------------------------------------------------------------------------- rows
def _read(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def question_entry(question: dict, windows: dict[str, list[float]]) -> dict:
    """A question as the shard stores it: its own turns (no time header), its evidence windows
    (the evidence events' spans the question carries; its clips' windows for questions made
    before spans) and where its answer comes from."""
    evidence = list(question.get("evidence_clip_ids") or [])
    own = [list(w) for w in question.get("evidence_windows_s") or []]
    return {
        "question_id": question["question_id"],
        "task": question.get("task"),
        "conversations": [{"from": t["from"], "value": t["value"]} for t in question.get("conversations") or []],
        "evidence_clip_ids": evidence,
        "evidence_windows_s": own if len(own) == len(evidence) else [windows[c] for c in evidence if c in windows],
        "options": list(question.get("options") or []),
        "answer_index": question.get("answer_index"),
        **{name: question.get(name) for name in ("answer_source", "answer_engine", "answer_model", "blind_correct",
                                                 "template_id")},
    }


def build_sample(video_id: str, split: str, questions: list[dict], clips: list[dict],
                 duration_s: float | None = None) -> dict:
    """One shard row: the training frames of every clip in time order, the list of its questions."""
    frames, times = [], []
    for clip in sorted(clips, key=lambda c: (c["start_s"], c.get("clip_index") or 0)):
        for t, jpeg in sorted(zip(clip["train_frame_times_s"] or [], clip["train_frames"] or []), key=lambda p: p[0]):
            frames.append(jpeg)
            times.append(float(t))
    windows = {c["clip_id"]: [float(c["start_s"]), float(c["end_s"])] for c in clips if c.get("clip_id")}
    questions = sorted(questions, key=lambda q: q["question_id"])
    first = questions[0] if questions else {}
    return {
        "video_id": video_id,
        "duration_s": float(duration_s) if duration_s else (times[-1] if times else 0.0),
        "frames": frames,
        "frame_times_s": times,
        "questions": [question_entry(q, windows) for q in questions],
        "split": split,
        # One engine and model a video: every question of it was made from the same captions and clues.
        **{name: first.get(name) for name in PROVENANCE},
    }


def _row_bytes(row: dict) -> int:
    return sum(len(f) for f in row["frames"]) + 8 * len(row["frame_times_s"]) + \
        sum(len(t["value"]) + 8 for q in row["questions"] for t in q["conversations"]) + 64 * (1 + len(row["questions"]))


def load_sample(sample: SampleInput) -> dict:
    questions = _read(sample.questions).to_pylist()
    clips = _read(sample.clips, ["clip_id", "clip_index", "start_s", "end_s", "train_frames",
                                 "train_frame_times_s"]).to_pylist()
    return build_sample(sample.video_id, sample.split, questions, clips, sample.duration_s)


# --------------------------------------------------------------------------- writing
def shard_name(split: str, index: int, part: int) -> str:
    return f"shard-{index:05d}-{part:02d}.parquet"


class _ShardFile:
    """A local temp Parquet file whose size we can watch as row groups land."""

    def __init__(self, row_group_rows: int):
        fd, self.path = tempfile.mkstemp(prefix="vico-shard-", suffix=".parquet")
        os.close(fd)
        self.sink = pa.OSFile(self.path, "wb")
        self.writer = pq.ParquetWriter(self.sink, SHARDS_SCHEMA, compression="zstd",
                                       write_page_index=True)
        self.buffer: list[dict] = []
        self.buffer_bytes = 0
        self.rows = 0
        self.row_groups = 0
        self.videos: list[str] = []
        self.row_group_rows = row_group_rows

    def written(self) -> int:
        return self.sink.tell()

    def add(self, row: dict, nbytes: int) -> None:
        self.buffer.append(row)
        self.buffer_bytes += nbytes
        self.rows += 1
        self.videos.append(row["video_id"])
        if len(self.buffer) >= self.row_group_rows or self.buffer_bytes >= ROW_GROUP_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            table = pa.Table.from_pylist(self.buffer, schema=SHARDS_SCHEMA)
            self.writer.write_table(table, row_group_size=len(self.buffer))
            self.row_groups += 1
            self.buffer, self.buffer_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.sink.close()


def write_shard(plan: ShardPlan, version_root: str, shards_config) -> list[dict]:
    """Write one planned shard (more files only if it would pass max_bytes); returns index entries."""
    limit = shards_config.max_bytes - FOOTER_ALLOWANCE
    entries: list[dict] = []
    current = _ShardFile(shards_config.row_group_rows)

    def finish(shard: _ShardFile) -> None:
        shard.close()
        try:
            target = storage.join(layout.shards_dir(version_root, plan.split), shard_name(plan.split, plan.index, len(entries)))
            digest = hashlib.sha256()
            with open(shard.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            storage.upload_file(shard.path, target)  # temp name then rename: a shard that exists is whole
            entries.append({"path": target[len(version_root.rstrip("/")) + 1:], "split": plan.split,
                            "rows": shard.rows, "bytes": os.path.getsize(shard.path),
                            "row_groups": shard.row_groups, "sha256": digest.hexdigest(),
                            "videos": shard.videos})
        finally:
            os.unlink(shard.path)

    try:
        for sample in plan.samples:
            row = load_sample(sample)
            nbytes = _row_bytes(row)
            if current.rows and current.written() + current.buffer_bytes + nbytes > limit:
                finish(current)
                current = _ShardFile(shards_config.row_group_rows)
            current.add(row, nbytes)
        finish(current)
    except BaseException:
        if os.path.exists(current.path):  # a failed shard leaves no temp file behind
            os.unlink(current.path)
        raise
    return entries


def verify_shard(version_root: str, entry: dict) -> bool:
    """Does the shard file still match its index entry (size and sha256)?"""
    data = storage.read_bytes(storage.join(version_root, entry["path"]))
    return len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


__all__ = ["SHARDS_SCHEMA", "QUESTION", "PROVENANCE", "split_for", "assign_splits", "sample_inputs", "plan_shards", "write_shard",
           "build_sample", "question_entry", "verify_shard"]
