"""Training shards: one row per video, its frames stored once, all its conversations.

    sample_id  video_id  frames (list of JPEG bytes, time order)  frame_times_s
    conversations (list of {from, value}, LLaVA style, <video> in the first turn)  split
    question_ids  num_questions

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
SHARDS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("video_id", pa.string()),
    ("frames", pa.list_(pa.binary())),
    ("frame_times_s", pa.list_(pa.float64())),
    ("conversations", pa.list_(CONVERSATION)),
    ("split", pa.string()),
    ("question_ids", pa.list_(pa.string())),
    ("num_questions", pa.int32()),
])
SPLITS = ("train", "val")
VIDEO_TOKEN = "<video>"
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


def sample_inputs(question_parts: list[str], clip_parts: list[str]) -> list[SampleInput]:
    """One input per video that has both questions and clips (parts are named by video id)."""
    clips = {_video_of(p): p for p in clip_parts}
    out = []
    for part in sorted(question_parts):
        vid = _video_of(part)
        if vid in clips and storage.parquet_rows(part) > 0:
            out.append(SampleInput(vid, part, clips[vid], est_bytes=_frames_bytes(clips[vid])))
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


def conversation_of(questions: list[dict]) -> list[dict]:
    """All the video's question conversations, one after another; <video> only in the first turn."""
    turns: list[dict] = []
    for question in questions:
        for turn in question.get("conversations") or []:
            value = turn["value"]
            if turns and turn["from"] == "human":
                value = value.replace(VIDEO_TOKEN + "\n", "", 1).replace(VIDEO_TOKEN, "", 1)
            turns.append({"from": turn["from"], "value": value})
    if turns and VIDEO_TOKEN not in turns[0]["value"]:
        turns[0]["value"] = f"{VIDEO_TOKEN}\n{turns[0]['value']}"
    return turns


def build_sample(video_id: str, split: str, questions: list[dict], clips: list[dict]) -> dict:
    """One shard row: the training frames of every clip in time order, every conversation."""
    frames, times = [], []
    for clip in sorted(clips, key=lambda c: (c["start_s"], c.get("clip_index") or 0)):
        for t, jpeg in sorted(zip(clip["train_frame_times_s"] or [], clip["train_frames"] or []), key=lambda p: p[0]):
            frames.append(jpeg)
            times.append(float(t))
    return {
        "sample_id": f"{video_id}-00",
        "video_id": video_id,
        "frames": frames,
        "frame_times_s": times,
        "conversations": conversation_of(questions),
        "split": split,
        "question_ids": [q["question_id"] for q in questions],
        "num_questions": len(questions),
    }


def _row_bytes(row: dict) -> int:
    return sum(len(f) for f in row["frames"]) + 8 * len(row["frame_times_s"]) + \
        sum(len(t["value"]) + 8 for t in row["conversations"]) + 64


def load_sample(sample: SampleInput) -> dict:
    questions = _read(sample.questions).to_pylist()
    clips = _read(sample.clips, ["clip_index", "start_s", "train_frames", "train_frame_times_s"]).to_pylist()
    return build_sample(sample.video_id, sample.split, questions, clips)


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


__all__ = ["SHARDS_SCHEMA", "split_for", "assign_splits", "sample_inputs", "plan_shards", "write_shard", "build_sample",
           "conversation_of", "verify_shard"]
