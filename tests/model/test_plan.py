"""`vico train --plan`: the memory plan (computed on the meta device) against a measured CPU step,
and the plan for Qwen2-7B + CLIP-L/336 shapes (config.json files written here, no weights).

Measured bytes of a CPU step, as defined here: the bytes of the parameter, gradient and AdamW
state tensors after one optimizer step, plus the activations autograd keeps for the backward
pass at the end of the forward (distinct storages of the tensors that saved-tensor hooks see,
weights excluded; with activation checkpointing, a checkpointed layer keeps its inputs, seen by
forward pre-hooks). torch has no peak-memory counter on CPU, so transients are not in either."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.model.test_train import write_shards  # noqa: E402
from vico_pipeline.model.config import ModelConfig, TrainConfig  # noqa: E402
from vico_pipeline.model.plan import memory_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def measured_step(model, sample, checkpointing: bool) -> dict:
    """One real training step on CPU: bytes of parameters, gradients, optimizer state and saved activations."""
    from vico_pipeline.model.sharding import held_bytes
    from vico_pipeline.model.vision import encoder_of

    model.set_gradient_checkpointing(checkpointing)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def record(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
        elif isinstance(t, (list, tuple)):
            for x in t:
                record(x)

    def pack(t):
        record(t)
        return t

    hooks = [layer.register_forward_pre_hook(lambda m, args, kwargs: record([*args, *kwargs.values()]) if checkpointing
                                             and torch.is_grad_enabled() else None, with_kwargs=True)
             for layer in [*model.decoder.layers, *encoder_of(model.vision.tower).layers]]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(sample["pre_ids"], sample["pixels"], sample["post_ids"], sample["labels"], sample["ratios"])
    activations = sum(saved.values())
    for h in hooks:
        h.remove()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    loss.backward()
    optimizer.step()
    return held_bytes(model, optimizer) | {"activation_bytes": activations}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_is_within_15_percent_of_a_measured_cpu_step(tmp_path, tiny_model_config, checkpointing):
    from vico_pipeline.model.checkpoint import build_model
    from vico_pipeline.model.data import QuestionSamples, ShardRows, train_tokenizer
    from vico_pipeline.model.loader import FrameLayout, prepare_sample

    version = write_shards(tmp_path / "v1", n_train=1, n_frames=16, questions_per_video=1)
    mcfg = tiny_model_config()
    tcfg = TrainConfig(max_frames=16, activation_checkpointing=checkpointing)
    tok = train_tokenizer(ShardRows(version, "train").texts(), mcfg.vocab_size)
    row, sample = QuestionSamples(version, "train", tcfg.max_frames)[0]
    model = build_model(mcfg, tok.eos_token_id)
    s = prepare_sample(row, sample, tok, FrameLayout.of(model), mcfg.system_prompt, tcfg.max_text_tokens, mcfg.ratios,
                       random.Random(3))
    assert s["pixels"].shape[0] == tcfg.max_frames and len(s["ratios"]) == len(model.window_lengths(tcfg.max_frames))
    measured = measured_step(model, s, checkpointing)
    plan = memory_plan(mcfg, tcfg, text_tokens=s["post_ids"].shape[1], pre_tokens=s["pre_ids"].shape[1], ratios=s["ratios"])
    planned_acts = plan["activation_checkpointing_bytes" if checkpointing else "activation_bytes"]
    total = sum(measured.values())
    print(f"checkpointing={checkpointing}: measured {measured} total {total}; plan {plan['total_bytes']} "
          f"(ratio {plan['total_bytes'] / total:.3f}), activations {planned_acts} vs {measured['activation_bytes']} "
          f"(ratio {planned_acts / measured['activation_bytes']:.3f})")
    assert plan["param_bytes"] == measured["param_bytes"]
    assert abs(plan["total_bytes"] / total - 1) < 0.15
    assert abs(planned_acts / measured["activation_bytes"] - 1) < 0.15  # the activations alone, too


def qwen2_7b_clip_l(tmp_path) -> tuple[str, str]:
    """config.json of Qwen2-7B-Instruct and of CLIP ViT-L/14-336 (as published), no weights."""
    llm, vision = tmp_path / "qwen2-7b", tmp_path / "clip-l-336"
    llm.mkdir()
    vision.mkdir()
    (llm / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"}))
    (vision / "config.json").write_text(json.dumps({
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5}))
    return str(llm), str(vision)


@pytest.mark.slow
def test_plan_for_qwen2_7b_and_clip_l_fsdp_on_8_gpus_fits_where_ddp_on_1_does_not(tmp_path):
    """The numbers docs/model.md states ("Training the 7B model"), printed by `vico train --plan`."""
    llm, vision = qwen2_7b_clip_l(tmp_path)
    config = tmp_path / "train-7b.yaml"
    config.write_text(f"model: {{llm_path: {llm}, vision_path: {vision}}}\n"
                      "train: {use_gpu: true, bf16: true, max_frames: 128, max_text_tokens: 1024, workers: 8, strategy: fsdp, "
                      "activation_checkpointing: true}\n")
    plans = {}
    for name, sets in (("fsdp8", []), ("ddp1", ["--set", "train.strategy=ddp", "--set", "train.workers=1"])):
        done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "train", str(config), "--plan", "--json", *sets],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        plans[name] = json.loads(done.stdout.strip().splitlines()[-1])
    fsdp, ddp = plans["fsdp8"], plans["ddp1"]
    assert 8.3e9 < fsdp["parameters"] < 8.5e9  # Qwen2-7B 7.62 B + VST q/k/v 0.46 B + CLIP-L cut at -2 0.30 B + projector
    gib = 1024**3
    assert ddp["param_bytes"] + ddp["grad_bytes"] + ddp["optimizer_bytes"] > 120 * gib  # ~16 bytes a parameter
    assert fsdp["param_bytes"] + fsdp["grad_bytes"] + fsdp["optimizer_bytes"] < 17 * gib  # 1/8 of it
    assert fsdp["total_with_checkpointing_bytes"] < 60 * gib < 80 * gib < ddp["total_with_checkpointing_bytes"]
    assert fsdp["activation_checkpointing_bytes"] < fsdp["activation_bytes"]


def test_plan_allocates_nothing(tmp_path, tiny_model_config):
    """The model is built on the meta device: no parameter storage is made."""
    plan = memory_plan(ModelConfig(), TrainConfig(max_frames=8, workers=2, strategy="fsdp"))
    assert plan["parameters"] > 0 and plan["param_bytes"] < plan["parameters"] * 4  # a half, padded per tensor
