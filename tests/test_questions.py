"""Question sets: every answer key is the true chronological fact; letters are spread evenly."""
import random
import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stages.base import ErrorRow
from stages.questions import LETTERS, QuestionsStage, build_questions, split_for, time_range
from vico_pipeline.config import Config

TASKS = ["event_order", "clue_time", "next_event", "before_after", "timeline"]


@st.composite
def timelines(draw):
    """Clues on distinct 14-second windows, distinct texts, given in a shuffled order."""
    n = draw(st.integers(2, 12))
    windows = draw(st.lists(st.integers(0, 200), min_size=n, max_size=n, unique=True))
    words = draw(st.lists(st.text("abcdefghij", min_size=4, max_size=8), min_size=n, max_size=n, unique=True))
    clues = [{"clip_id": f"v-{w:05d}", "start_s": 14.0 * w, "end_s": 14.0 * (w + 1), "text": f"the {t} event happens"}
             for w, t in zip(windows, words)]
    draw(st.randoms(use_true_random=False)).shuffle(clues)
    return clues, 14.0 * (max(windows) + 1) + draw(st.floats(0, 30))


def check_question(q: dict, clues: list[dict]) -> None:
    """Recompute the answer from the timestamps alone and compare."""
    start = {c["text"]: c["start_s"] for c in clues}
    ordered = sorted(clues, key=lambda c: c["start_s"])
    options, index = q["options"], q["answer_index"]
    human, gpt = q["conversations"][0]["value"], q["conversations"][1]["value"]
    assert [t["from"] for t in q["conversations"]] == ["human", "gpt"] and human.startswith("<video>\n")
    assert "The video lasts" not in human  # no time header: consumers add it (samples.py)
    window = {c["clip_id"]: [c["start_s"], c["end_s"]] for c in clues}
    assert q["evidence_windows_s"] == [window[c] for c in q["evidence_clip_ids"]]
    if q["task"] == "timeline":
        assert options == [] and index == -1
        assert q["answer"] == "\n".join(f"{time_range(c['start_s'], c['end_s'])}: {c['text']}" for c in ordered)
        assert gpt == q["answer"]
        return
    if q["task"] == "before_after":
        a, b = re.findall(r'"([^"]+)"', q["question"])
        truth = "before" if start[a] < start[b] else "after"
        assert options == ["before", "after"] and options[index] == truth == q["answer"] == gpt
        return
    assert len(options) == 4 and len(set(options)) == 4
    assert q["answer"] == LETTERS[index] and gpt == f"({LETTERS[index]})"
    assert all(f"({LETTERS[i]}) {o}" in human for i, o in enumerate(options))
    if q["task"] == "event_order":
        shown = re.findall(r"^(\d)\. (.+)$", q["question"], re.M)
        number = {text: n for n, text in shown}
        truth = ", ".join(number[t] for t in sorted(number, key=start.get))
        assert 3 <= len(shown) <= 5 and options[index] == truth
    elif q["task"] == "clue_time":
        (text,) = re.findall(r'"([^"]+)"', q["question"])
        clue = next(c for c in clues if c["text"] == text)
        assert options[index] == time_range(clue["start_s"], clue["end_s"])
    elif q["task"] == "next_event":
        (text,) = re.findall(r'"([^"]+)"', q["question"])
        position = [c["text"] for c in ordered].index(text)
        assert options[index] == ordered[position + 1]["text"]
        assert all(start[o] != start[text] for o in options)
        # True to the wording: of the listed events, the key is the first one after the clue.
        assert options[index] == min((o for o in options if start[o] > start[text]), key=start.get)
        assert "right after" not in q["question"] and "comes next" in q["question"]


@settings(max_examples=150, deadline=None)
@given(timelines(), st.integers(1, 4), st.integers(0, 1000))
def test_every_answer_is_the_true_chronological_fact(timeline, per_task, seed):
    clues, duration = timeline
    rows = build_questions("vid", clues, TASKS, per_task, seed, 14.0, duration, 0.2)
    assert {r["task"] for r in rows} >= {"before_after", "timeline"}  # two clues suffice
    if len(clues) >= 3:
        assert "event_order" in {r["task"] for r in rows}
    for q in rows:
        check_question(q, clues)
    assert len({r["question_id"] for r in rows}) == len(rows)
    # Letters within one video: dealt from shuffled decks, so no letter leads by more than one.
    letters = Counter(r["answer_index"] for r in rows if r["task"] in ("event_order", "clue_time", "next_event"))
    if letters:
        assert max(letters[i] for i in range(4)) - min(letters[i] for i in range(4)) <= 1
    sides = Counter(r["answer_index"] for r in rows if r["task"] == "before_after")
    assert abs(sides[0] - sides[1]) <= 1


def test_letters_are_even_over_a_dataset():
    rng = random.Random(7)
    letters, sides = Counter(), Counter()
    for v in range(300):
        n = rng.randint(3, 10)
        windows = sorted(rng.sample(range(100), n))
        clues = [{"clip_id": f"c{w}", "start_s": 14.0 * w, "end_s": 14.0 * w + 14, "text": f"event {w} happens"}
                 for w in windows]
        for r in build_questions(f"video{v}", clues, TASKS, 1, 0, 14.0, 1400.0, 0.1):
            if r["task"] == "before_after":
                sides[r["answer"]] += 1
            elif r["answer_index"] >= 0:
                letters[r["answer"]] += 1
    total = sum(letters.values())
    assert total > 600 and all(abs(letters[l] / total - 0.25) < 0.03 for l in LETTERS)
    assert abs(sides["before"] - sides["after"]) <= 0.1 * sum(sides.values())


def test_seeded_and_split_by_video():
    clues = [{"clip_id": f"c{i}", "start_s": 14.0 * i, "end_s": 14.0 * i + 14, "text": f"event {i}"} for i in range(6)]
    a = build_questions("vid", clues, TASKS, 2, 3, 14.0, 84.0, 0.5)
    assert a == build_questions("vid", clues[::-1], TASKS, 2, 3, 14.0, 84.0, 0.5)  # input order does not matter
    assert a != build_questions("vid", clues, TASKS, 2, 4, 14.0, 84.0, 0.5)
    assert {r["split"] for r in a} == {split_for("vid", 0.5)}
    splits = Counter(split_for(f"video-{i}", 0.2) for i in range(2000))
    assert 0.17 < splits["val"] / 2000 < 0.23
    assert split_for("x", 0.0) == "train" and split_for("x", 1.0) == "val"


def test_only_the_configured_tasks_and_an_error_row_when_none_can_be_built():
    config = Config()
    config.questions.tasks = ["before_after"]
    config.questions.per_task = 3
    clues = [{"clip_id": f"c{i}", "start_s": 14.0 * i, "end_s": 14.0 * i + 14, "text": f"event {i}"} for i in range(4)]
    stage = QuestionsStage(config)
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {"duration_s": 56.0}, "clues": clues}))
    assert len(rows) == 3 and {r["task"] for r in rows} == {"before_after"}
    rows = list(stage.process({"video_id": "v", "source": "s", "video": {"duration_s": 56.0}, "clues": clues[:1]}))
    assert len(rows) == 1 and isinstance(rows[0], ErrorRow) and rows[0].error_type == "no_questions"


def _event_orders(videos=600):
    rng = random.Random(11)
    out = []
    for v in range(videos):
        n = rng.randint(3, 9)
        clues = [{"clip_id": f"c{w}", "start_s": 14.0 * w, "end_s": 14.0 * w + 14, "text": f"event {w} happens"}
                 for w in sorted(rng.sample(range(100), n))]
        out += [r for r in build_questions(f"video{v}", clues, ["event_order"], 2, 0, 14.0, 1400.0, 0.1)]
    return out


def _orders(q):
    return [tuple(int(x) for x in o.split(", ")) for o in q["options"]]


def test_the_identity_order_is_right_as_often_as_chance_makes_it():
    import math

    questions = _event_orders()
    right_identity = expected = 0.0
    for q in questions:
        options = _orders(q)
        k = len(options[0])
        expected += 1 / math.factorial(k)  # a uniformly shuffled listing is already in order 1 in k! times
        right_identity += options[q["answer_index"]] == tuple(range(1, k + 1))
    assert len(questions) > 1000 and right_identity > 0
    assert abs(right_identity - expected) < 3 * math.sqrt(expected)


def test_event_order_distractors_include_a_near_miss_and_the_truth_is_no_hub():
    from stages.questions import one_swap_apart

    questions = _event_orders()
    hubs = 0
    for q in questions:
        options = _orders(q)
        truth = options[q["answer_index"]]
        assert any(one_swap_apart(truth, o) for o in options if o != truth)  # a near miss is offered
        degree = [sum(one_swap_apart(a, b) for b in options if b != a) for a in options]
        hubs += degree[q["answer_index"]] > max(d for i, d in enumerate(degree) if i != q["answer_index"])
    assert hubs == 0  # "the option one swap from most others" never finds the answer


def test_questions_carry_their_provenance_and_an_empty_blind_count():
    clues = [{"clip_id": f"c{i}", "start_s": 14.0 * i, "end_s": 14.0 * i + 14, "text": f"event {i}",
              "engine": "template", "model": "template-v1"} for i in range(6)]
    captions = [{"clip_id": f"c{i}", "engine": "describe", "model": "describe-v1"} for i in range(6)]
    rows = list(QuestionsStage(Config()).process({"video_id": "v", "source": "s", "video": {"duration_s": 84.0},
                                                  "clues": clues, "caption": captions}))
    assert rows and all((r["caption_engine"], r["caption_model"], r["clue_engine"], r["clue_model"])
                        == ("describe", "describe-v1", "template", "template-v1") for r in rows)
    assert all(r["blind_correct"] is None for r in rows)
    from stages.base import rows_to_table
    from stages.questions import QUESTIONS_SCHEMA
    table = rows_to_table(rows, QUESTIONS_SCHEMA)
    assert table.column("evidence_windows_s").to_pylist()[0] == rows[0]["evidence_windows_s"]
