"""Training stages (issue 17): frozen parts get no gradient and no optimizer state and stay
bit-identical; stage 2 (configs/train-stage2.yaml) starts from stage 1's checkpoint."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


from tests.model.test_train import write_shards  # noqa: E402
from vico_pipeline.config import load_config  # noqa: E402
from vico_pipeline.model.checkpoint import build_model  # noqa: E402
from vico_pipeline.model.config import ModelUserError, TrainConfig  # noqa: E402
from vico_pipeline.model.data import load_tokenizer  # noqa: E402
from vico_pipeline.model.freeze import part_of  # noqa: E402
from vico_pipeline.model.train import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def initial_weights(mcfg, run: Path) -> dict:
    """The weights a run started from: the model is built from (config, seed, the run's tokenizer)."""
    model = build_model(mcfg, load_tokenizer(str(run / "tokenizer")).eos_token_id)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def final(mcfg, run: Path, step: int) -> tuple[dict, dict]:
    """A checkpoint's weights, and the parameters AdamW holds moments for (name -> size)."""
    import torch.distributed.checkpoint as dcp

    from vico_pipeline.model.checkpoint import load_weights

    ckpt = run / "checkpoints" / f"step-{step:07d}"
    model = build_model(mcfg, load_tokenizer(str(run / "tokenizer")).eos_token_id)
    load_weights(model, ckpt)
    meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    moments = {k[len("optimizer.state."):-len(".exp_avg")]: meta[k].size.numel() for k in meta
               if k.startswith("optimizer.state.") and k.endswith(".exp_avg")}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, moments


def test_part_names():
    assert part_of("vision.tower.vision_model.encoder.layers.0.mlp.fc1.weight") == "vision"
    assert part_of("vision.projector.2.bias") == "projector"
    assert part_of("decoder.vst_embed.weight") == "vst"
    assert part_of("decoder.layers.1.self_attn.vst_k_proj.bias") == "vst"
    assert part_of("decoder.layers.1.self_attn.k_proj.bias") == "llm"
    assert part_of("decoder.lm_head.weight") == part_of("decoder.embed_tokens.weight") == "llm"


# ddp as before; fsdp in one process (its own one-rank group) with per-layer activation
# checkpointing and CPU offload on, so freezing is checked on sharded parameters too.
SHARDINGS = {"ddp": {}, "fsdp": {"strategy": "fsdp", "workers": 1, "activation_checkpointing": True,
                                 "cpu_offload": True}}


@pytest.mark.parametrize("sharding", list(SHARDINGS))
def test_frozen_parts_stay_bit_identical_and_hold_no_optimizer_state(tmp_path, tiny_model_config, sharding):
    version = write_shards(tmp_path / "v1", n_frames=4)
    mcfg = tiny_model_config()
    cfg = TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "stage1"), max_steps=3, lr=1e-2,
                      warmup_ratio=0.0, checkpoint_every=3, max_frames=4, freeze=["vision", "llm"],
                      **SHARDINGS[sharding])
    run = run_training(mcfg, cfg)
    start = initial_weights(mcfg, run)
    weights, moments = final(mcfg, run, 3)
    parts = {k: part_of(k) for k in weights}
    frozen = [k for k in weights if parts[k] in ("vision", "llm")]
    trained = [k for k in weights if parts[k] in ("projector", "vst")]
    assert {parts[k] for k in frozen} == {"vision", "llm"} and {parts[k] for k in trained} == {"projector", "vst"}
    assert all(torch.equal(weights[k], start[k]) for k in frozen)
    unchanged = [k for k in trained if torch.equal(weights[k], start[k])]
    # The last layer's VST queries shape only that layer's VST outputs, which nothing reads (only the
    # VSTs' keys and values are kept): they get no gradient. Every other trained parameter moved.
    last = mcfg.num_layers - 1
    assert sorted(unchanged) == [f"decoder.layers.{last}.self_attn.vst_q_proj.{w}" for w in ("bias", "weight")], unchanged
    # AdamW holds moments for exactly the projector and VST parameters, none for the frozen ones
    # (nor for the two gradient-less VST query tensors: never having had a gradient, they have no state).
    # Under fsdp a unit's reduce-scatter hands every parameter of the unit a gradient, zeros for
    # those two, so AdamW may hold (zero) moments for them; never for a frozen parameter.
    if sharding == "fsdp":
        assert set(trained) - set(unchanged) <= set(moments) <= set(trained)
    else:
        assert set(moments) == set(trained) - set(unchanged)
    assert sum(moments.values()) == sum(weights[k].numel() for k in moments)
    assert sum(moments.values()) < sum(weights[k].numel() for k in frozen) / 2


def test_stage_two_starts_from_stage_one(tmp_path):
    """configs/train-stage1.yaml then configs/train-stage2.yaml, as a user runs them (smaller)."""
    version = write_shards(tmp_path / "v1", n_frames=4)
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    one = load_config(ROOT / "configs" / "train-stage1.yaml", [f"train.data={version}", f"train.output={stage1}",
                                                                "train.max_steps=2", "train.checkpoint_every=2"])
    assert one.train.freeze == ["vision", "llm"]
    run_training(one.model, one.train)
    # Stage 2 takes one step at a rate of 0: its weights are then exactly those it started from.
    two = load_config(ROOT / "configs" / "train-stage2.yaml", [f"train.data={version}", f"train.output={stage2}",
                                                                f"train.init_from={stage1}", "train.max_steps=1",
                                                                "train.lr=0.0", "train.checkpoint_every=1"])
    assert two.train.freeze == [] and two.model == one.model
    run_training(two.model, two.train)
    after_one, _ = final(one.model, stage1, 2)
    start_two, moments = final(two.model, stage2, 1)
    assert all(torch.equal(start_two[k], after_one[k]) for k in after_one)
    # The same with fsdp on two workers: rank 0 alone reads stage 1, rank 1 takes its shards from it.
    from tests.model.test_sharded import spawn_workers

    sharded = tmp_path / "stage2-fsdp"
    run_training(two.model, two.train.model_copy(update={"output": str(sharded), "strategy": "fsdp", "workers": 2}),
                 launch=spawn_workers)
    start_sharded, _ = final(two.model, sharded, 1)
    assert all(torch.equal(start_sharded[k], after_one[k]) for k in after_one)
    fresh = initial_weights(one.model, stage1)
    assert not torch.equal(after_one["vision.projector.0.weight"], fresh["vision.projector.0.weight"])
    assert (stage2 / "tokenizer" / "tokenizer.json").read_text() == (stage1 / "tokenizer" / "tokenizer.json").read_text()
    assert {part_of(k) for k in moments} == {"vision", "projector", "llm", "vst"}  # stage 2 trains every part

    # Another model is refused in one line; so is a missing checkpoint.
    with pytest.raises(ModelUserError, match="holds another model .*model.hidden_size: 64 -> 32"):
        run_training(two.model.model_copy(update={"hidden_size": 32}), two.train.model_copy(update={"output": str(tmp_path / "x")}))
    with pytest.raises(ModelUserError, match="train.init_from: no checkpoint"):
        run_training(two.model, two.train.model_copy(update={"output": str(tmp_path / "y"), "init_from": str(tmp_path / "none")}))


def test_freeze_values_are_checked():
    with pytest.raises(ValueError, match="train.freeze"):
        TrainConfig(freeze=["tower"])
    with pytest.raises(ValueError, match="nothing would train"):
        TrainConfig(freeze=["vision", "projector", "llm", "vst"])
