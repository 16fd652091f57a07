"""Training: one question a sample with its time header, the loss falls on a fixed batch, runs
resume exactly (and only with the same config or --resume), stand-in data is refused, progress
is printed, Ray Train runs two workers."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.config import ModelUserError, TrainConfig  # noqa: E402
from vico_pipeline.model.data import QuestionSamples, encode_conversation, train_tokenizer  # noqa: E402
from vico_pipeline.model.train import Schedule, run_training  # noqa: E402
from vico_pipeline.samples import format_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]


def _jpeg(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
    return buf.getvalue()


def question(vid: str, q: int, window: tuple[float, float] | None, answer: int = 0) -> dict:
    options = [COLORS[(q + j) % len(COLORS)] for j in range(4)]
    return {"question_id": f"{vid}-q{q}", "task": "clue_time", "options": options, "answer_index": answer,
            "evidence_clip_ids": [f"{vid}-{q:05d}"] if window else [],
            "evidence_windows_s": [list(window)] if window else [],
            "conversations": [{"from": "human", "value": f"<video>\nWhen is the {options[answer]} screen? ({q})\n"
                                                         "(A) a\n(B) b\n(C) c\n(D) d\nAnswer with the option's letter."},
                              {"from": "gpt", "value": f"({'ABCD'[answer]})"}]}


def write_shards(root, n_train=2, n_val=1, n_frames=8, questions_per_video=2, engines=("openai", "openai"),
                 engine_columns=True) -> Path:
    """A version folder with shards/{train,val} in the agreed format: one row a video, its frames with
    their times (one a second), and its questions, each with its evidence windows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            vid = f"{split}{i}"
            qs = [question(vid, q, (float(2 * q), float(2 * q + 2)), answer=(i + q) % 4) for q in range(questions_per_video)]
            row = {"video_id": vid, "duration_s": float(n_frames), "frames": [_jpeg(COLORS[(i + k) % 8]) for k in range(n_frames)],
                   "frame_times_s": [float(k) for k in range(n_frames)], "questions": qs, "split": split}
            if engine_columns:
                row |= {"caption_engine": engines[0], "caption_model": "m", "clue_engine": engines[1], "clue_model": "m"}
            rows.append(row)
        (root / "shards" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "shards" / split / "part-00000.parquet")
    return root


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_labels_only_on_answer_tokens():
    tok = train_tokenizer(["what came first", "the red one", "Which colour"], 300)
    conv = [{"from": "human", "value": "Intro <video>\nWhat came first?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "<video>\nAnd then?"}, {"from": "gpt", "value": "blue"}]
    s = encode_conversation(tok, conv, "sys")
    assert tok.decode(s.pre_ids).endswith("<|im_start|>user\nIntro ")
    answers = tok.decode([t for t, lab in zip(s.post_ids, s.labels) if lab != -100])
    assert answers == "red<|im_end|>blue<|im_end|>"
    assert "<video>" not in tok.decode(s.post_ids) and "And then?" in tok.decode(s.post_ids)


def test_one_question_a_sample_with_evidence_frames_and_time_header(tmp_path):
    version = write_shards(tmp_path / "v1", n_train=2, n_frames=12, questions_per_video=4)
    samples = QuestionSamples(version, "train", max_frames=3)
    assert len(samples) == 8 and samples.dropped == 0
    for i in range(len(samples)):
        row, sample = samples[i]
        q = row["questions"][samples.refs[i].questions[0]]
        assert len(samples.refs[i].questions) == 1 and len(sample["frame_indices"]) == 3
        start, end = q["evidence_windows_s"][0]
        assert any(start <= t < end for t in sample["frame_times_s"])  # the evidence clip keeps a frame
        human = sample["conversations"][0]["value"]
        listed = ", ".join(format_time(t) for t in sample["frame_times_s"])
        assert human.startswith(f"<video>\nThe video lasts 00:12. Its 3 frames shown here were taken at {listed}.\n")
        assert human.endswith(q["conversations"][0]["value"].split("\n", 1)[1])
        assert len(sample["conversations"]) == 2


def test_question_whose_evidence_cannot_fit_is_dropped_and_counted(tmp_path):
    import pyarrow.parquet as pq

    version = write_shards(tmp_path / "v1", n_train=1, n_frames=6, questions_per_video=2)
    path = version / "shards" / "train" / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["questions"][1]["evidence_windows_s"] = [[20.0, 34.0]]  # after the last frame: no frame can show it
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    samples = QuestionSamples(version, "train", max_frames=4)
    assert len(samples) == 1 and samples.dropped == 1 and samples.questions == 2
    assert "1 of 2 questions dropped" in samples.summary() and "train.max_frames=4" in samples.summary()


def test_old_shards_without_questions_are_a_user_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "old" / "shards" / "train"
    folder.mkdir(parents=True)
    conversation = [{"from": "human", "value": "<video>\nQ1"}, {"from": "gpt", "value": "(A)"}]
    # The former layout: every question of a video in one conversation.
    pq.write_table(pa.Table.from_pylist([{"video_id": "a", "frames": [_jpeg("red")], "frame_times_s": [0.0],
                                          "conversations": conversation}]), folder / "part-00000.parquet")
    with pytest.raises(ModelUserError, match="no `questions` column.*rerun `vico run`"):
        QuestionSamples(tmp_path / "old", "train", 4)


def test_loss_falls_on_a_fixed_batch(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_train=1, n_val=1, n_frames=4, questions_per_video=1)
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=25, lr=1e-2, warmup_ratio=0.0,
                      checkpoint_every=100, max_frames=4)
    run = run_training(tiny_model_config(), cfg)
    loss = losses(run)
    assert len(loss) == 25
    assert sum(loss[-3:]) / 3 < 0.5 * loss[0], loss
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "step-0000025" / ".metadata").exists()


def test_progress_line_each_logged_step(tmp_path, tiny_model_config, capsys):
    version = write_shards(tmp_path / "v1", n_frames=4)
    run_training(tiny_model_config(), TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"),
                                                  max_steps=3, checkpoint_every=3, max_frames=4, lr=1e-3))
    err = capsys.readouterr().err.splitlines()
    assert "training samples: 4 (one question each) from 2 videos" in err
    lines = [line for line in err if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    for line in lines:
        words = line.split()
        assert words[2] == "loss" and float(words[3]) > 0
        assert words[4] == "lr" and float(words[5]) > 0
        assert words[6] == "frames/s" and float(words[7]) > 0
        assert words[8] == "ETA" and words[9].count(":") == 1
    assert lines[-1].endswith("ETA 00:00")


def test_resume_is_exact(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_train=3, n_frames=6)
    mcfg = tiny_model_config()
    common = dict(data=str(version), max_steps=6, lr=1e-3, grad_accum=2, checkpoint_every=3, max_frames=5)
    straight = run_training(mcfg, TrainConfig(cpu_threads=1, output=str(tmp_path / "a"), **common))
    interrupted = TrainConfig(cpu_threads=1, output=str(tmp_path / "b"), **common)
    run_training(mcfg, interrupted, stop_at=4)  # stops after step 4, last checkpoint at step 3
    assert len(losses(tmp_path / "b")) == 4
    resumed = run_training(mcfg, interrupted)
    assert losses(resumed) == losses(straight)
    assert [m["lr"] for m in metrics(resumed)] == [m["lr"] for m in metrics(straight)]
    from vico_pipeline.model.checkpoint import load_for_eval

    a = load_for_eval(straight / "checkpoints" / "step-0000006")[0].state_dict()
    b = load_for_eval(resumed / "checkpoints" / "step-0000006")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_workers_change_nothing_and_resume_stays_exact(tmp_path, tiny_model_config):
    """Samples made in two DataLoader worker processes: the same losses and weights as in-process
    loading, and a run stopped and resumed with workers equals the straight run."""
    from vico_pipeline.model.checkpoint import load_for_eval

    version = write_shards(tmp_path / "v1", n_train=3, n_frames=6)
    mcfg = tiny_model_config()
    common = dict(cpu_threads=1, data=str(version), max_steps=5, lr=1e-3, grad_accum=2, checkpoint_every=2, max_frames=5)
    in_process = run_training(mcfg, TrainConfig(output=str(tmp_path / "a"), **common))
    with_workers = TrainConfig(output=str(tmp_path / "b"), loader_workers=2, loader_prefetch=2, **common)
    run_training(mcfg, with_workers, stop_at=3)  # stops after step 3, last checkpoint at step 2
    resumed = run_training(mcfg, with_workers)
    assert len(losses(in_process)) == 5 and losses(resumed) == losses(in_process)
    a = load_for_eval(in_process / "checkpoints" / "step-0000005")[0].state_dict()
    b = load_for_eval(resumed / "checkpoints" / "step-0000005")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_config_is_refused_unless_resume_and_lr_goes_on(tmp_path, tiny_model_config, capsys):
    version = write_shards(tmp_path / "v1", n_frames=4)
    mcfg = tiny_model_config()
    first = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=8, lr=1e-3,
                        warmup_ratio=0.1, checkpoint_every=4, max_frames=4)
    run_training(mcfg, first, stop_at=4)  # checkpoint at step 4 of 8
    longer = first.model_copy(update={"max_steps": 12})
    with pytest.raises(ModelUserError) as refused:
        run_training(mcfg, longer)
    message = str(refused.value)
    assert "train.max_steps: 8 -> 12" in message and "new train.output" in message and "--resume" in message
    assert len(metrics(tmp_path / "run")) == 4  # nothing was touched
    capsys.readouterr()

    run = run_training(mcfg, longer.model_copy(update={"resume": True}))
    assert "from its step-4 checkpoint under a changed config (train.max_steps: 8 -> 12)" in capsys.readouterr().err
    lrs = [m["lr"] for m in metrics(run)]
    assert [m["step"] for m in metrics(run)] == list(range(1, 13))
    # Step 5 uses the rate the 8-step schedule had reached; from there it only falls, to near 0 at step 12.
    assert lrs[4] == pytest.approx(1e-3 * Schedule(1, 8).factor(4))
    assert lrs[4] < 1e-3 * Schedule(2, 12).factor(4)  # what a fresh 12-step schedule would jump to
    assert all(b <= a for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05 * lrs[4]

    # The same config again: a finished run is said to be finished, nothing is trained.
    run_training(mcfg, longer.model_copy(update={"resume": True}))
    assert "already trained to step 12" in capsys.readouterr().err
    assert len(metrics(run)) == 12


def test_another_model_in_the_run_folder_is_refused(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_frames=4)
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=2, checkpoint_every=2, max_frames=4)
    run_training(tiny_model_config(), cfg)
    with pytest.raises(ModelUserError, match="another model .*model.hidden_size: 32 -> 64.*new train.output"):
        run_training(tiny_model_config(hidden_size=64), cfg.model_copy(update={"resume": True}))


def test_stand_in_data_is_refused_unless_allowed(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_frames=4, engines=("describe", "template"))
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=1, checkpoint_every=1, max_frames=4)
    with pytest.raises(ModelUserError, match=r"stand-in engines \(describe, template\).*train.allow_stand_in_data=true"):
        run_training(tiny_model_config(), cfg)
    assert not (tmp_path / "run").exists()
    run = run_training(tiny_model_config(), cfg.model_copy(update={"allow_stand_in_data": True}))
    assert len(losses(run)) == 1


def test_stand_in_read_from_the_manifest_when_rows_do_not_say(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_frames=4, engine_columns=False)
    (version / "manifest.json").write_text(json.dumps({"status": "complete", "config": {
        "caption": {"engine": "openai"}, "clues": {"engine": "template"}}}))
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=1, max_frames=4)
    with pytest.raises(ModelUserError, match=r"stand-in engines \(template\)"):
        run_training(tiny_model_config(), cfg)


def test_vico_train_refuses_stand_in_data_in_one_line(tmp_path):
    version = write_shards(tmp_path / "v1", n_frames=4, engines=("describe", "template"))
    config = tmp_path / "train.yaml"
    config.write_text(f"train:\n  data: {version}\n  output: {tmp_path / 'run'}\n  max_steps: 1\n")
    done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "train", str(config)], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "stand-in engines (describe, template)" in lines[0] and "Traceback" not in done.stderr


def test_missing_shards_is_a_user_error(tmp_path, tiny_model_config):
    with pytest.raises(ModelUserError, match="no shards"):
        run_training(tiny_model_config(), TrainConfig(cpu_threads=1, data=str(tmp_path / "nope"), output=str(tmp_path / "run")))


def test_ray_train_two_workers(tmp_path, tiny_model_config, monkeypatch):
    version = write_shards(tmp_path / "v1", n_train=3, n_frames=6)
    monkeypatch.chdir(tmp_path)  # relative paths, as a config file has them; workers run elsewhere
    cfg = TrainConfig(cpu_threads=1, data=str(version.relative_to(tmp_path)), output="run", max_steps=3, lr=1e-3,
                      checkpoint_every=3, max_frames=4, workers=2)
    run = run_training(tiny_model_config(), cfg)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(m["workers"] == 2 for m in lines)
    assert (run / "checkpoints" / "step-0000003" / "done").exists()


def test_prepare_sample_feeds_exactly_the_frames_its_header_names(tmp_path, tiny_model_config):
    import random

    from vico_pipeline.model.checkpoint import build_model
    from vico_pipeline.model.data import ShardRows
    from vico_pipeline.model.loader import FrameLayout, prepare_sample
    from vico_pipeline.model.vision import frames_to_pixels

    version = write_shards(tmp_path / "v1", n_train=1, n_frames=12, questions_per_video=3)
    samples = QuestionSamples(version, "train", max_frames=5)
    tok = train_tokenizer(ShardRows(version, "train").texts(), 384)
    mcfg = tiny_model_config()
    model = build_model(mcfg, tok.eos_token_id)
    for i in range(len(samples)):
        row, sample = samples[i]
        s = prepare_sample(row, sample, tok, FrameLayout.of(model), mcfg.system_prompt, 1024, [2, 4], random.Random(0))
        assert s["pixels"].shape[0] == len(sample["frame_indices"]) == 5
        expected = frames_to_pixels([row["frames"][k] for k in sample["frame_indices"]], model.vision.image_size)
        assert torch.equal(s["pixels"], expected)
        text = tok.decode(s["post_ids"][0].tolist())
        times = ", ".join(format_time(t) for t in sample["frame_times_s"])
        assert text.startswith(f"\nThe video lasts 00:12. Its 5 frames shown here were taken at {times}.\n")


def test_shard_rows_read_by_row_group_across_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vico_pipeline.model.data import ShardRows

    folder = tmp_path / "shards" / "train"
    folder.mkdir(parents=True)
    ids = [f"v{i}" for i in range(7)]
    table = lambda names: pa.Table.from_pylist([{"video_id": v, "frames": [b"x"], "questions": []} for v in names])  # noqa: E731
    pq.write_table(table(ids[:5]), folder / "part-00000.parquet", row_group_size=2)  # groups of 2, 2, 1
    pq.write_table(table(ids[5:]), folder / "part-00001.parquet")
    rows = ShardRows(tmp_path, "train")
    assert len(rows) == 7 and len(rows.groups) == 4
    assert [rows[i]["video_id"] for i in (6, 0, 3, 4, 1, 5, 2)] == ["v6", "v0", "v3", "v4", "v1", "v5", "v2"]
    with pytest.raises(IndexError):
        rows[7]


def test_resume_schedule_choices(tmp_path):
    """Which schedule a resumed run follows: its own, a continuation, a fresh one, or a refusal."""
    from vico_pipeline.model.schedule import resumed_schedule

    cfg = TrainConfig(max_steps=20, warmup_ratio=0.1)
    finished = Schedule.of(cfg)
    assert finished.factor(19) > 0 and finished.factor(20) == 0.0
    longer = cfg.model_copy(update={"max_steps": 30})
    with pytest.raises(ModelUserError, match="ended at step 20.*steps 21-30 would train nothing.*--new-schedule"):
        resumed_schedule(finished, 20, longer, tmp_path)
    fresh, how = resumed_schedule(finished, 20, longer.model_copy(update={"new_schedule": True}), tmp_path)
    assert "new schedule" in how and fresh.warmup == 1 and fresh.total == 30
    assert fresh.factor(20) == 1.0 and 0 < fresh.factor(25) < 1 and fresh.factor(30) == 0.0
    # An interrupted --new-schedule run resumes along that same new schedule, not a second one.
    assert resumed_schedule(fresh, 25, longer.model_copy(update={"new_schedule": True}), tmp_path)[0] == fresh
    # Unfinished: the rate goes on from where it was (no jump, no refusal).
    going_on, _ = resumed_schedule(finished, 10, longer, tmp_path)
    assert going_on.factor(10) == pytest.approx(finished.factor(10)) and going_on.factor(29) > 0
    # A horizon set from the start: resuming to it is the run's own schedule.
    horizon = cfg.model_copy(update={"schedule_steps": 30})
    own = Schedule.of(horizon)
    assert own.factor(19) > 0 and resumed_schedule(own, 20, horizon.model_copy(update={"max_steps": 30}), tmp_path)[0] == own
    with pytest.raises(ValueError, match="schedule_steps=10 is below train.max_steps=20"):
        TrainConfig(max_steps=20, schedule_steps=10)


def test_schedule_steps_make_an_extended_run_equal_a_straight_one(tmp_path, tiny_model_config):
    version = write_shards(tmp_path / "v1", n_frames=4)
    mcfg = tiny_model_config()
    common = dict(cpu_threads=1, data=str(version), lr=1e-3, warmup_ratio=0.2, checkpoint_every=2, max_frames=4,
                  schedule_steps=6)
    straight = run_training(mcfg, TrainConfig(output=str(tmp_path / "a"), max_steps=6, **common))
    short = TrainConfig(output=str(tmp_path / "b"), max_steps=4, **common)
    run_training(mcfg, short)
    assert metrics(tmp_path / "b")[-1]["lr"] > 0  # stopped before its horizon: the rate is not 0
    extended = run_training(mcfg, short.model_copy(update={"max_steps": 6, "resume": True}))
    assert losses(extended) == losses(straight)
    assert [m["lr"] for m in metrics(extended)] == [m["lr"] for m in metrics(straight)]
