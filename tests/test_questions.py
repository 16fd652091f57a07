"""Question sets: every answer key is the true chronological fact; letters are spread evenly."""
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.base import ErrorRow
from stages.questions import LETTERS, QuestionsStage, build_questions, split_for, time_range
from vico_pipeline.text import overlap
from vico_pipeline.config import Config
from vico_pipeline.spans import span_of

TASKS = ["event_order", "clue_time", "next_event", "before_after", "timeline", "at_time", "gap", "summary",
         "said_when"]


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


STAND_IN = {"describe", "template", "rules"}


def seconds_of(clock: str) -> int:
    """mm:ss or h:mm:ss in seconds."""
    value = 0
    for part in clock.split(":"):
        value = 60 * value + int(part)
    return value


def quoted(question: str) -> list[str]:
    return re.findall(r'"([^"]+)"', question)


def check_question(q: dict, clues: list[dict], captions=(), summaries=(), subtitles=(),
                   duration: float = float("inf")) -> None:
    """Recompute the answer from the tables alone (clues, captions, summaries, subtitles) and compare."""
    start = {c["text"]: c["start_s"] for c in clues}
    ordered = sorted(clues, key=lambda c: c["start_s"])
    options, index = q["options"], q["answer_index"]
    human, gpt = q["conversations"][0]["value"], q["conversations"][1]["value"]
    assert [t["from"] for t in q["conversations"]] == ["human", "gpt"] and human.startswith("<video>\n")
    assert "The video lasts" not in human  # no time header: consumers add it (samples.py)
    window = {c["clip_id"]: [c["start_s"], c["end_s"]] for c in [*captions, *clues]}
    # The evidence windows are the evidence events' spans (the clip windows where no span is known).
    span = {c["clip_id"]: list(span_of(c)) for c in [*captions, *clues]}
    assert q["evidence_windows_s"] == [span[c] for c in q["evidence_clip_ids"]]
    assert q["template_id"].startswith(q["task"] + ".")
    assert q["answer_source"] == ("timestamps" if q["task"] != "summary" else q["answer_source"])
    if q["task"] == "summary":  # the video summary's text, marked as written by a model (or a stand-in)
        (summary,) = [s for s in summaries if s["level"] == "video"]
        assert options == [] and index == -1 and q["answer"] == gpt == summary["text"].strip()
        assert q["answer_source"] == ("stand-in" if summary["engine"] in STAND_IN else "model")
        assert (q["answer_engine"], q["answer_model"]) == (summary["engine"], summary["model"])
        return
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
    elif q["task"] == "at_time":
        (shown,) = re.findall(r"\b((?:\d+:)?\d+:\d\d)\b", q["question"])
        t = seconds_of(shown)
        # The asked second lies inside the key's event span and no other clue's.
        holding = [c for c in clues if span_of(c)[0] < t + 1 and t < span_of(c)[1]]
        assert len(holding) == 1 and options[index] == holding[0]["text"]
        assert q["evidence_clip_ids"] == [holding[0]["clip_id"]] and set(options) <= set(start)
    elif q["task"] == "gap":
        a, b = quoted(q["question"])
        begins = {c["text"]: span_of(c)[0] for c in clues}  # the gap runs between the events' starts
        truth = abs(begins[a] - begins[b]) / 60
        minutes = [int(re.fullmatch(r"about (\d+) minutes?", o).group(1)) for o in options]
        assert minutes == sorted(set(minutes)) and max(minutes) * 60 <= duration
        distance = sorted(abs(m - truth) for m in minutes)
        assert abs(minutes[index] - truth) == distance[0] and distance[1] - distance[0] >= 0.25
        assert abs(minutes[index] - truth) <= max(0.5, minutes[index] / 6)  # the nearest bucket, not just the nearest option
        assert sorted(q["evidence_clip_ids"], key=lambda c: window[c]) == q["evidence_clip_ids"]
        assert {span[c][0] for c in q["evidence_clip_ids"]} == {begins[a], begins[b]}
    elif q["task"] == "said_when":
        (line,) = quoted(q["question"])
        said = [c for c in subtitles if " ".join(c["text"].replace('"', "'").split()).lower() == line.lower()]
        (clip,) = [c for c in captions if c["clip_id"] == q["evidence_clip_ids"][0]]
        # Every cue of these words has its midpoint in the key clip, and one lies wholly inside it.
        assert said and all(clip["start_s"] <= (c["start_s"] + c["end_s"]) / 2 <= clip["end_s"] for c in said)
        assert any(clip["start_s"] <= c["start_s"] < c["end_s"] <= clip["end_s"] for c in said)
        assert options[index] == clip["key_event"].strip() and len(q["evidence_clip_ids"]) == 1
        events = {c["key_event"].strip() for c in captions if c["clip_id"] != clip["clip_id"]}
        assert all(o in events for i, o in enumerate(options) if i != index)
    else:
        raise AssertionError(f"no key check for task {q['task']}")


@st.composite
def videos(draw):
    """A timeline of clues plus the video's other tables: captions of most clips (key events that
    repeat), subtitle cues of two tracks (lines said twice, cues across clip borders, short ones)
    and sometimes a video summary by a stand-in or a model."""
    clues, duration = draw(timelines())
    clue_clips = {c["clip_id"] for c in clues}
    captions = [{"clip_id": f"v-{k:05d}", "start_s": 14.0 * k, "end_s": 14.0 * (k + 1),
                 "key_event": f"scene {draw(st.integers(0, 40))} on screen"}
                for k in range(int(duration // 14)) if f"v-{k:05d}" in clue_clips or draw(st.integers(0, 9)) > 0]
    lines = [f"we say line {k} now" for k in range(draw(st.integers(1, 30)))] + ["yes", "ok then"]
    subtitles = []
    for _ in range(draw(st.integers(0, 40))):
        begin = draw(st.floats(0, duration))
        subtitles.append({"start_s": begin, "end_s": begin + draw(st.floats(0.0, 20.0)),
                          "text": draw(st.sampled_from(lines)), "source": draw(st.sampled_from(["uploader", "auto"])),
                          "language": "en"})
    summaries = [{"level": "segment", "start_s": 0.0, "end_s": 140.0, "text": "a segment", "engine": "template",
                  "model": "template-v1"}]
    if draw(st.booleans()):
        engine = draw(st.sampled_from(["template", "openai"]))
        summaries.append({"level": "video", "start_s": 0.0, "end_s": duration, "text": " the whole video ",
                          "engine": engine, "model": f"{engine}-model"})
    return clues, duration, captions, subtitles, summaries


@settings(max_examples=150, deadline=None)
@given(videos(), st.integers(1, 4), st.integers(0, 1000))
def test_every_answer_is_the_true_chronological_fact(video, per_task, seed):
    clues, duration, captions, subtitles, summaries = video
    rows = build_questions("vid", clues, TASKS, per_task, seed, 14.0, duration, 0.2,
                           captions=captions, summaries=summaries, subtitles=subtitles)
    assert {r["task"] for r in rows} >= {"before_after", "timeline"}  # two clues suffice
    if len(clues) >= 3:
        assert "event_order" in {r["task"] for r in rows}
    # The summary question exactly when there is a video summary.
    assert ("summary" in {r["task"] for r in rows}) == any(s["level"] == "video" for s in summaries)
    for q in rows:
        check_question(q, clues, captions, summaries, subtitles, duration)
    assert len({r["question_id"] for r in rows}) == len(rows)
    # Letters within one video: dealt from shuffled decks, so no letter leads by more than one.
    letters = Counter(r["answer_index"] for r in rows if r["task"] not in ("before_after", "timeline", "summary"))
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
    # one before_after a video here, its side the first card of a fresh deck: a fair coin per video
    assert abs(sides["before"] - sides["after"]) <= 3 * sum(sides.values()) ** 0.5


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
    captions = [{"clip_id": f"c{i}", "start_s": 14.0 * i, "end_s": 14.0 * i + 14, "engine": "describe",
                 "model": "describe-v1"} for i in range(6)]
    rows = list(QuestionsStage(Config()).process({"video_id": "v", "source": "s", "video": {"duration_s": 84.0},
                                                  "clues": clues, "caption": captions}))
    assert rows and all((r["caption_engine"], r["caption_model"], r["clue_engine"], r["clue_model"])
                        == ("describe", "describe-v1", "template", "template-v1") for r in rows)
    assert all(r["blind_correct"] is None for r in rows)
    from stages.base import rows_to_table
    from stages.common import QUESTIONS_SCHEMA
    table = rows_to_table(rows, QUESTIONS_SCHEMA)
    assert table.column("evidence_windows_s").to_pylist()[0] == rows[0]["evidence_windows_s"]


def _trivial_rule_rates(task: str, per_task: int, videos: int = 400) -> tuple[dict, int]:
    """How often 'pick the earliest option', 'the latest' and 'the option sharing most words with
    the question' are right, over synthetic videos whose neighbouring events share words."""
    rng = random.Random(5)
    subjects = ["a red car", "a dog", "two people", "a crowd", "the chef", "a bird", "a train", "the player"]
    verbs = ["enters the room", "crosses the street", "waves", "sits down", "runs away", "opens a door"]
    right = Counter()
    total = 0
    for v in range(videos):
        n = rng.randint(5, 12)
        windows = sorted(rng.sample(range(60), n))
        subject = rng.choice(subjects)
        clues = []
        for w in windows:
            if rng.random() < 0.4:
                subject = rng.choice(subjects)  # a scene change; otherwise the same subject goes on
            clues.append({"clip_id": f"c{w}", "start_s": 14.0 * w, "end_s": 14.0 * w + 14,
                          "text": f"{subject} {rng.choice(verbs)} near marker {chr(97 + w % 26)}{w}"})
        for q in build_questions(f"video{v}", clues, [task], per_task, 0, 14.0, 840.0, 0.1):
            total += 1
            options = q["options"]
            if task == "clue_time":
                starts = [seconds_of(o.split("–")[0]) for o in options]
                right["earliest"] += starts.index(min(starts)) == q["answer_index"]
                right["latest"] += starts.index(max(starts)) == q["answer_index"]
            said = q["question"].split('"')[1]
            shared = [overlap(said, o) for o in options]
            best = [k for k, s in enumerate(shared) if s == max(shared)]
            right["overlap"] += (q["answer_index"] in best) / len(best)  # ties: a uniform guess
    return {rule: count / total for rule, count in right.items()}, total


# per_task 8 asks about nearly every clue of a video: no clue may be forced into the one rank it fits.
@pytest.mark.parametrize("per_task", [2, 8])
def test_clue_time_options_do_not_give_the_answer_by_their_order_in_time(per_task):
    rates, total = _trivial_rule_rates("clue_time", per_task)
    assert total > 600
    for rule in ("earliest", "latest"):
        assert abs(rates[rule] - 0.25) < 0.05, (rule, rates)


@pytest.mark.parametrize("per_task", [2, 8])
def test_next_event_distractors_share_as_many_words_as_the_answer(per_task):
    rates, total = _trivial_rule_rates("next_event", per_task)
    assert total > 600
    assert abs(rates["overlap"] - 0.25) < 0.05, rates


def test_every_task_has_at_least_five_distinct_wordings():
    """Issue 19: varied wording. Each task's question has five or more templates, each answer line
    five or more, and no two are the same text."""
    from stages.questions import ANSWER_LINES, TEMPLATES

    for name, wordings in {**TEMPLATES, **ANSWER_LINES}.items():
        assert len(wordings) >= 5 and len(set(wordings)) == len(wordings), name
