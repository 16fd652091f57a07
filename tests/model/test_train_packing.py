"""train.pack_questions: turns shuffled, and no turn answerable from an earlier one.

The leakage here is measured on its own, exactly (a directed order over clips, taken to its
transitive closure), not with the packer's own conservative check, and it is shown to find
leaks in the old layout (every question of a video in one conversation, in task order).
"""

import itertools
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.questions import build_questions
from vico_pipeline.model.data import QuestionSamples
from vico_pipeline.samples import pack_questions

ORDER_TASKS = {"event_order", "before_after", "next_event", "timeline"}
TASKS = ["event_order", "clue_time", "next_event", "before_after", "timeline"]


def video_questions(video_id: str, n_clues: int = 10, seconds: float = 14.0) -> tuple[list[dict], dict]:
    """Questions from the real question builder, on clues spread over a 10-minute video,
    each with its evidence windows (as a shard row holds them)."""
    rng = random.Random(video_id)
    clips = sorted(rng.sample(range(42), n_clues))
    clues = [{"clip_id": f"{video_id}-{k:05d}", "start_s": k * seconds, "end_s": (k + 1) * seconds,
              "text": f"event number {k} of {video_id}"} for k in clips]
    start = {c["clip_id"]: c["start_s"] for c in clues}
    questions = build_questions(video_id, clues, TASKS, per_task=4, seed=0, clip_seconds=seconds,
                                duration_s=600.0, val_fraction=0.0)
    for q in questions:
        q["evidence_windows_s"] = [[start[c], start[c] + seconds] for c in q["evidence_clip_ids"]]
    return questions, start


def answer_text(q: dict) -> str | None:
    return q["options"][q["answer_index"]] if q.get("options") and q["answer_index"] >= 0 else None


def leaks(turns: list[dict], start: dict) -> list[str]:
    """The turns answerable (even in part) from earlier turns of the same conversation."""
    found = []
    for k, q in enumerate(turns):
        earlier = turns[:k]
        clips = set(q["evidence_clip_ids"])
        before: set[tuple[str, str]] = set()  # (a, b): earlier answers say a happens before b
        pinned = set()  # clips whose time earlier answers give
        for e in earlier:
            ordered = sorted(e["evidence_clip_ids"], key=start.get)
            before.update(itertools.combinations(ordered, 2))
            if e["task"] == "clue_time":
                pinned.update(e["evidence_clip_ids"])
        pinned_sorted = sorted(pinned, key=start.get)
        before.update(itertools.combinations(pinned_sorted, 2))
        closure = set(before)
        while True:  # transitive closure
            more = {(a, d) for a, b in closure for c, d in closure if b == c} - closure
            if not more:
                break
            closure |= more
        known = lambda a, b: (a, b) in closure or (b, a) in closure  # noqa: E731
        if any(len(clips & set(e["evidence_clip_ids"])) >= 2 for e in earlier):
            found.append(f"{q['question_id']}: same pair of clues as an earlier turn")
        elif any(e["task"] == "timeline" for e in earlier) or (q["task"] == "timeline" and earlier):
            found.append(f"{q['question_id']}: a timeline and other turns together")
        elif q["task"] in ORDER_TASKS and any(known(a, b) for a, b in itertools.combinations(clips, 2)):
            found.append(f"{q['question_id']}: its order follows from earlier answers")
        elif q["task"] == "clue_time" and any(c in pinned or any(known(c, p) for p in pinned) for c in clips):
            found.append(f"{q['question_id']}: its time follows from earlier answers")
        elif q["task"] in ("clue_time", "next_event") and any(
                e["task"] == q["task"] and answer_text(e) in q["options"] and answer_text(e) != answer_text(q) for e in earlier):
            found.append(f"{q['question_id']}: an earlier answer rules out one of its options")
    return found


def test_the_leak_measure_finds_leaks_in_one_conversation_a_video():
    total = 0
    for v in range(8):
        questions, start = video_questions(f"vid{v}")
        total += len(leaks(questions, start))
    assert total >= 8


@pytest.mark.parametrize("seed", range(5))
def test_packed_questions_leak_nothing(seed):
    packed = turns = 0
    for v in range(8):
        questions, start = video_questions(f"vid{v}")
        packs = pack_questions(questions, random.Random(f"{seed}:{v}"))
        assert sorted(q["question_id"] for p in packs for q in p) == sorted(q["question_id"] for q in questions)
        for pack in packs:
            assert leaks(pack, start) == []
            assert all(q["task"] != "timeline" for q in pack) or len(pack) == 1
            packed += len(pack) > 1
            turns += len(pack)
    assert packed >= 8 and turns / sum(1 for v in range(8) for _ in video_questions(f"vid{v}")[0]) == 1


def test_packed_turns_are_shuffled():
    questions, _ = video_questions("vid0")
    orders = {tuple(q["question_id"] for p in pack_questions(questions, random.Random(s)) for q in p) for s in range(5)}
    assert len(orders) == 5


def test_packed_training_samples_leak_nothing_and_fit_the_frames(tmp_path):
    rows, starts = [], {}
    for v in range(4):
        questions, start = video_questions(f"vid{v}")
        starts |= start
        times = [float(t) for t in range(0, 600, 2)]  # a frame every 2 s
        rows.append({"video_id": f"vid{v}", "duration_s": 600.0, "frames": [b""] * len(times), "frame_times_s": times,
                     "questions": questions, "split": "train", "caption_engine": "openai", "clue_engine": "openai"})
    (tmp_path / "shards" / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shards" / "train" / "part-00000.parquet")

    samples = QuestionSamples(tmp_path, "train", max_frames=12, pack=True, seed=3)  # a timeline has 10 clues
    assert samples.dropped == 0 and "packed questions" in samples.summary()
    asked = []
    for i in range(len(samples)):
        row, sample = samples[i]
        turns = [row["questions"][q] for q in samples.refs[i].questions]
        asked += [q["question_id"] for q in turns]
        assert leaks(turns, starts) == []
        assert len(sample["frame_indices"]) <= 12
        shown = sample["frame_times_s"]
        for q in turns:  # every turn's evidence keeps a frame
            assert all(any(a <= t < b for t in shown) for a, b in q["evidence_windows_s"])
        humans = [t["value"] for t in sample["conversations"] if t["from"] == "human"]
        assert len(humans) == len(turns) and humans[0].startswith("<video>\nThe video lasts 10:00. Its ")
        assert all("<video>" not in h and "The video lasts" not in h for h in humans[1:])
    assert sorted(asked) == sorted(q["question_id"] for r in rows for q in r["questions"])
    assert len(samples) < len(asked)  # some questions do share a conversation
    assert len(QuestionSamples(tmp_path, "train", max_frames=12).refs) == len(asked)  # off: one question a sample
