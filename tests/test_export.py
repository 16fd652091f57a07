"""`vico export --format llava`: JSON records a LLaVA-style loader reads, frames on disk."""
from __future__ import annotations

import json
import os

from PIL import Image

from tests.conftest import run_vico
from tests.test_versions_support import demo_version, rows_by_id


def load_llava(json_path: str) -> list[dict]:
    """What a LLaVA / Video-XL data loader does: records, each with its frame folder and turns."""
    root = os.path.dirname(json_path)
    samples = []
    for record in json.load(open(json_path)):
        folder = os.path.join(root, record["video"])
        names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
        frames = [Image.open(os.path.join(folder, n)).convert("RGB") for n in names]
        turns = record["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].count("<video>") == 1
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        samples.append({"id": record["id"], "frames": frames, "prompt": turns[0]["value"],
                        "answer": turns[1]["value"], "record": record})
    return samples


def test_export_llava(tmp_path_factory, tmp_path):
    version = demo_version(tmp_path_factory)
    out = str(tmp_path / "llava")
    done = run_vico("export", version, "--format", "llava", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == out

    questions = rows_by_id(version, "questions", "question_id")
    clips = rows_by_id(version, "clips", "clip_id").values()
    samples = load_llava(os.path.join(out, "train.json")) + load_llava(os.path.join(out, "val.json"))
    assert sorted(s["id"] for s in samples) == sorted(k[0] for k in questions)  # every question once
    for sample in samples:
        q = questions[(sample["id"],)]
        record = sample["record"]
        assert record["video_id"] == q["video_id"] and record["split"] == q["split"]
        n = sum(len(c["train_frames"]) for c in clips if c["video_id"] == q["video_id"])
        assert len(sample["frames"]) == n == len(record["frame_times_s"]) > 0
        assert record["frame_times_s"] == sorted(record["frame_times_s"])
        assert sample["frames"][0].size[1] == 336 or sample["frames"][0].size[0] == 336
        assert record["conversations"] == q["conversations"]  # the answer key is the question's
        if q["answer_index"] >= 0:
            assert "ABCD"[q["answer_index"]] in sample["answer"] or q["answer"] in sample["answer"]
    # the first frame on disk is the first training frame of the video's first clip
    first = samples[0]["record"]
    clip0 = min((c for c in clips if c["video_id"] == first["video_id"]), key=lambda c: c["start_s"])
    assert open(os.path.join(out, first["video"], "000000.jpg"), "rb").read() == clip0["train_frames"][0]


def test_export_refuses_what_is_not_a_version(tmp_path):
    done = run_vico("export", str(tmp_path), "--format", "llava", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "not a complete version" in done.stderr and "Traceback" not in done.stderr
