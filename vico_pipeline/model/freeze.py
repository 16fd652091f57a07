"""Training stages: which parts of the model train (`train.freeze`) and which weights a stage
starts from (`train.init_from`).

Video-XL trains in two stages: first the projector and the VST parts alone (the tower and the
LLM frozen), then everything. A frozen parameter has `requires_grad` False, so backward never
computes its gradient, and it is in no optimizer group, so AdamW keeps no state for it: freezing
the 7B LLM saves its gradients and both Adam moments (12 bytes a parameter in fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import latest_checkpoint
from .config import ModelConfig, ModelUserError, TrainConfig

PARTS = ("vision", "projector", "llm", "vst")


def part_of(name: str) -> str:
    """The part a parameter of VideoXL belongs to, by its name."""
    if name.startswith("vision.tower."):
        return "vision"
    if name.startswith("vision.projector."):
        return "projector"
    if name.startswith("decoder.vst_embed.") or ".vst_" in name:  # the VST embedding and per-layer vst_q/k/v
        return "vst"
    return "llm"


def frozen_parts(tcfg: TrainConfig) -> set[str]:
    """train.freeze, and the tower where train.vision_lr is 0 (the older way to freeze it)."""
    return set(tcfg.freeze) | ({"vision"} if tcfg.vision_lr == 0 else set())


def freeze(model, parts: set[str]) -> None:
    for name, p in model.named_parameters():
        if part_of(name) in parts:
            p.requires_grad_(False)


def param_groups(model, tcfg: TrainConfig) -> list[dict]:
    """AdamW groups of the parameters that train: the tower at train.vision_lr, the rest at train.lr.
    Frozen parameters are in no group."""
    vision_lr = tcfg.lr if tcfg.vision_lr is None else tcfg.vision_lr
    groups = [{"params": [], "lr": tcfg.lr}, {"params": [], "lr": vision_lr}]
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[part_of(name) == "vision"]["params"].append(p)
    return [g for g in groups if g["params"]]


# Model settings that do not change any weight's shape: a stage may start from a checkpoint that had others.
SHAPELESS = frozenset({"seed", "ratios", "ratio", "system_prompt", "vst_init", "vision_chunk_frames", "tokenizer_path"})


def init_checkpoint(tcfg: TrainConfig, mcfg: ModelConfig) -> Path | None:
    """The checkpoint train.init_from names (a run folder's latest, or a checkpoint folder), checked to
    hold this model's shapes; None without init_from."""
    if not tcfg.init_from:
        return None
    ckpt = latest_checkpoint(tcfg.init_from)
    if ckpt is None:
        raise ModelUserError(f"train.init_from: no checkpoint in {tcfg.init_from}")
    saved = json.loads((ckpt / "model_config.json").read_text())
    now = mcfg.model_dump(mode="json")
    differs = [f"model.{k}: {saved[k]} -> {now[k]}" for k in now
               if k in saved and k not in SHAPELESS and saved[k] is not None and saved[k] != now[k]]
    if differs:
        raise ModelUserError(f"train.init_from {ckpt} holds another model ({'; '.join(differs[:3])}); "
                             "give this stage the model section of the stage it starts from")
    return ckpt
