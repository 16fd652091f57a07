"""Building the model, and loading weights by name: Hugging Face Qwen2, the authors' Video-XL
layout, and our own training checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model

from .config import ModelConfig, ModelUserError
from .decoder import Decoder, DecoderDims
from .portable import is_portable, model_config_of, write_config
from .vision import VisionSide, encoder_of
from .vst import VideoXL


def llm_config(cfg: ModelConfig) -> dict:
    """llm_path's config.json (a Qwen2 config; the authors' checkpoint adds its mm_* keys); {} without llm_path."""
    if not cfg.llm_path:
        return {}
    path = Path(cfg.llm_path) / "config.json"
    if not path.exists():
        raise ModelUserError(f"model.llm_path: no config.json in {cfg.llm_path}")
    return json.loads(path.read_text())


def decoder_dims(cfg: ModelConfig) -> DecoderDims:
    if cfg.llm_path:
        return DecoderDims.from_hf(llm_config(cfg))
    return DecoderDims(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings, rope_linear_factor=cfg.rope_linear_factor,
    )


# LLaVA's defaults, which the authors' finetune scripts leave as they are (their pretrain script uses -2).
DEFAULT_SELECT_LAYER, DEFAULT_SELECT_FEATURE = -1, "patch"


def vision_select(cfg: ModelConfig) -> tuple[int, str]:
    """(layer, feature) the projector reads: the model config's, else the checkpoint config's
    `mm_vision_select_layer` / `mm_vision_select_feature`, else LLaVA's defaults."""
    found = llm_config(cfg)
    layer = cfg.vision_select_layer
    if layer is None:
        layer = found.get("mm_vision_select_layer", DEFAULT_SELECT_LAYER)
    feature = cfg.vision_select_feature or found.get("mm_vision_select_feature", DEFAULT_SELECT_FEATURE)
    if feature not in ("patch", "cls_patch"):
        raise ModelUserError(f"mm_vision_select_feature {feature!r} is not supported (patch or cls_patch)")
    return int(layer), feature


def beacon_settings(found: dict) -> dict:
    """ModelConfig values from the authors' `beacon_*` keys of a checkpoint's config.json ({} where it
    has none). Settings our VST memory does not implement are refused, not ignored."""
    if "beacon_window" not in found:
        return {}
    window = int(found["beacon_window"])
    stride = int(found.get("beacon_stride") or window)
    if stride != window:
        raise ModelUserError(f"beacon_stride {stride} != beacon_window {window} in the checkpoint's config.json: "
                             "overlapping windows are not implemented")
    attn = found.get("beacon_attn", "full-coverage")
    if attn != "full-coverage":
        raise ModelUserError(f"beacon_attn {attn!r} in the checkpoint's config.json is not implemented (full-coverage is)")
    param = found.get("beacon_param", ["q", "k", "v"])
    param = param.split() if isinstance(param, str) else list(param)
    if set(param) != {"q", "k", "v"}:
        raise ModelUserError(f"beacon_param {param} in the checkpoint's config.json: this model's VST has its own "
                             "q, k and v projections only (o_proj and the MLP are shared)")
    ratios = found.get("beacon_ratio") or [2, 4, 8, 12, 16]
    return {"window_tokens": window, "ratios": [int(r) for r in (ratios if isinstance(ratios, list) else [ratios])],
            "vst_init": "eos" if found.get("beacon_embed_init", "eos") == "eos" else "random"}


def resolved(cfg: ModelConfig) -> ModelConfig:
    """The config with everything read from llm_path / vision_path written into it: the LLM's and the
    tower's shapes, the feature layer and kind, the authors' beacon settings. A checkpoint that saves
    it is self-contained: it builds without those folders."""
    found = llm_config(cfg)
    layer, feature = vision_select(cfg)
    update: dict = {"vision_select_layer": layer, "vision_select_feature": feature, **beacon_settings(found)}
    if cfg.llm_path:
        d = decoder_dims(cfg)
        update |= {"vocab_size": d.vocab_size, "hidden_size": d.hidden_size, "intermediate_size": d.intermediate_size,
                   "num_layers": d.num_layers, "num_heads": d.num_heads, "num_kv_heads": d.num_kv_heads,
                   "head_dim": d.head_dim, "rope_theta": d.rope_theta, "rms_norm_eps": d.rms_norm_eps,
                   "tie_word_embeddings": d.tie_word_embeddings, "max_position_embeddings": d.max_position_embeddings,
                   "rope_linear_factor": d.rope_linear_factor}
    if cfg.vision_path:
        v = vision_tower(cfg, weights=False).config
        update |= {"image_size": v.image_size, "patch_size": v.patch_size, "vision_hidden_size": v.hidden_size,
                   "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
                   "vision_intermediate_size": v.intermediate_size}
    return cfg.model_copy(update=update)


def vision_tower(cfg: ModelConfig, weights: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if cfg.vision_path:
        if not Path(cfg.vision_path).exists():
            raise ModelUserError(f"model.vision_path: {cfg.vision_path} does not exist")
        if weights:
            return CLIPVisionModel.from_pretrained(cfg.vision_path, torch_dtype=torch.float32)
        return CLIPVisionModel(CLIPVisionConfig.from_pretrained(cfg.vision_path))
    spec = llm_config(cfg).get("vision_config")
    if spec:  # a portable checkpoint's config.json carries its tower's config (portable.py)
        return CLIPVisionModel(CLIPVisionConfig.from_dict(spec))
    return CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size,
    ))


def build_model(cfg: ModelConfig, eos_id: int | None = None, weights: bool = True) -> VideoXL:
    """A Video-XL model from the config: random dims, or `from_pretrained` local folders when
    llm_path / vision_path are set (weights=False builds the shapes only, for loading a checkpoint)."""
    cfg = cfg.model_copy(update=beacon_settings(llm_config(cfg)))  # an authors' checkpoint sets its own windows
    torch.manual_seed(cfg.seed)
    decoder = Decoder(decoder_dims(cfg))
    if cfg.llm_path and weights:
        load_hf_qwen2(decoder, cfg.llm_path)
    tower = vision_tower(cfg, weights)
    image_size, patch = tower.config.image_size, tower.config.patch_size
    layer, feature = vision_select(cfg)
    vision = VisionSide(tower, image_size, patch, decoder.dims.hidden_size, cfg.vision_chunk_frames, layer, feature)
    decoder.init_vst(eos_id if cfg.vst_init == "eos" else None)
    return VideoXL(decoder, vision, cfg.window_tokens)


# --- Hugging Face Qwen2 -------------------------------------------------------------------

def qwen2_name(hf_name: str) -> str:
    """HF Qwen2 parameter name -> ours: the same, without the `model.` prefix."""
    return hf_name[len("model."):] if hf_name.startswith("model.") else hf_name


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not (path / f).exists():
            raise ModelUserError(f"no {f} in {path}")
        state.update(load_file(str(path / f)))
    return state


def load_hf_qwen2(decoder: Decoder, path_or_state) -> None:
    """Loads Qwen2 weights by name; VST parts are not in a Qwen2 checkpoint and stay as they are."""
    state = read_safetensors_dir(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    ours = {qwen2_name(k): v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if decoder.dims.tie_word_embeddings:
        ours.pop("lm_head.weight", None)
    missing, unexpected = decoder.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith("vst_") and ".vst_" not in k and k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelUserError(f"Qwen2 weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")


# --- the authors' Video-XL checkpoint (LLaVA-style names) ---------------------------------

AUTHOR_RULES = [
    (r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?", "vision.tower."),
    (r"^model\.mm_projector\.", "vision.projector."),
    (r"^model\.beacon_embed_tokens\.", "decoder.vst_embed."),
    (r"^model\.layers\.(\d+)\.self_attn\.beacon_([qkv])_proj\.", r"decoder.layers.\1.self_attn.vst_\2_proj."),
    (r"^model\.", "decoder."),
    (r"^lm_head\.", "decoder.lm_head."),
]


def renamed(name: str, rules: list[tuple[str, str]]) -> str | None:
    """`name` rewritten by the first of `rules` (pattern, replacement) that matches; None if none does."""
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return None


def author_name(name: str) -> str:
    return renamed(name, AUTHOR_RULES) or name


# Buffers some saved checkpoints carry that the model computes itself.
RECOMPUTED_BUFFERS = ("rotary_emb.inv_freq", "embeddings.position_ids")


def load_videoxl_state(model: VideoXL, state: dict[str, torch.Tensor]) -> list[str]:
    """Loads the authors' Video-XL state dict by name into ours. Strict: every key is mapped onto a
    weight of ours of the same shape, or is a tower layer after the selected one (cut off on purpose:
    it never runs), or a buffer the model recomputes; those are returned. Anything else, and any
    weight of ours the state lacks, is an error naming the keys: a checkpoint with an extra part
    (a `beacon_o_proj`, say) would otherwise load as another model."""
    ours = model.state_dict()
    tower_prefix = "vision.tower.vision_model." if any(k.startswith("vision.tower.vision_model.") for k in ours) else "vision.tower."
    kept = len(encoder_of(model.vision.tower).layers)
    mapped, skipped, unknown, wrong = {}, [], [], []
    for name, tensor in state.items():
        new = author_name(name)
        if new.startswith("vision.tower."):
            new = tower_prefix + new[len("vision.tower."):]
        if new == "decoder.vst_embed.weight":
            tensor = tensor[:1]  # one VST embedding
        layer = re.match(re.escape(tower_prefix) + r"encoder\.layers\.(\d+)\.", new)
        if new in ours:
            if ours[new].shape == tensor.shape:
                mapped[new] = tensor
            else:
                wrong.append(f"{name} {tuple(tensor.shape)} (ours {tuple(ours[new].shape)})")
        elif (layer and int(layer.group(1)) >= kept) or name.endswith(RECOMPUTED_BUFFERS):
            skipped.append(name)
        else:
            unknown.append(name)
    if unknown or wrong:
        parts = ([f"{len(unknown)} keys this model has no place for: {', '.join(sorted(unknown)[:6])}"] if unknown else []) + \
                ([f"{len(wrong)} of another shape: {', '.join(wrong[:4])}"] if wrong else [])
        raise ModelUserError(f"Video-XL checkpoint does not fit this model: {'; '.join(parts)}")
    missing = [k for k in ours if k not in mapped and not (model.decoder.dims.tie_word_embeddings and k == "decoder.lm_head.weight")]
    if missing:
        raise ModelUserError(f"Video-XL checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
    model.load_state_dict(mapped, strict=False)
    return skipped


# --- our checkpoints ----------------------------------------------------------------------
#
# A training checkpoint is one folder a step, `checkpoints/step-NNNNNNN/`:
#   .metadata, __R_0.distcp  model and optimizer state, written by every worker
#                            (torch.distributed.checkpoint): each writes its own shards, and the
#                            files hold whole tensors' layout, so any worker count can read them
#   state.pt                 step, LR schedule, every worker's RNG states
#   config.json              the whole model (portable.py), model_config.json the settings it came from
#   tokenizer/, done         the tokenizer; `done` last, then the folder is renamed into place
# Older checkpoints (model.safetensors, optimizer in state.pt) still load.


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def has_weights(folder: Path) -> bool:
    """A sharded checkpoint, or a safetensors folder (our older checkpoints, an export)."""
    return any((folder / name).exists() for name in (".metadata", "model.safetensors", "model.safetensors.index.json"))


def latest_checkpoint(path: str | Path) -> Path | None:
    """A checkpoint folder itself, or the newest complete one under a run folder. A `.tmp` folder
    is never one, even with its `done` written: the rename is what completes a checkpoint."""
    path = Path(path)
    if has_weights(path):
        return path
    folders = (path / "checkpoints").glob("step-*") if (path / "checkpoints").exists() else []
    found = sorted(p for p in folders if not p.name.endswith(".tmp") and (p / "done").exists())
    return found[-1] if found else None


def _dist():
    """(rank, world) when a process group is up, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler, trainer_state: dict, model_cfg: ModelConfig,
                    tokenizer, keep: int = 2) -> Path:
    """Called by every worker. All write their shards into a temporary folder, which rank 0
    completes and renames, so a crash never leaves a half checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, _ = _dist()
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), **trainer_state}, tmp / "state.pt")
        (tmp / "model_config.json").write_text(model_cfg.model_dump_json(indent=2))
        (tmp / "schedule.json").write_text(json.dumps(trainer_state.get("schedule")))  # read on resume without state.pt
        write_config(tmp, model, model_cfg)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "done").write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(p for p in final.parent.glob("step-*") if not p.name.endswith(".tmp"))
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return final


def load_training_state(model, optimizer, ckpt: Path) -> dict:
    """Weights and optimizer state into a model wrapped for training (any strategy, any worker
    count); returns state.pt (step, schedule, RNG states)."""
    state = torch.load(ckpt / "state.pt", weights_only=False)
    if not (ckpt / ".metadata").exists():  # an older checkpoint: whole tensors, optimizer in state.pt
        if any(hasattr(p, "to_local") for p in model.parameters()):
            raise ModelUserError(f"{ckpt} is an older, unsharded checkpoint; resume it with train.strategy: ddp")
        load_model(model, str(ckpt / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        return state
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes to read into (creates AdamW's state)
    # A parameter that never had a gradient (the last layer's VST query projection: its output is
    # never read) has no AdamW state in the checkpoint; it gets none here either.
    saved = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    optim_state["state"] = {k: v for k, v in optim_state["state"].items() if f"optimizer.state.{k}.step" in saved}
    both = {"model": model_state, "optimizer": optim_state}
    dcp.load(both, checkpoint_id=str(ckpt))
    set_model_state_dict(model, both["model"])  # dcp.load has already required every weight
    set_optimizer_state_dict(model, optimizer, both["optimizer"], options=StateDictOptions(strict=False))
    return state


def load_weights(model, ckpt: Path) -> None:
    """Weights only, into an unwrapped model: a sharded checkpoint, or our older model.safetensors."""
    if (ckpt / ".metadata").exists():
        import torch.distributed.checkpoint as dcp

        weights = model.state_dict()
        # Reads every shard, in this one process (with no_dist, even where a process group is up:
        # under fsdp only rank 0 loads, the others take their shards from it).
        dcp.load({"model": weights}, checkpoint_id=str(ckpt), no_dist=True)
        model.load_state_dict(weights)
        return
    load_model(model, str(ckpt / "model.safetensors"))


def load_for_eval(path: str | Path):
    """(model, tokenizer, model config, checkpoint folder) from a run folder, a checkpoint folder or
    an exported folder (`vico export-checkpoint`: the authors' key layout)."""
    from transformers import AutoTokenizer

    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise ModelUserError(f"eval.checkpoint: no checkpoint found in {path}")
    if is_portable(ckpt):  # its own config.json: no base model folder is read
        cfg = model_config_of(ckpt)
    else:
        saved = json.loads((ckpt / "model_config.json").read_text())
        # Checkpoints written before the layer became a setting always read the second-to-last layer.
        saved.setdefault("vision_select_layer", -2)
        cfg = ModelConfig.model_validate(saved)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"))
    # Older checkpoints without their own config.json: the base folders only gave shapes, which
    # model_config.json records since `resolved`; it loads after they have moved.
    gone = {} if is_portable(ckpt) else {k: None for k in ("llm_path", "vision_path")
                                         if saved.get(k) and not Path(saved[k]).exists()}
    model = build_model(cfg.model_copy(update=gone), tokenizer.eos_token_id, weights=False)
    if (ckpt / ".metadata").exists() or (ckpt / "model_config.json").exists():
        load_weights(model, ckpt)
    else:  # an export: the authors' names
        load_videoxl_state(model, read_safetensors_dir(ckpt))
    return model.eval(), tokenizer, cfg, ckpt
