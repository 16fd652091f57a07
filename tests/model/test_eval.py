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
        assert {"method", "frames", "depth", "accuracy", "peak_memory_bytes", "seconds", "prefill_seconds",
                "answer_seconds", "chance", "rope_base", "status"} <= set(cell)
        assert (cell["task"], cell["style"], cell["scoring"]) == ("retrieval", "frame", "letter")  # the defaults
        # 8 tiny frames fit the default trained context (32768): INTP reads them with the model's own base.
        assert cell["status"] == "ok" and cell["chance"] == 1 / 256 and cell["rope_base"] == 10000.0
    assert results["vico_qa_chance"] == {"temporal_order": 0.25, "counting": 0.25}
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
        model = types.SimpleNamespace(decoder=types.SimpleNamespace(dims=types.SimpleNamespace(rope_theta=1e6)))

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


# --- one prefill, many answers; a grid that survives out-of-memory cells ------------------------

def tiny_checkpoint(run_dir, mcfg):
    """A saved checkpoint of a random tiny model, without a training run (eval is what is tested)."""
    from vico_pipeline.model.checkpoint import build_model, save_checkpoint
    from vico_pipeline.model.data import train_tokenizer

    tok = train_tokenizer(["Which colour came first? red green blue yellow white black orange purple",
                           "Which word was shown in the video? apple river piano tiger"], mcfg.vocab_size)
    model = build_model(mcfg, tok.eos_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    save_checkpoint(run_dir, 1, model, opt, sched, {"step": 1}, mcfg, tok)
    return run_dir


@pytest.mark.parametrize("spec", [{"kind": "vst", "ratio": 2}, {"kind": "intp"}, {"kind": "uniform", "ratio": 2}])
def test_answers_from_one_prefill_equal_a_fresh_prefill_per_question(tmp_path, tiny_model_config, spec):
    import numpy as np

    from vico_pipeline.model import evaluate
    from vico_pipeline.model.checkpoint import load_for_eval
    from vico_pipeline.model.needle import make_needles, place

    # max_position_embeddings 16: INTP's 8 frames (32 tokens + text) get a scaled RoPE base.
    model, tok, mcfg, _ = load_for_eval(tiny_checkpoint(tmp_path / "run", tiny_model_config(max_position_embeddings=16)))
    ev = evaluate.Evaluator(model, tok, mcfg, torch.device("cpu"))
    needle = make_needles("retrieval", 1, seed=0, size=56)[0]
    frames = place(needle, [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(6)], 8, 0.5)
    shared, rope_base = evaluate.method_memory(ev, spec, frames, 4, 30)
    assert (rope_base > model.decoder.dims.rope_theta) == (spec["kind"] == "intp")
    for scoring in ("letter", "teacher_forced"):
        once = evaluate.answers(ev, shared, needle, rope_base, rotate=True, scoring=scoring)
        fresh = []
        for options, gold in evaluate.rotations(needle, rotate=True):
            memory, base = evaluate.method_memory(ev, spec, frames, 4, 30)  # a new prefill for this question alone
            fresh.append(ev.teacher_forced(memory, needle.question, options, gold, base) if scoring == "teacher_forced"
                         else ev.letter(memory, needle.question, options, base))
            ids = ev.tensor(ev.prompt_ids(needle.question, options))
            assert torch.equal(model.read(shared, ids, rope_base)[0], model.read(memory, ids, base)[0])
        assert once == fresh and len(once) == 4


def test_needle_grid_survives_oom_writes_each_cell_and_resumes(tmp_path, tiny_model_config, version_dir, monkeypatch):
    from vico_pipeline.model import evaluate

    run = tiny_checkpoint(tmp_path / "run", tiny_model_config())
    out = tmp_path / "eval"
    ecfg = EvalConfig(cpu_threads=1, checkpoint=str(run), data=str(version_dir), output=str(out), train_frames=4,
                      generate_letter=False, methods=["vst", "intp"], ratios=[2], needle_frames=[4, 8],
                      needle_depths=[0.0, 1.0], needle_trials=1)
    real_memory, calls = evaluate.method_memory, []

    def fake_oom_at_8_intp_frames(ev, spec, frames, *a):
        calls.append((spec["kind"], len(frames)))
        written = json.loads((out / "results.json").read_text())["needle"]
        assert len(written) == len(calls) - 1  # every earlier cell is already on disk
        if spec["kind"] == "intp" and len(frames) == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB (GPU 0; 79.1 GiB total)")
        return real_memory(ev, spec, frames, *a)

    import matplotlib.figure

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda fig, text, **kw: titles.append(text))
    monkeypatch.setattr(evaluate, "method_memory", fake_oom_at_8_intp_frames)
    evaluate.run_eval(ecfg)
    assert titles == ["needle retrieval: vst-r2; chance 0.39% (1/256)", "needle retrieval: intp; chance 0.39% (1/256)"]
    results = json.loads((out / "results.json").read_text())
    cells = results["needle"]
    assert len(cells) == 2 * 2 * 2 and len(calls) == 8  # the grid went on after the out-of-memory cells
    contract = {"method", "frames", "depth", "accuracy", "chance", "peak_memory_bytes", "seconds", "prefill_seconds",
                "answer_seconds", "rope_base", "status"}
    for c in cells:
        assert contract <= set(c) and c["chance"] == 1 / 256
        oom = c["method"] == "intp" and c["frames"] == 8
        assert c["status"] == ("oom" if oom else "ok")
        if oom:
            assert c["accuracy"] is None and c["memory_requested_bytes"] == int(3.5 * 2**30)
        else:
            assert 0 <= c["accuracy"] <= 1 and c["prefill_seconds"] > 0 and c["answer_seconds"] > 0
            assert c["seconds"] == pytest.approx(c["prefill_seconds"] + 4 * c["answer_seconds"], abs=1e-3)
    intp = [c for c in cells if c["method"] == "intp"]
    grid, marked = evaluate.panel(intp, [4, 8], [0.0, 1.0])
    assert marked == [(0, 1), (1, 1)] and all(g != g for g in (grid[0][1], grid[1][1]))  # OOM: marked, not 0%
    assert results["heatmaps"] == ["needle_vst-r2.png", "needle_intp.png"] and (out / "needle_intp.png").stat().st_size
    # VICO QA: one prefill per val video for its two questions; the chance level per task.
    assert results["vico_qa_chance"] == {"temporal_order": 0.25, "counting": 0.25}
    assert results["vico_qa_timing"]["videos"] == 2 and results["vico_qa_timing"]["questions"] == 4

    # A rerun of the same setup recomputes nothing; with retry_oom it runs only the out-of-memory cells.
    calls.clear()
    evaluate.run_eval(ecfg)
    assert calls == [] and json.loads((out / "results.json").read_text())["needle"] == cells
    monkeypatch.setattr(evaluate, "method_memory", lambda ev, spec, frames, *a: calls.append(len(frames)) or real_memory(ev, spec, frames, *a))
    evaluate.run_eval(ecfg.model_copy(update={"retry_oom": True}))
    again = json.loads((out / "results.json").read_text())["needle"]
    assert calls == [8, 8] and all(c["status"] == "ok" for c in again)
    assert [c for c in again if c["method"] != "intp" or c["frames"] != 8] == [c for c in cells if c["method"] != "intp" or c["frames"] != 8]


def test_vico_qa_frames_and_time_header_are_the_same_for_every_question():
    from vico_pipeline.model.evaluate import shown_frames

    frames, header = shown_frames({"frames": list("abcdefgh"), "frame_times_s": [float(t) for t in range(8)],
                                   "duration_s": 8.5}, 4)
    assert frames == ["b", "d", "f", "h"]
    assert header == "The video lasts 00:08. Its 4 frames shown here were taken at 00:01, 00:03, 00:05, 00:07."


def test_vico_qa_survives_an_out_of_memory_task(tmp_path, tiny_model_config, version_dir, monkeypatch):
    """An out-of-memory error while answering one task's questions is recorded for that task
    (status oom, no accuracy); the other task, and the needle grid, go on."""
    from vico_pipeline.model import evaluate

    run = tiny_checkpoint(tmp_path / "run", tiny_model_config())
    out = tmp_path / "eval"
    ecfg = EvalConfig(cpu_threads=1, checkpoint=str(run), data=str(version_dir), output=str(out), train_frames=4,
                      methods=["vst"], ratios=[2], needle_frames=[4], needle_depths=[0.0], needle_trials=1)
    real, asked = evaluate.Evaluator.likelihood, []

    def oom_on_counting(ev, memory, question, options, header=""):
        asked.append(question)
        if "(counting)" in question:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.25 GiB (GPU 0; 79.1 GiB total)")
        return real(ev, memory, question, options, header)

    monkeypatch.setattr(evaluate.Evaluator, "likelihood", oom_on_counting)
    evaluate.run_eval(ecfg)
    results = json.loads((out / "results.json").read_text())
    assert len(asked) == 4  # every question was tried: two videos, two tasks each
    assert results["vico_qa_status"] == {"temporal_order": "ok", "counting": "oom"}
    assert results["vico_qa_oom"] == {"counting": 2} and results["vico_qa_memory_requested_bytes"] == int(1.25 * 2**30)
    assert results["vico_qa"]["counting"] is None and results["vico_qa_letter"]["counting"] is None
    assert 0 <= results["vico_qa"]["temporal_order"] <= 1 and results["vico_qa_count"] == {"temporal_order": 2, "counting": 0}
    assert [c["status"] for c in results["needle"]] == ["ok"]  # the needle grid ran after it

    # A rerun keeps the QA part as it is; with retry_oom it answers the questions again.
    asked.clear()
    evaluate.run_eval(ecfg)
    assert asked == []
    monkeypatch.setattr(evaluate.Evaluator, "likelihood", real)
    evaluate.run_eval(ecfg.model_copy(update={"retry_oom": True}))
    again = json.loads((out / "results.json").read_text())
    assert again["vico_qa_status"] == {"temporal_order": "ok", "counting": "ok"} and again["vico_qa_oom"] == {}
    assert again["vico_qa"]["temporal_order"] == results["vico_qa"]["temporal_order"]
