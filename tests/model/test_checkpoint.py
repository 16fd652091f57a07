"""The authors' Video-XL checkpoint layout (LLaVA-style names) loads by name into ours."""

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.checkpoint import author_name, build_model, load_videoxl_state  # noqa: E402
from vico_pipeline.model.config import ModelUserError  # noqa: E402


def authors_state_dict(cfg, seed=5):
    """A state dict with the authors' names and shapes, written out by hand from the layout
    of their Qwen2 + LLaVA code (the vision tower keeps all its layers, as theirs does)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    g = torch.Generator().manual_seed(seed)
    d, inter, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * (cfg.hidden_size // cfg.num_heads)
    sd = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,), "lm_head.weight": (cfg.vocab_size, d),
          "model.beacon_embed_tokens.weight": (1, d),
          "model.mm_projector.0.weight": (d, cfg.vision_hidden_size), "model.mm_projector.0.bias": (d,),
          "model.mm_projector.2.weight": (d, d), "model.mm_projector.2.bias": (d,)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for pre in ("", "beacon_"):
            sd |= {p + f"self_attn.{pre}q_proj.weight": (d, d), p + f"self_attn.{pre}q_proj.bias": (d,),
                   p + f"self_attn.{pre}k_proj.weight": (kv, d), p + f"self_attn.{pre}k_proj.bias": (kv,),
                   p + f"self_attn.{pre}v_proj.weight": (kv, d), p + f"self_attn.{pre}v_proj.bias": (kv,)}
        sd |= {p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (inter, d), p + "mlp.up_proj.weight": (inter, d),
               p + "mlp.down_proj.weight": (d, inter), p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    state = {k: torch.randn(*shape, generator=g) for k, shape in sd.items()}
    tower = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size))
    for k, v in tower.state_dict().items():
        k = k[len("vision_model."):] if k.startswith("vision_model.") else k
        state["model.vision_tower.vision_tower.vision_model." + k] = torch.randn(v.shape, generator=g)
    return state


def test_author_names_map_to_ours():
    assert author_name("model.layers.3.self_attn.beacon_q_proj.weight") == "decoder.layers.3.self_attn.vst_q_proj.weight"
    assert author_name("model.layers.3.self_attn.q_proj.bias") == "decoder.layers.3.self_attn.q_proj.bias"
    assert author_name("model.beacon_embed_tokens.weight") == "decoder.vst_embed.weight"
    assert author_name("model.mm_projector.2.weight") == "vision.projector.2.weight"
    assert author_name("model.vision_tower.vision_tower.vision_model.pre_layrnorm.bias") == "vision.tower.pre_layrnorm.bias"
    assert author_name("lm_head.weight") == "decoder.lm_head.weight"


def test_load_authors_checkpoint(tiny_model_config):
    # Read at the second-to-last layer (their pretrain setting), the tower's last layer is skipped.
    cfg = tiny_model_config(vision_select_layer=-2)
    state = authors_state_dict(cfg)
    model = build_model(cfg)
    skipped = load_videoxl_state(model, state)
    last = cfg.vision_layers - 1
    assert skipped and all(f"encoder.layers.{last}." in k for k in skipped)
    assert load_videoxl_state(build_model(tiny_model_config()), state) == []  # the default (-1) uses every layer
    ours = model.state_dict()
    a = model.decoder.layers[1].self_attn
    assert torch.equal(a.vst_k_proj.bias, state["model.layers.1.self_attn.beacon_k_proj.bias"])
    assert torch.equal(a.q_proj.weight, state["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(model.decoder.vst_embed.weight, state["model.beacon_embed_tokens.weight"])
    assert torch.equal(model.vision.projector[2].weight, state["model.mm_projector.2.weight"])
    tower_key = next(k for k in ours if k.endswith("embeddings.patch_embedding.weight"))
    assert torch.equal(ours[tower_key], state["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"])
    # A second model loaded from the same state computes the same thing.
    other = build_model(cfg.model_copy(update={"seed": 9}))
    load_videoxl_state(other, state)
    pre, post, pixels = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]), torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        x = model.read(model.encode_video(pre, pixels, 2), post)[0]
        y = other.read(other.encode_video(pre, pixels, 2), post)[0]
    torch.testing.assert_close(x, y)


def test_missing_weights_are_reported(tiny_model_config):
    cfg = tiny_model_config()
    state = authors_state_dict(cfg)
    del state["model.layers.0.self_attn.beacon_v_proj.weight"]
    with pytest.raises(ModelUserError, match="lacks 1 weights"):
        load_videoxl_state(build_model(cfg), state)


def qwen2_folder(tmp_path, cfg, **mm):
    """A checkpoint folder whose config.json is a Qwen2 config with the tiny dims and the authors' mm_* keys."""
    import json

    folder = tmp_path / "videoxl"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "rope_theta": 1e6, "max_position_embeddings": 32768, **mm}))
    return str(folder)


def tower_hidden_states(model, pixels, cfg):
    """The untruncated tower's hidden_states, with the model's tower weights (the layers it kept)."""
    from vico_pipeline.model.checkpoint import vision_tower

    full = vision_tower(cfg, weights=False)
    full.load_state_dict(model.vision.tower.state_dict(), strict=False)
    with torch.no_grad():
        return full(pixel_values=pixels, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("mm, layer, tokens", [({}, -1, 4), ({"mm_vision_select_layer": -2}, -2, 4),
                                               ({"mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch"}, -2, 5)])
def test_feature_layer_and_kind_come_from_the_checkpoint_config(tmp_path, tiny_model_config, mm, layer, tokens):
    """mm_vision_select_layer / _feature of the checkpoint's config choose what the projector reads;
    absent, LLaVA's defaults (-1, patch) that the authors' finetune scripts keep."""
    cfg = tiny_model_config(vision_layers=3)
    model = build_model(cfg.model_copy(update={"llm_path": qwen2_folder(tmp_path, cfg, **mm)}), weights=False).eval()
    assert model.decoder.dims.rope_theta == 1e6 and model.vision.tokens_per_frame == tokens
    pixels = torch.randn(2, 3, 56, 56)
    expected = tower_hidden_states(model, pixels, cfg)[layer]
    with torch.no_grad():
        feats = model.vision.tower(pixel_values=pixels).last_hidden_state
        out = model.vision(pixels)
    torch.testing.assert_close(feats, expected)
    assert out.shape == (2, tokens, cfg.hidden_size)
    if tokens == 5:  # cls_patch: the projected class token comes first, then the pooled patches
        with torch.no_grad():
            torch.testing.assert_close(out[:, 0], model.vision.projector(expected[:, 0]))


def test_model_config_overrides_the_checkpoint_and_bad_values_are_refused(tmp_path, tiny_model_config):
    from vico_pipeline.model.checkpoint import vision_select

    cfg = tiny_model_config()
    folder = qwen2_folder(tmp_path, cfg, mm_vision_select_layer=-2, mm_vision_select_feature="cls_patch")
    assert vision_select(cfg.model_copy(update={"llm_path": folder})) == (-2, "cls_patch")
    assert vision_select(cfg.model_copy(update={"llm_path": folder, "vision_select_layer": -1,
                                                "vision_select_feature": "patch"})) == (-1, "patch")
    assert vision_select(cfg) == (-1, "patch")
    with pytest.raises(ModelUserError, match="not supported"):
        vision_select(cfg.model_copy(update={"llm_path": qwen2_folder(tmp_path, cfg, mm_vision_select_feature="cls")}))
    with pytest.raises(ValueError):
        tiny_model_config(vision_select_feature="full")


def test_checkpoints_from_before_the_setting_load_with_the_second_to_last_layer(tmp_path, tiny_model_config):
    """Our checkpoints written before vision_select_layer existed hold a tower without its last layer."""
    import json

    from vico_pipeline.model.checkpoint import load_for_eval, save_checkpoint
    from vico_pipeline.model.data import train_tokenizer

    cfg = tiny_model_config(vision_select_layer=-2)
    tok = train_tokenizer(["a few words"], cfg.vocab_size)
    model = build_model(cfg, tok.eos_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {"step": 1}, cfg, tok)
    saved = json.loads((ckpt / "model_config.json").read_text())
    del saved["vision_select_layer"]
    (ckpt / "model_config.json").write_text(json.dumps(saved))
    loaded, _, mcfg, _ = load_for_eval(tmp_path)
    assert mcfg.vision_select_layer == -2
    assert torch.equal(loaded.vision.projector[0].weight, model.vision.projector[0].weight)


def test_unknown_keys_of_an_authors_checkpoint_are_an_error_naming_them(tiny_model_config):
    """A checkpoint trained with an extra projection must not load as another model."""
    cfg = tiny_model_config()
    state = authors_state_dict(cfg)
    state["model.layers.0.self_attn.beacon_o_proj.weight"] = torch.zeros(cfg.hidden_size, cfg.hidden_size)
    with pytest.raises(ModelUserError) as err:
        load_videoxl_state(build_model(cfg), state)
    message = str(err.value)
    assert "1 keys this model has no place for: model.layers.0.self_attn.beacon_o_proj.weight" in message
    assert "\n" not in message
    state = authors_state_dict(cfg)
    state["model.mm_projector.0.bias"] = torch.zeros(cfg.hidden_size + 1)
    with pytest.raises(ModelUserError, match=r"1 of another shape: model.mm_projector.0.bias \(33,\) \(ours \(32,\)\)"):
        load_videoxl_state(build_model(cfg), state)
    # What is dropped on purpose is said: tower layers after the one read, buffers the model recomputes.
    state = authors_state_dict(cfg) | {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}
    skipped = load_videoxl_state(build_model(cfg.model_copy(update={"vision_select_layer": -2})), state)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in skipped
    assert all("encoder.layers.1." in k or "inv_freq" in k for k in skipped)


def test_beacon_settings_come_from_the_authors_config(tmp_path, tiny_model_config):
    from vico_pipeline.model.checkpoint import resolved

    cfg = tiny_model_config()
    beacon = dict(beacon_window=24, beacon_stride=24, beacon_attn="full-coverage", beacon_ratio=[2, 4, 8],
                  beacon_param=["q", "k", "v"], beacon_embed_init="eos")
    with_path = cfg.model_copy(update={"llm_path": qwen2_folder(tmp_path, cfg, **beacon)})
    got = resolved(with_path)
    assert (got.window_tokens, got.ratios, got.vst_init) == (24, [2, 4, 8], "eos")
    assert build_model(with_path, weights=False).window_tokens == 24
    assert (got.vision_select_layer, got.vision_select_feature, got.rope_theta) == (-1, "patch", 1e6)
    for bad, match in ((dict(beacon_param="q k v o"), "beacon_param .*'o'.*q, k and v projections only"),
                       (dict(beacon_stride=12), "beacon_stride 12 != beacon_window 24"),
                       (dict(beacon_attn="segmentation"), "beacon_attn 'segmentation'")):
        folder = qwen2_folder(tmp_path, cfg, **(beacon | bad))
        with pytest.raises(ModelUserError, match=match):
            resolved(cfg.model_copy(update={"llm_path": folder}))


def test_a_trained_checkpoint_loads_after_its_base_folders_are_gone(tmp_path, tiny_model_config):
    """model_config.json records the shapes and the resolved feature layer: eval needs neither llm_path
    nor vision_path once the run has trained."""
    import json
    import shutil

    import transformers

    from tests.model.test_train import write_shards
    from vico_pipeline.model.checkpoint import load_for_eval
    from vico_pipeline.model.config import TrainConfig
    from vico_pipeline.model.data import ShardRows, train_tokenizer
    from vico_pipeline.model.train import run_training

    version = write_shards(tmp_path / "v1", n_frames=4)
    base = tmp_path / "base"
    llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=400, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=5e5, max_position_embeddings=4096))
    llm.save_pretrained(base / "llm")
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2, image_size=56,
        patch_size=14)).save_pretrained(base / "clip")
    train_tokenizer(ShardRows(version, "train").texts(), 384).save_pretrained(str(base / "tok"))
    mcfg = tiny_model_config(llm_path=str(base / "llm"), vision_path=str(base / "clip"), tokenizer_path=str(base / "tok"))
    run = run_training(mcfg, TrainConfig(cpu_threads=1, data=str(version), output=str(tmp_path / "run"), max_steps=1,
                                         checkpoint_every=1, max_frames=4))
    ckpt = run / "checkpoints" / "step-0000001"
    saved = json.loads((ckpt / "model_config.json").read_text())
    assert (saved["vision_select_layer"], saved["vision_select_feature"]) == (-1, "patch")
    assert (saved["hidden_size"], saved["vocab_size"], saved["rope_theta"], saved["max_position_embeddings"]) == (48, 400, 5e5, 4096)
    assert (saved["vision_hidden_size"], saved["vision_layers"]) == (40, 3)
    before, _, _, _ = load_for_eval(run)
    shutil.rmtree(base)
    after, _, _, _ = load_for_eval(run)
    pre, post, pixels = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]), torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(after.read(after.encode_video(pre, pixels, 2), post)[0],
                                   before.read(before.encode_video(pre, pixels, 2), post)[0], rtol=0, atol=0)
