"""`vico export-checkpoint RUN --out DIR`: a training checkpoint as one self-contained folder.

The folder holds the weights consolidated from every worker's shards, under the authors' Video-XL
names (LLaVA-style: `model.layers.N.self_attn.beacon_q_proj`, `model.mm_projector.0`, ...), in
safetensors files of at most `SHARD_BYTES` (with an index when there are several); `config.json`,
the whole model (portable.py: shapes, RoPE, the feature layer and kind resolved, beacon
settings, the CLIP config); `tokenizer/`; and the run's `config.yaml`, so `vico eval` knows the
training frame count. Nothing else is read to load it: the base model folders may be gone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import latest_checkpoint, load_for_eval, renamed
from .config import ModelUserError
from .portable import is_portable, write_config

SHARD_BYTES = 5 * 1024**3

# Ours -> the authors' names: the inverse of checkpoint.AUTHOR_RULES (the first rule that matches applies).
OUR_RULES = [
    (r"^vision\.tower\.(?:vision_model\.)?", "model.vision_tower.vision_tower.vision_model."),
    (r"^vision\.projector\.", "model.mm_projector."),
    (r"^decoder\.vst_embed\.", "model.beacon_embed_tokens."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.vst_([qkv])_proj\.", r"model.layers.\1.self_attn.beacon_\2_proj."),
    (r"^decoder\.lm_head\.", "lm_head."),
    (r"^decoder\.", "model."),
]


def to_author_name(name: str) -> str:
    new = renamed(name, OUR_RULES)
    if new is None:
        raise ValueError(f"no author name for {name}")
    return new


def export_checkpoint(path: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Writes the export into a temporary folder next to `out`, then renames it. Returns `out`."""
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise ModelUserError(f"no checkpoint in {path}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelUserError(f"--out {out} exists and is not empty")
    model, tokenizer, mcfg, ckpt = load_for_eval(ckpt)  # every worker's shards, read in this one process
    tied = model.decoder.dims.tie_word_embeddings
    state = {to_author_name(k): v.detach().to(getattr(torch, dtype)).contiguous()
             for k, v in model.state_dict().items() if not (tied and k == "decoder.lm_head.weight")}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_safetensors(state, tmp)
    if is_portable(ckpt):
        shutil.copy(ckpt / "config.json", tmp / "config.json")  # written from the model the run built
    else:
        write_config(tmp, model, mcfg)
    config = json.loads((tmp / "config.json").read_text())
    (tmp / "config.json").write_text(json.dumps(config | {"torch_dtype": dtype}, indent=2) + "\n")
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    run_config = next((p / "config.yaml" for p in (ckpt, *ckpt.parents[:3]) if (p / "config.yaml").exists()), None)
    if run_config:
        shutil.copy(run_config, tmp / "config.yaml")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def write_safetensors(state: dict[str, torch.Tensor], folder: Path) -> None:
    """One model.safetensors, or model-0000i-of-0000n.safetensors files of at most SHARD_BYTES and
    model.safetensors.index.json (the layout Hugging Face folders use)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in shard}
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=2))
