"""A checkpoint's own `config.json`: everything needed to rebuild the model with no other folder.

Written into every training checkpoint and every exported folder (`vico export-checkpoint`), in
the authors' layout: a Qwen2 `config.json` (shapes, RoPE settings) with LLaVA's `mm_*` keys
(the feature layer and kind, resolved: never null), Video-XL's `beacon_*` keys (window, ratios,
the parameters VST tokens have of their own), the CLIP tower's whole config under
`vision_config`, and the few settings of ours under `vico`. `model_config_of(folder)` reads it
back as a ModelConfig whose `llm_path` is the folder itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ModelConfig, ModelUserError

# ModelConfig keys with no counterpart in the authors' config.json, kept under "vico".
OWN_KEYS = ("ratio", "system_prompt", "vision_chunk_frames", "seed")


def complete_config(model, mcfg: ModelConfig) -> dict:
    """The config.json of a built model (its resolved shapes, not the settings it was built from)."""
    d = model.decoder.dims
    vision = model.vision
    tower_config = vision.tower.config.to_dict()  # the tower as built, before its cut: num_hidden_layers is the full count
    rope = {"rope_theta": d.rope_theta, "max_position_embeddings": d.max_position_embeddings}
    if d.rope_linear_factor != 1.0:
        rope["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": d.rope_linear_factor,
                                "original_max_position_embeddings": d.max_position_embeddings}
    return {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "qwen2",
        "vocab_size": d.vocab_size, "hidden_size": d.hidden_size, "intermediate_size": d.intermediate_size,
        "num_hidden_layers": d.num_layers, "num_attention_heads": d.num_heads, "num_key_value_heads": d.num_kv_heads,
        "head_dim": d.head_dim, "rms_norm_eps": d.rms_norm_eps, "tie_word_embeddings": d.tie_word_embeddings,
        "hidden_act": "silu", **rope,
        "mm_vision_tower": mcfg.vision_path or "", "mm_hidden_size": tower_config["hidden_size"],
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": vision.select_layer,
        "mm_vision_select_feature": "cls_patch" if vision.keep_cls else "patch",
        "vision_config": tower_config,
        "beacon_window": model.window_tokens, "beacon_stride": model.window_tokens, "beacon_ratio": list(mcfg.ratios),
        "beacon_param": ["q", "k", "v"], "beacon_embed_init": mcfg.vst_init,
        "vico": {k: getattr(mcfg, k) for k in OWN_KEYS},
    }


def write_config(folder: str | Path, model, mcfg: ModelConfig) -> None:
    (Path(folder) / "config.json").write_text(json.dumps(complete_config(model, mcfg), indent=2) + "\n")


def is_portable(folder: str | Path) -> bool:
    """A folder whose config.json holds the whole model (a new checkpoint or an export)."""
    path = Path(folder) / "config.json"
    return path.exists() and "vision_config" in json.loads(path.read_text())


def model_config_of(folder: str | Path) -> ModelConfig:
    """The ModelConfig that rebuilds the model of a portable folder (weights are loaded separately)."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
        return ModelConfig(llm_path=str(folder), vision_path=None, tokenizer_path=str(folder / "tokenizer"),
                           vision_select_layer=cfg["mm_vision_select_layer"],
                           vision_select_feature=cfg["mm_vision_select_feature"],
                           window_tokens=cfg["beacon_window"], ratios=cfg["beacon_ratio"],
                           vst_init=cfg.get("beacon_embed_init", "eos"), **cfg.get("vico", {}))
    except (KeyError, ValueError, OSError) as e:
        raise ModelUserError(f"{folder}/config.json does not describe a whole Video-XL model ({e})") from e
