"""Portable checkpoints: a run started from local base folders (a Qwen2 and a CLIP saved here,
random weights) is exported with `vico export-checkpoint`; after the base folders are deleted,
the export loads through `vico eval`, through the authors' key layout, and the run's own sharded
checkpoint loads too, all computing what the trained model computes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.model.test_train import write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def base_folders(root: Path, tokenizer) -> tuple[Path, Path]:
    """A tiny Qwen2 (linear RoPE scaling, the authors' feature layer -2 in its config) and a 3-layer CLIP."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    llm, clip = root / "qwen2", root / "clip"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)).save_pretrained(llm)
    config = json.loads((llm / "config.json").read_text())
    config |= {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "mm_vision_select_layer": -2}
    config.pop("rope_parameters", None)
    (llm / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(llm))
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                     image_size=56, patch_size=14)).save_pretrained(clip)
    return llm, clip


def logits(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    pre, post = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    pixels = torch.randn(6, 3, 56, 56, generator=g)
    with torch.no_grad():
        return model.read(model.encode_video(pre, pixels, [2, 4, 4]), post)[0]


def test_export_loads_in_eval_and_in_the_authors_layout_after_the_base_folders_are_gone(tmp_path):
    from vico_pipeline.model.checkpoint import build_model, load_for_eval, load_videoxl_state, read_safetensors_dir
    from vico_pipeline.model.config import ModelConfig, TrainConfig
    from vico_pipeline.model.data import ShardRows, train_tokenizer
    from vico_pipeline.model.portable import model_config_of
    from vico_pipeline.model.train import run_training

    version = write_shards(tmp_path / "v1", n_train=1, n_val=1, n_frames=4, questions_per_video=1)
    llm, clip = base_folders(tmp_path / "base", train_tokenizer(ShardRows(version, "train").texts(), 384))
    mcfg = ModelConfig(llm_path=str(llm), vision_path=str(clip), window_tokens=8, ratios=[2, 4], ratio=4)
    run = run_training(mcfg, TrainConfig(data=str(version), output=str(tmp_path / "run"), max_steps=2, checkpoint_every=2,
                                         max_frames=4, lr=1e-3, cpu_threads=1))
    trained = logits(load_for_eval(run)[0])

    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))
    export = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "export-checkpoint", str(run), "--out", str(export)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(export)
    shutil.rmtree(tmp_path / "base")  # the base model folders are gone

    config = json.loads((export / "config.json").read_text())
    assert (config["mm_vision_select_layer"], config["mm_vision_select_feature"]) == (-2, "patch")  # resolved
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"], config["vocab_size"]) == (32, 2, 2, 384)
    assert config["rope_theta"] == 10000.0 and config["rope_scaling"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 4096
    assert (config["beacon_window"], config["beacon_ratio"], config["beacon_param"]) == (8, [2, 4], ["q", "k", "v"])
    assert config["vision_config"]["num_hidden_layers"] == 3 and config["vision_config"]["image_size"] == 56

    # The authors' key layout: their names, loaded by name with nothing left over or missing.
    state = read_safetensors_dir(export)
    assert "model.layers.1.self_attn.beacon_q_proj.weight" in state and "model.mm_projector.2.bias" in state
    assert "model.beacon_embed_tokens.weight" in state and "lm_head.weight" in state
    assert all(k.startswith(("model.", "lm_head.")) for k in state)
    authors = build_model(model_config_of(export), weights=False)
    assert load_videoxl_state(authors, state) == []
    torch.testing.assert_close(logits(authors.eval()), trained, rtol=0, atol=0)
    # vico eval's loader, on the export and on the run's own (sharded) checkpoint.
    torch.testing.assert_close(logits(load_for_eval(export)[0]), trained, rtol=0, atol=0)
    torch.testing.assert_close(logits(load_for_eval(run)[0]), trained, rtol=0, atol=0)

    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(f"eval: {{checkpoint: {export}, data: {version}, output: {tmp_path / 'eval'}, max_val_samples: 2, "
                           "needle_frames: [4], needle_depths: [0.5], needle_trials: 1, needle_videos: 1, methods: [vst], "
                           "ratios: [4], cpu_threads: 1}\n")
    done = subprocess.run([sys.executable, "-m", "vico_pipeline.cli", "eval", str(eval_config)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["checkpoint"] == str(export) and results["train_frames"] == 4 and results["needle"]


def test_author_names_round_trip(tiny_model_config):
    from vico_pipeline.model.checkpoint import author_name, build_model
    from vico_pipeline.model.export import to_author_name

    for name in build_model(tiny_model_config()).state_dict():
        back = author_name(to_author_name(name))
        assert back == name or back == name.replace("vision.tower.vision_model.", "vision.tower."), name
