"""Needle tasks (retrieval, ordering, counting), styles (inserted frame, text bar) and scoring
(generated letter with rotations, teacher-forced exact match), down to a tiny real eval run."""

import io
import json
import types
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model import evaluate, needle  # noqa: E402
from vico_pipeline.model.config import EvalConfig, TrainConfig  # noqa: E402
from vico_pipeline.model.needle import (  # noqa: E402
    Needle, insert_frames, make_needles, needle_index, needle_starts, place)


def haystack(n=5):
    return [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(n)]


def test_insertion_index_rule():
    # One needle: int(depth * (T - 1)); several: the first at int(depth * (T - footprint)),
    # the rest spread after it, the last one ending on the last frame.
    assert [needle_index(9, d) for d in (0, 0.25, 0.5, 0.75, 1.0)] == [0, 2, 4, 6, 8]
    assert needle_starts(10, 0.0, 4) == [0, 3, 6, 9]
    assert needle_starts(10, 1.0, 4) == [6, 7, 8, 9]
    assert needle_starts(10, 0.5, 4) == [3, 5, 7, 9]
    assert needle_starts(11, 0.7, 4, span=2, gap=1) == [0, 3, 6, 9]  # footprint 11: no room left
    assert needle_starts(10, 0.0, 4, span=2, gap=1) is None
    frames = insert_frames(list("abcdef"), 10, 0.5, ["W", "X", "Y", "Z"])
    assert [i for i, f in enumerate(frames) if f in "WXYZ"] == [3, 5, 7, 9]
    assert [f for f in frames if f not in "WXYZ"] == list("abcdef")  # the haystack keeps its order


def test_bar_needle_edits_exactly_k_frames_in_place():
    hay = haystack()
    n = make_needles("retrieval", 1, seed=0, size=56)[0]
    for k, depth in ((1, 0.0), (3, 0.5), (3, 1.0)):
        frames = place(n, hay, 8, depth, style="bar", bar_frames=k)
        assert len(frames) == 8  # edited in, not inserted
        sampled = [hay[i] for i in needle.spread(len(hay), 8)]
        edited = [i for i, (f, s) in enumerate(zip(frames, sampled)) if f is not s]
        start = needle_starts(8, depth, 1, k)[0]
        assert edited == list(range(start, start + k))
        assert all(frames[i].shape == (48, 64, 3) and (frames[i] != sampled[i]).any() for i in edited)
    # JPEG bytes (what the shards hold) are decoded and drawn on as well.
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, format="JPEG")
    assert needle.draw_bar(buf.getvalue(), "The secret word is apple").shape == (48, 64, 3)


def placed_values(n: Needle, frames: list) -> list[str]:
    """The needle values in the order they occur in frames placed in the inserted-frame style."""
    return [n.values[[id(i) for i in n.images].index(id(f))] for f in frames if any(f is i for i in n.images)]


def test_ordering_answer_is_the_true_order_and_options_are_permutations(monkeypatch):
    monkeypatch.setattr(needle, "draw_bar", lambda frame, text: text)  # a bar frame becomes its text
    for n in make_needles("ordering", 20, seed=1, size=32):
        assert len(set(n.options)) == 4 and len(set(n.values)) == 4
        assert all(sorted(o.split(", ")) == sorted(n.values) for o in n.options)
        truth = placed_values(n, place(n, haystack(), 12, 0.25, "frame"))
        assert len(truth) == 4 and n.options[n.answer_index] == ", ".join(truth)
        bars = [f for f in place(n, haystack(), 12, 0.25, "bar", 2) if isinstance(f, str)]
        assert [b.rsplit(" ", 1)[1] for b in bars[::2]] == truth  # two frames per bar


def test_counting_answer_is_the_number_of_copies(monkeypatch):
    monkeypatch.setattr(needle, "draw_bar", lambda frame, text: text)
    counts = set()
    for n in make_needles("counting", 20, seed=2, size=32):
        count = int(n.options[n.answer_index])
        counts.add(count)
        assert len(set(n.options)) == 4 and all(o.isdigit() for o in n.options)
        frames = place(n, haystack(), 12, 0.5, "frame")
        at = [i for i, f in enumerate(frames) if f is n.images[0]]
        assert len(at) == count and all(b - a >= 2 for a, b in zip(at, at[1:]))  # copies never run together
        bars = [i for i, f in enumerate(place(n, haystack(), 12, 0.5, "bar", 2)) if isinstance(f, str)]
        assert len(bars) == 2 * count
    assert len(counts) > 1


@pytest.mark.parametrize("task", ["retrieval", "ordering", "counting"])
def test_answer_letters_are_spread_evenly(task):
    letters = Counter(n.answer_index for n in make_needles(task, 200, seed=3, size=16))
    assert set(letters) == {0, 1, 2, 3} and min(letters.values()) >= 30


class ToyModel:
    """read() predicts every next token right, except after the last "(" where it says `letter`."""

    def __init__(self, letter=None):
        self.letter = letter

    def read(self, memory, ids, rope_base=None, extend=True):
        ids = ids[0].tolist()
        nxt = ids[1:] + [0]
        if self.letter is not None:
            nxt[max(i for i, t in enumerate(ids) if t == ord("("))] = ord(self.letter)
        return torch.nn.functional.one_hot(torch.tensor([nxt]), 128).float(), None


def toy_evaluator(letter=None):
    tok = lambda text, add_special_tokens=False: {"input_ids": [ord(c) % 128 for c in text]}  # noqa: E731
    return evaluate.Evaluator(ToyModel(letter), tok, types.SimpleNamespace(system_prompt="s"), torch.device("cpu"))


def test_teacher_forced_scoring_on_a_toy_whose_argmax_is_set():
    options = ["w", "x", "y", "z"]
    assert toy_evaluator().teacher_forced(None, "q", options, 2)  # argmax = the answer everywhere
    assert toy_evaluator("C").teacher_forced(None, "q", options, 2)
    assert not toy_evaluator("A").teacher_forced(None, "q", options, 2)  # one answer position wrong
    n = Needle(image=None, question="q", options=options, answer_index=0)
    always_a = toy_evaluator("A")
    assert evaluate.score(always_a, None, n, rotate=False, scoring="teacher_forced")
    assert not evaluate.score(always_a, None, n, rotate=True, scoring="teacher_forced")  # only 1 of 4 rotations
    assert evaluate.score(toy_evaluator(), None, n, rotate=True, scoring="teacher_forced")


def test_config_takes_one_style_or_a_list():
    cfg = EvalConfig(needle_style="bar", needle_scoring=["letter", "teacher_forced"])
    assert cfg.needle_style == ["bar"] and cfg.needle_tasks == ["retrieval"]
    for bad in ({"needle_tasks": ["search"]}, {"needle_style": "subtitle"}, {"needle_scoring": []},
                {"needle_bar_frames": 0}):
        with pytest.raises(ValueError):
            EvalConfig(**bad)


def test_eval_runs_every_task_style_and_scoring(tmp_path, tiny_model_config, version_dir):
    from vico_pipeline.model.cli import eval_main, train_main

    cfg = types.SimpleNamespace(
        model=tiny_model_config(),
        train=TrainConfig(cpu_threads=1, data=str(version_dir), output=str(tmp_path / "run"), max_steps=1, max_frames=4,
                          checkpoint_every=1),
        eval=EvalConfig(cpu_threads=1, checkpoint=str(tmp_path / "run"), output=str(tmp_path / "eval"), max_val_samples=1,
                        generate_letter=False, methods=["vst"], ratios=[2], needle_frames=[4, 12], needle_depths=[0.0, 1.0],
                        needle_trials=1, needle_tasks=["retrieval", "ordering", "counting"], needle_style=["frame", "bar"],
                        needle_scoring=["letter", "teacher_forced"], needle_bar_frames=2),
    )
    assert train_main(cfg) == 0
    assert eval_main(cfg) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    cells = results["needle"]
    keys = {(c["method"], c["task"], c["style"], c["scoring"], c["frames"], c["depth"]) for c in cells}
    assert len(cells) == len(keys) == 3 * 2 * 2 * 2 * 2
    for c in cells:
        assert {"method", "frames", "depth", "accuracy", "peak_memory_bytes", "seconds"} <= set(c)
        assert (c["accuracy"] is None) == ("skipped" in c)
        assert c["accuracy"] is None or 0.0 <= c["accuracy"] <= 1.0
    assert all(c["accuracy"] is not None for c in cells if c["frames"] == 12)  # 12 frames hold every task
    assert all(c["skipped"] == "needs 8 frames" for c in cells if c["task"] == "ordering" and c["style"] == "bar"
               and c["frames"] == 4)
    pairs = Counter((c["task"], c["style"], c["frames"], c["depth"], c["peak_memory_bytes"]) for c in cells)
    assert set(pairs.values()) == {2}  # both scorings read the same memory
    assert results["needle_setup"]["scorings"] == ["letter", "teacher_forced"]
    assert results["heatmaps"] == ["needle_vst-r2.png", "needle_vst-r2_ordering.png", "needle_vst-r2_counting.png"]
    for name in results["heatmaps"]:
        assert (tmp_path / "eval" / name).stat().st_size > 0
