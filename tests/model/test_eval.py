"""`vico train` then `vico eval` end to end on tiny shards; needles and their placement."""

import json
import random
import types

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.cli import eval_main, train_main  # noqa: E402
from vico_pipeline.model.config import EvalConfig, ModelUserError, TrainConfig  # noqa: E402
from vico_pipeline.model.needle import haystack_with_needle, make_needle, needle_index  # noqa: E402


def test_needle_placement_and_rendering():
    assert [needle_index(9, d) for d in (0, 0.25, 0.5, 0.75, 1.0)] == [0, 2, 4, 6, 8]
    frames = haystack_with_needle(list("abcdef"), 8, 1.0, "N")
    assert len(frames) == 8 and frames[-1] == "N" and frames.count("N") == 1
    assert haystack_with_needle(list("ab"), 1, 0.5, "N") == ["N"]
    needle = make_needle(random.Random(0), 56)
    assert needle.image.shape == (56, 56, 3) and len(set(needle.options)) == 4
    assert needle.image.std() > 0  # something was drawn


def test_train_then_eval_end_to_end(tmp_path, tiny_model_config, version_dir):
    cfg = types.SimpleNamespace(
        model=tiny_model_config(),
        train=TrainConfig(cpu_threads=1, data=str(version_dir), output=str(tmp_path / "run"), max_steps=2, max_frames=4, checkpoint_every=1),
        eval=EvalConfig(cpu_threads=1, checkpoint=str(tmp_path / "run"), output=str(tmp_path / "eval"), needle_frames=[2, 4, 8],
                        needle_trials=1, ratios=[2, 4]),
    )
    assert train_main(cfg) == 0
    assert eval_main(cfg) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["vico_qa"]) == {"temporal_order", "counting"}
    assert all(0.0 <= a <= 1.0 for a in results["vico_qa"].values())
    methods = {c["method"] for c in results["needle"]}
    assert methods == {"vst-r2", "vst-r4", "intp", "uniform"}
    assert len(results["needle"]) == 4 * 3 * 5
    for cell in results["needle"]:
        assert {"method", "frames", "depth", "accuracy", "peak_memory_bytes", "seconds"} <= set(cell)
        assert (cell["task"], cell["style"], cell["scoring"]) == ("retrieval", "frame", "letter")  # the defaults
    mem = {(c["method"], c["frames"]): c["peak_memory_bytes"] for c in results["needle"]}
    assert mem[("vst-r4", 8)] < mem[("vst-r2", 8)] < mem[("intp", 8)]  # compression keeps less
    assert mem[("uniform", 8)] == mem[("uniform", 4)]  # subsampled to the 4 training frames
    for m in methods:
        assert (tmp_path / "eval" / f"needle_{m}.png").stat().st_size > 0


def test_eval_without_checkpoint_is_a_user_error(tmp_path):
    from vico_pipeline.model.evaluate import run_eval

    with pytest.raises(ModelUserError, match="no checkpoint"):
        run_eval(EvalConfig(cpu_threads=1, checkpoint=str(tmp_path / "none"), output=str(tmp_path / "eval")))


def test_rotated_options_count_only_when_all_rotations_are_right(monkeypatch):
    from vico_pipeline.model import evaluate
    from vico_pipeline.model.needle import Needle

    needle = Needle(image=None, question="q", options=["w", "x", "y", "z"], answer_index=2)
    seen = []

    class FakeEv:
        model = types.SimpleNamespace(decoder=types.SimpleNamespace(dims=None))

        def memory(self, *a):
            return types.SimpleNamespace(kv=[])

        def pixels(self, frames):
            return frames

        def letter(self, memory, question, options, rope_base):
            seen.append(options)
            return options.index("y") if always_right else 0

    always_right = True
    ok, _ = evaluate.run_cell(FakeEv(), {"kind": "vst", "ratio": 2}, [], needle, 4, 10)
    assert ok and seen == [["w", "x", "y", "z"], ["x", "y", "z", "w"], ["y", "z", "w", "x"], ["z", "w", "x", "y"]]
    always_right = False  # always "A": right once (when "y" comes first), so not right
    assert not evaluate.run_cell(FakeEv(), {"kind": "vst", "ratio": 2}, [], needle, 4, 10)[0]
    assert evaluate.run_cell(FakeEv(), {"kind": "vst", "ratio": 2}, [], needle, 4, 10, rotate=False)[0] is False
