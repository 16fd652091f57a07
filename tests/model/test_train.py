"""Training: the loss falls on a fixed batch, runs resume exactly, Ray Train runs two workers."""

import json

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.config import ModelUserError, TrainConfig  # noqa: E402
from vico_pipeline.model.data import encode_conversation, train_tokenizer  # noqa: E402
from vico_pipeline.model.train import run_training  # noqa: E402


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_labels_only_on_answer_tokens():
    tok = train_tokenizer(["what came first", "the red one", "Which colour"], 300)
    conv = [{"from": "human", "value": "Intro <video>\nWhat came first?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "<video>\nAnd then?"}, {"from": "gpt", "value": "blue"}]
    s = encode_conversation(tok, conv, "sys")
    assert tok.decode(s.pre_ids).endswith("<|im_start|>user\nIntro ")
    answers = tok.decode([t for t, lab in zip(s.post_ids, s.labels) if lab != -100])
    assert answers == "red<|im_end|>blue<|im_end|>"
    assert "<video>" not in tok.decode(s.post_ids) and "And then?" in tok.decode(s.post_ids)


def test_loss_falls_on_a_fixed_batch(tmp_path, tiny_model_config, make_version):
    version = make_version(tmp_path / "v1", n_train=1, n_val=1, n_frames=4)
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=25, lr=1e-2, warmup_ratio=0.0,
                      checkpoint_every=100, max_frames=4)
    run = run_training(tiny_model_config(), cfg)
    loss = losses(run)
    assert len(loss) == 25
    assert sum(loss[-3:]) / 3 < 0.5 * loss[0], loss
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "step-0000025" / "model.safetensors").exists()


def test_resume_is_exact(tmp_path, tiny_model_config, version_dir):
    mcfg = tiny_model_config()
    common = dict(data=str(version_dir), max_steps=6, lr=1e-3, grad_accum=2, checkpoint_every=3, max_frames=5)
    straight = run_training(mcfg, TrainConfig(cpu_threads=1, output=str(tmp_path / "a"), **common))
    interrupted = TrainConfig(cpu_threads=1, output=str(tmp_path / "b"), **common)
    run_training(mcfg, interrupted, stop_at=4)  # stops after step 4, last checkpoint at step 3
    assert len(losses(tmp_path / "b")) == 4
    resumed = run_training(mcfg, interrupted)
    assert losses(resumed) == losses(straight)
    from safetensors.torch import load_file

    a = load_file(str(straight / "checkpoints" / "step-0000006" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_shards_is_a_user_error(tmp_path, tiny_model_config):
    with pytest.raises(ModelUserError, match="no shards"):
        run_training(tiny_model_config(), TrainConfig(cpu_threads=1, data=str(tmp_path / "nope"), output=str(tmp_path / "run")))


def test_ray_train_two_workers(tmp_path, tiny_model_config, version_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as a config file has them; workers run elsewhere
    cfg = TrainConfig(cpu_threads=1, data=str(version_dir.relative_to(tmp_path)), output="run", max_steps=3, lr=1e-3,
                      checkpoint_every=3, max_frames=4, workers=2)
    run = run_training(tiny_model_config(), cfg)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(m["workers"] == 2 for m in lines)
    assert (run / "checkpoints" / "step-0000003" / "done").exists()
