"""bench/leakage.py: trivial-rule accuracy, cross-turn leakage and letter balance; the real demo
version has no cross-turn leakage, one question a sample and under the trainer's packing."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pyarrow.parquet as pq

from bench.leakage import (leaked_turns, leakage, letter_balance, measure, off_chance, one_per_sample,
                           rule_accuracy, task_order_packing, template_balance)
from tests.conftest import REPO


def q(qid, task, options, answer, question="Which one?", evidence=("v-00001", "v-00002")):
    return {"question_id": qid, "video_id": qid.split("-")[0], "task": task, "question": question,
            "options": options, "answer_index": answer, "evidence_clip_ids": list(evidence)}


def test_rules_score_chance_on_ties_and_catch_cues():
    longest_right = [q(f"v-n{i}", "next_event", ["a", "bb", "a much longer event text", "cc"], 2) for i in range(4)]
    times = ["00:10–00:24", "01:10–01:24", "02:10–02:24", "03:10–03:24"]
    latest_right = [q(f"v-t{i}", "clue_time", times, 3) for i in range(4)]
    order = [q(f"v-e{i}", "event_order", ["1, 2, 3", "2, 1, 3", "3, 1, 2", "2, 3, 1"], 1 + i % 3) for i in range(6)]
    acc = rule_accuracy(longest_right + latest_right + order)
    assert acc["next_event"]["longest"] == 1.0 and acc["next_event"]["shortest"] == 0.0
    assert acc["next_event"]["earliest"] is None  # no times in these options
    assert acc["clue_time"]["latest"] == 1.0 and acc["clue_time"]["earliest"] == 0.0
    assert acc["clue_time"]["longest"] == 0.25  # all the same length: a uniform guess, chance
    assert acc["event_order"]["never_identity"] == round(1 / 3, 4)  # identity never right: 1/3, not 1/4
    # Far below chance is a tell too (the inverse rule wins): both directions are flagged.
    assert sorted(off_chance(acc)) == ["clue_time/earliest", "clue_time/latest", "event_order/identity",
                                       "event_order/never_identity", "next_event/longest", "next_event/shortest"]


def test_least_overlap_is_measured_and_flagged():
    """The tell of issue 19: the truth shares the FEWEST words with the question."""
    rows = [q(f"v-o{i}", "next_event", ["a red car drives", "a red car stops", "a blue bird sings", "a red car parks"],
              2, question='What comes next after "a red car turns"?') for i in range(8)]
    acc = rule_accuracy(rows)
    assert acc["next_event"]["least_overlap"] == 1.0 and acc["next_event"]["most_overlap"] == 0.0
    assert {"next_event/least_overlap", "next_event/most_overlap"} <= set(off_chance(acc))


def test_a_wording_that_tells_the_letter_is_found():
    # The wording q0 always goes with (D); q1 and q2 with every letter in turn.
    rows = [dict(q(f"v-w{i}", "at_time", ["a", "b", "c", "d"], 3 if i < 8 else i % 4), template_id=f"at_time.q{i // 8}")
            for i in range(24)]
    balance = template_balance(rows)["at_time"]
    assert balance["templates"] == 3 and balance["chance"] == 0.25
    assert balance["template_rule"] > 0.25 + 0.05  # 8 of 24 always right, the others at most by a tie
    fair = [dict(r, template_id=f"at_time.q{i % 3}", answer_index=i % 4) for i, r in enumerate(rows)]
    assert template_balance(fair)["at_time"]["template_rule"] <= 0.25 + 0.05


def test_leakage_finds_answers_given_by_earlier_turns():
    order = q("v-event_order-01", "event_order", ["1, 2, 3"] * 4, 0, evidence=("v-00001", "v-00004", "v-00007"))
    pair = q("v-before_after-01", "before_after", ["before", "after"], 0, evidence=("v-00001", "v-00007"))
    chained = [q("v-before_after-02", "before_after", ["before", "after"], 0, evidence=("v-00002", "v-00003")),
               q("v-before_after-03", "before_after", ["before", "after"], 1, evidence=("v-00003", "v-00005")),
               q("v-before_after-04", "before_after", ["before", "after"], 0, evidence=("v-00002", "v-00005"))]
    timed = [q("v-clue_time-01", "clue_time", ["x"] * 4, 0, evidence=("v-00004",)),
             q("v-clue_time-02", "clue_time", ["x"] * 4, 0, evidence=("v-00004",))]
    assert leaked_turns([order, pair]) == [False, True]  # the order answered the pair
    assert leaked_turns([pair, order]) == [False, False]  # one pair does not give a 3-event order
    assert leaked_turns(chained) == [False, False, True]  # 2 < 3 < 5 gives 2 < 5
    assert leaked_turns(timed) == [False, True]
    questions = [order, pair] + chained + timed
    assert leakage(questions, one_per_sample)["all"] == 0.0
    old = leakage(questions, task_order_packing)  # every question in one conversation, tasks in order
    assert old["before_after"] == 0.5 and old["clue_time"] == 0.5


def test_letter_balance():
    rows = [q(f"v-c{i}", "clue_time", ["w", "x", "y", "z"], i % 4) for i in range(8)] + \
        [q(f"v-b{i}", "before_after", ["before", "after"], 0) for i in range(3)]
    balance = letter_balance(rows)
    assert balance["clue_time"] == {"counts": {"A": 2, "B": 2, "C": 2, "D": 2}, "max_deviation": 0.0}
    assert balance["before_after"]["max_deviation"] == 0.5


def test_a_real_version_has_no_cross_turn_leakage(tmp_path_factory):
    from tests.test_versions_support import demo_version, read_table
    from vico_pipeline.samples import pack_questions

    version = demo_version(tmp_path_factory)
    questions = read_table(version, "questions").to_pylist()
    assert len(questions) >= 4
    result = measure(questions)
    assert result["leakage"]["one_per_sample"]["all"] == 0.0
    assert result["leakage"]["pack_questions"]["all"] == 0.0  # train.pack_questions: true
    # What the trainer reads: shard rows, one question a sample, or packed by the trainer's packing.
    rows = pq.read_table(os.path.join(version, "shards")).to_pylist()
    assert sum(len(r["questions"]) for r in rows) == len(questions)
    by_video = {q["video_id"]: q for q in questions}
    for row in rows:  # each shard row says which engines made it, as its questions do
        assert (row["caption_engine"], row["clue_engine"]) == ("describe", "template")
        assert all(row[k] == by_video[row["video_id"]][k] for k in ("caption_model", "clue_model"))
    rng = random.Random(0)
    packs = []
    for row in rows:
        assert all(len(s["conversations"]) == 2 for s in row["questions"])  # one question, two turns
        packs += pack_questions(row["questions"], rng)
    assert sum(len(p) for p in packs) == len(questions) and max(len(p) for p in packs) >= 2
    assert not any(any(leaked_turns(p)) for p in packs)


def test_leakage_command_on_a_version(tmp_path_factory):
    from tests.test_versions_support import demo_version

    version = demo_version(tmp_path_factory)
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "leakage.py"), version, "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)["v1"]
    assert set(result) == {"questions", "rules", "off_chance", "worst_rule", "templates", "leakage", "letters"}
    assert result["leakage"]["one_per_sample"]["all"] == 0.0
    table = subprocess.run([sys.executable, os.path.join(REPO, "bench", "leakage.py"), version],
                           capture_output=True, text=True, cwd=REPO, timeout=300).stdout
    assert table.startswith("| version | task | n | chance | longest | shortest | most_overlap | least_overlap |")
