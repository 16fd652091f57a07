"""Training shards: contract columns, one question a sample, bounds, determinism, splits, five readers.

The question rows here are built by the test in the questions table's schema
(the questions and blind stages write the same columns); the frames are real JPEGs.
"""
from __future__ import annotations

import glob
import io
import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.shards import SHARDS_SCHEMA, plan_shards, sample_inputs, verify_shard, write_shard

CONV = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
QUESTIONS_SCHEMA = pa.schema([
    ("question_id", pa.string()), ("video_id", pa.string()), ("task", pa.string()), ("question", pa.string()),
    ("options", pa.list_(pa.string())), ("answer", pa.string()), ("answer_index", pa.int32()),
    ("evidence_clip_ids", pa.list_(pa.string())), ("split", pa.string()), ("conversations", CONV),
    ("caption_engine", pa.string()), ("caption_model", pa.string()), ("clue_engine", pa.string()),
    ("clue_model", pa.string()), ("blind_correct", pa.int32()),
])
VIDEOS_SCHEMA = pa.schema([("video_id", pa.string()), ("duration_s", pa.float64())])
CLIPS_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("video_id", pa.string()), ("clip_index", pa.int32()), ("start_s", pa.float64()),
    ("end_s", pa.float64()), ("train_frames", pa.list_(pa.binary())), ("train_frame_times_s", pa.list_(pa.float64())),
])


def jpeg(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def make_video(root: str, vid: str, split: str, clips: int = 3, questions: int = 2) -> None:
    clip_rows = []
    for k in reversed(range(clips)):  # written out of order: the shard must put them in time order
        times = [k * 14.0 + t for t in range(0, 14, 7)]
        clip_rows.append({"clip_id": f"{vid}-{k:05d}", "video_id": vid, "clip_index": k, "start_s": k * 14.0,
                          "end_s": (k + 1) * 14.0, "train_frames": [jpeg(hash((vid, t)) % 1000) for t in times],
                          "train_frame_times_s": times})
    q_rows = []
    for i in reversed(range(questions)):
        q_rows.append({
            "question_id": f"{vid}-q{i}", "video_id": vid, "task": "before_after", "question": f"q{i}?",
            "options": ["before", "after"], "answer": "before", "answer_index": 0,
            "evidence_clip_ids": [f"{vid}-00000", f"{vid}-{clips - 1:05d}"], "split": split,
            "conversations": [{"from": "human", "value": f"<video>\nDoes event {i} happen before event {i + 1}?"},
                              {"from": "gpt", "value": "(A)"}],
            "caption_engine": "describe", "caption_model": "describe-v1", "clue_engine": "template",
            "clue_model": "template-v1", "blind_correct": 1})
    os.makedirs(f"{root}/clips", exist_ok=True)
    os.makedirs(f"{root}/questions", exist_ok=True)
    os.makedirs(f"{root}/videos", exist_ok=True)
    pq.write_table(pa.Table.from_pylist(clip_rows, schema=CLIPS_SCHEMA), f"{root}/clips/{vid}.parquet")
    pq.write_table(pa.Table.from_pylist(q_rows, schema=QUESTIONS_SCHEMA), f"{root}/questions/{vid}.parquet")
    pq.write_table(pa.Table.from_pylist([{"video_id": vid, "duration_s": clips * 14.0 - 0.5}], schema=VIDEOS_SCHEMA),
                   f"{root}/videos/{vid}.parquet")


def config(**kw):
    base = dict(val_fraction=0.3, max_rows=256, max_bytes=512 * 1024**2, row_group_rows=16, seed=0)
    return SimpleNamespace(**{**base, **kw})


def build(root: str, version: str, cfg, videos=None) -> list[dict]:
    parts_q = sorted(glob.glob(f"{root}/questions/*.parquet"))
    parts_c = sorted(glob.glob(f"{root}/clips/*.parquet"))
    parts_v = sorted(glob.glob(f"{root}/videos/*.parquet"))
    if videos is not None:
        parts_q = [p for p in parts_q if os.path.basename(p)[:-8] in videos]
    index = []
    for plan in plan_shards(sample_inputs(parts_q, parts_c, parts_v), cfg):
        index += write_shard(plan, version, cfg)
    return index


VIDEOS = [(f"vid{i:02d}", "val" if i % 4 == 0 else "train") for i in range(10)]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("parts"))
    for vid, split in VIDEOS:
        make_video(root, vid, split)
    make_video(root, "noquestions", "train", questions=0)
    return root


@pytest.fixture(scope="module")
def version(parts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("version"))
    return out, build(parts, out, config(max_rows=3, row_group_rows=2))


def test_one_row_per_video_frames_once_and_the_list_of_its_questions(version):
    root, index = version
    table = pq.read_table(f"{root}/shards", schema=SHARDS_SCHEMA)
    assert "conversations" not in table.column_names  # no packed all-questions conversation
    assert sorted(table.column("video_id").to_pylist()) == sorted(v for v, _ in VIDEOS)  # no video without questions
    for row in table.to_pylist():
        assert row["frame_times_s"] == sorted(row["frame_times_s"]) and len(row["frames"]) == 6
        for data in row["frames"]:
            assert Image.open(io.BytesIO(data)).format == "JPEG"
        assert row["duration_s"] == 3 * 14.0 - 0.5  # the video's own length, not its last frame's time
        vid = row["video_id"]
        assert [q["question_id"] for q in row["questions"]] == [f"{vid}-q0", f"{vid}-q1"]
        for q in row["questions"]:
            turns = q["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"]  # one question, its own two turns
            assert turns[0]["value"].startswith("<video>\nDoes event")  # no time header stored
            assert q["evidence_clip_ids"] == [f"{vid}-00000", f"{vid}-00002"]
            assert q["evidence_windows_s"] == [[0.0, 14.0], [28.0, 42.0]]
            assert q["options"] == ["before", "after"] and q["answer_index"] == 0 and q["task"] == "before_after"
        assert row["split"] == dict(VIDEOS)[vid]
        assert (row["caption_engine"], row["caption_model"], row["clue_engine"], row["clue_model"]) == \
            ("describe", "describe-v1", "template", "template-v1")


def test_a_shard_row_gives_one_sample_a_question_with_its_time_header(version):
    from vico_pipeline.samples import question_sample

    root, _ = version
    row = pq.read_table(f"{root}/shards", schema=SHARDS_SCHEMA).to_pylist()[0]
    sample = question_sample(row, row["questions"][1], max_frames=2)
    # Two frames: one in each evidence window (0-14 s and 28-42 s), named by the header.
    assert sample["frame_times_s"] == [row["frame_times_s"][i] for i in sample["frame_indices"]]
    assert all(any(a <= t < b for t in sample["frame_times_s"]) for a, b in row["questions"][1]["evidence_windows_s"])
    human = sample["conversations"][0]["value"]
    from vico_pipeline.samples import format_time
    shown = ", ".join(format_time(t) for t in sample["frame_times_s"])
    assert human.startswith(f"<video>\nThe video lasts 00:41. Its 2 frames shown here were taken at {shown}.\n")
    assert human.endswith("Does event 1 happen before event 2?") and sample["conversations"][1]["value"] == "(A)"


def test_bounds_index_and_split_disjoint(version):
    root, index = version
    train = {v for e in index if e["split"] == "train" for v in e["videos"]}
    val = {v for e in index if e["split"] == "val" for v in e["videos"]}
    assert train and val and not train & val
    assert val == {v for v, s in VIDEOS if s == "val"}
    for entry in index:
        meta = pq.ParquetFile(f"{root}/{entry['path']}").metadata
        assert meta.num_rows == entry["rows"] <= 3
        assert all(meta.row_group(g).num_rows <= 2 for g in range(meta.num_row_groups))
        assert entry["path"].startswith(f"shards/{entry['split']}/")
        assert os.path.getsize(f"{root}/{entry['path']}") == entry["bytes"]
        assert verify_shard(root, entry)
    # a damaged shard no longer matches its checksum
    victim = f"{root}/{index[0]['path']}"
    data = open(victim, "rb").read()
    try:
        open(victim, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
        assert not verify_shard(root, index[0])
    finally:
        open(victim, "wb").write(data)


def test_max_bytes_bound(parts, tmp_path):
    one = build(parts, str(tmp_path / "probe"), config(), videos={"vid01"})[0]["bytes"]
    limit = 70 * 1024 + 2 * one  # room for about two videos under the footer allowance
    index = build(parts, str(tmp_path / "v"), config(max_bytes=limit))
    assert len([e for e in index if e["split"] == "train"]) >= 3
    for entry in index:
        assert entry["bytes"] <= limit or entry["rows"] == 1


def test_deterministic_shuffle(parts, tmp_path):
    a = build(parts, str(tmp_path / "a"), config(max_rows=4))
    b = build(parts, str(tmp_path / "b"), config(max_rows=4))
    assert [e["sha256"] for e in a] == [e["sha256"] for e in b]
    order = [v for e in a if e["split"] == "train" for v in e["videos"]]
    assert order != sorted(order)  # shuffled, not in id order
    # adding videos never reorders the others; another seed gives another order
    fewer = build(parts, str(tmp_path / "c"), config(max_rows=4), videos={v for v, _ in VIDEOS[:6]})
    kept = [v for e in fewer if e["split"] == "train" for v in e["videos"]]
    assert kept == [v for v in order if v in kept]
    other = build(parts, str(tmp_path / "d"), config(max_rows=4, seed=1))
    assert [v for e in other if e["split"] == "train" for v in e["videos"]] != order


def test_empty_split_is_a_readable_empty_shard(parts, tmp_path):
    index = build(parts, str(tmp_path / "v"), config(), videos={"vid01", "vid02"})
    val = [e for e in index if e["split"] == "val"]
    assert len(val) == 1 and val[0]["rows"] == 0
    assert pq.read_table(str(tmp_path / "v" / val[0]["path"])).schema.equals(SHARDS_SCHEMA)


# --------------------------------------------------------------------------- the five readers
def _check_frames(values):
    for data in values:
        assert Image.open(io.BytesIO(bytes(data))).convert("RGB").size == (48, 32)


def test_read_with_pyarrow_and_pandas(version):
    import pandas as pd

    root, index = version
    total = sum(e["rows"] for e in index if e["split"] == "train")
    table = pq.ParquetDataset(f"{root}/shards/train").read()
    assert table.num_rows == total
    _check_frames(table.column("frames")[0].as_py())
    frame = pd.read_parquet(f"{root}/shards/train")
    assert len(frame) == total and set(frame["split"]) == {"train"}
    _check_frames(frame["frames"].iloc[0])
    assert frame["questions"].iloc[0][0]["conversations"][0]["from"] == "human"


def test_read_with_duckdb(version):
    import duckdb

    root, index = version
    con = duckdb.connect()
    rows = con.execute(f"SELECT video_id, len(frames), frames[1], questions[1].conversations[1].value "
                       f"FROM read_parquet('{root}/shards/*/*.parquet') ORDER BY video_id").fetchall()
    assert len(rows) == len(VIDEOS)
    assert all(n == 6 for _, n, _, _ in rows)
    _check_frames([r[2] for r in rows])
    assert rows[0][3].startswith("<video>")
    splits = con.execute(f"SELECT count(DISTINCT split) FROM read_parquet('{root}/shards/*/*.parquet') "
                         f"GROUP BY video_id").fetchall()
    assert all(n == 1 for (n,) in splits)


def test_read_with_hf_datasets(version, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    root, index = version
    files = {split: sorted(glob.glob(f"{root}/shards/{split}/*.parquet")) for split in ("train", "val")}
    data = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert data["train"].num_rows + data["val"].num_rows == len(VIDEOS)
    sample = data["val"][0]
    _check_frames(sample["frames"])
    assert sample["questions"][0]["conversations"][1] == {"from": "gpt", "value": "(A)"}


def test_read_with_ray_data(version):
    import ray

    from vico_pipeline.config import RayConfig
    from vico_pipeline.runtime import init_ray

    root, index = version
    started = not ray.is_initialized()
    init_ray(RayConfig(num_cpus=1))
    try:
        ds = ray.data.read_parquet(f"{root}/shards/train")
        rows = ds.take_all()
        assert len(rows) == sum(e["rows"] for e in index if e["split"] == "train")
        _check_frames(rows[0]["frames"])
        assert {r["split"] for r in rows} == {"train"}
    finally:
        if started:
            ray.shutdown()
