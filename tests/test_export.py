"""`vico export --format llava`: one question a record, with its time header and exactly its frames."""
from __future__ import annotations

import json
import os
import re

from PIL import Image

from tests.conftest import run_vico
from tests.test_versions_support import demo_version, rows_by_id

HEADER = re.compile(r"^<video>\nThe video lasts (\d\d:\d\d)\. Its (\d+) frames shown here were taken at ([0-9:, ]+)\.\n")


def load_llava(json_path: str) -> list[dict]:
    """What a LLaVA / Video-XL data loader does: records, each with its frames and turns."""
    root = os.path.dirname(json_path)
    samples = []
    for record in json.load(open(json_path)):
        frames = [Image.open(os.path.join(root, path)).convert("RGB") for path in record["frames"]]
        turns = record["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].count("<video>") == 1
        assert [t["from"] for t in turns] == ["human", "gpt"]  # one question a sample
        samples.append({"id": record["id"], "frames": frames, "prompt": turns[0]["value"],
                        "answer": turns[1]["value"], "record": record})
    return samples


def mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def test_export_llava(tmp_path_factory, tmp_path):
    version = demo_version(tmp_path_factory)
    out = str(tmp_path / "llava")
    # Demo data is stand-in data: refused in one line, exported only when asked for, and marked.
    refused = run_vico("export", version, "--format", "llava", "--out", out)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "--allow-stand-in" in refused.stderr
    assert not os.path.exists(os.path.join(out, "train.json"))
    done = run_vico("export", version, "--format", "llava", "--out", out, "--allow-stand-in")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == out
    assert "STAND-IN DATA" in done.stderr
    assert json.load(open(os.path.join(out, "export.json")))["stand_in_engines"] == ["describe", "rules", "template"]

    questions = rows_by_id(version, "questions", "question_id")
    clips = rows_by_id(version, "clips", "clip_id")
    videos = rows_by_id(version, "videos", "video_id")
    samples = load_llava(os.path.join(out, "train.json")) + load_llava(os.path.join(out, "val.json"))
    assert sorted(s["id"] for s in samples) == sorted(k[0] for k in questions)  # every question once
    assert json.load(open(os.path.join(out, "export.json")))["exported"] == len(samples)
    for sample in samples:
        q = questions[(sample["id"],)]
        record = sample["record"]
        assert record["video_id"] == q["video_id"] and record["split"] == q["split"] and record["task"] == q["task"]
        # Provenance and where the answer comes from, as the questions table says.
        for name in ("caption_engine", "caption_model", "clue_engine", "clue_model", "answer_source",
                     "answer_engine", "answer_model", "blind_correct", "template_id"):
            assert record[name] == q[name], name
        assert (record["caption_engine"], record["clue_engine"]) == ("describe", "template")
        times = json.load(open(os.path.join(out, record["video"], "times.json")))
        # The header names exactly the frames given with the record, in order, and the video's length.
        header = HEADER.match(sample["prompt"])
        assert header, sample["prompt"][:200]
        assert header.group(1) == mmss(videos[(q["video_id"],)]["duration_s"])
        assert int(header.group(2)) == len(record["frames"]) == len(sample["frames"]) == len(record["frame_times_s"])
        assert header.group(3).split(", ") == [mmss(t) for t in record["frame_times_s"]]
        assert 0 < len(record["frames"]) <= 128 and record["frame_times_s"] == sorted(record["frame_times_s"])
        for path, t in zip(record["frames"], record["frame_times_s"]):
            assert times[int(path.rsplit("/", 1)[-1][:-4])] == t  # the path is the frame of that time
        for start, end in q["evidence_windows_s"]:  # every evidence event keeps a frame inside its span
            assert any(start <= t < end for t in record["frame_times_s"])
        assert sample["frames"][0].size[1] == 336 or sample["frames"][0].size[0] == 336
        # The question's own turns after the header; the answer key is the question's.
        assert sample["prompt"][header.end():] == q["conversations"][0]["value"].replace("<video>\n", "", 1)
        assert sample["answer"] == q["conversations"][1]["value"]
        if q["answer_index"] >= 0:
            assert "ABCD"[q["answer_index"]] in sample["answer"] or q["answer"] in sample["answer"]
    # the first frame on disk is the first training frame of the video's first clip
    first = samples[0]["record"]
    clip0 = min((c for c in clips.values() if c["video_id"] == first["video_id"]), key=lambda c: c["start_s"])
    assert open(os.path.join(out, first["video"], "000000.jpg"), "rb").read() == clip0["train_frames"][0]


def test_export_leaves_out_and_counts_questions_whose_evidence_does_not_fit(tmp_path_factory, tmp_path):
    from vico_pipeline.export import export_llava

    version = demo_version(tmp_path_factory)
    questions = rows_by_id(version, "questions", "question_id").values()
    too_wide = sorted(q["question_id"] for q in questions if len(set(q["evidence_clip_ids"])) > 1)
    assert too_wide  # event_order, next_event, before_after, timeline have two or more evidence clips
    lines = []
    out = export_llava(version, str(tmp_path / "one"), max_frames=1, log=lines.append, allow_stand_in=True)
    counts = json.load(open(os.path.join(out, "export.json")))
    exported = [r for split in ("train", "val") for r in json.load(open(os.path.join(out, f"{split}.json")))]
    assert counts == {"questions": len(questions), "exported": len(questions) - len(too_wide),
                      "left_out_evidence_does_not_fit": len(too_wide), "max_frames": 1,
                      "stand_in_engines": ["describe", "rules", "template"]}
    assert not set(too_wide) & {r["id"] for r in exported}
    assert all(len(r["frames"]) == 1 for r in exported)
    assert f"{len(too_wide)} left out" in lines[-1]


def test_export_refuses_what_is_not_a_version(tmp_path):
    done = run_vico("export", str(tmp_path), "--format", "llava", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "not a complete version" in done.stderr and "Traceback" not in done.stderr


def test_export_json_has_the_counts(tmp_path_factory, tmp_path, capsys):
    """`vico export --json`: the facts of the text line (N of N questions exported, M left out)."""
    from vico_pipeline import cli

    version = demo_version(tmp_path_factory)
    out = str(tmp_path / "llava")
    assert cli.main(["export", version, "--out", out, "--json", "--allow-stand-in"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    counts = result["counts"]
    records = json.load(open(os.path.join(out, "train.json"))) + json.load(open(os.path.join(out, "val.json")))
    assert counts["exported"] == len(records) > 0
    assert counts["questions"] == counts["exported"] + counts["left_out_evidence_does_not_fit"]
    assert f"{counts['exported']} of {counts['questions']} questions" in captured.err
    assert result["export"] == out and result["format"] == "llava"
