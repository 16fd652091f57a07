"""The decoder is pinned to transformers' Qwen2: same weights by name, same logits."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vico_pipeline.model.checkpoint import load_hf_qwen2, read_safetensors_dir  # noqa: E402
from vico_pipeline.model.decoder import Decoder, DecoderDims  # noqa: E402


@pytest.mark.parametrize("tie", [False, True])
def test_logits_equal_transformers_qwen2(tmp_path, tie):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=tie,
    )
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases, so the bias path is exercised
        for layer in ref.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    ref.save_pretrained(tmp_path)

    import json

    dims = DecoderDims.from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert dims.rope_theta == 10000.0 and dims.head_dim == 16 and dims.num_kv_heads == 2
    ours = Decoder(dims).eval()
    load_hf_qwen2(ours, read_safetensors_dir(tmp_path))

    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = ours.logits(ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_equals_one_pass():
    """Keys are cached before RoPE and re-positioned each step: chunks must equal one forward."""
    torch.manual_seed(0)
    dims = DecoderDims(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
    dec = Decoder(dims).eval()
    ids = torch.randint(0, 50, (1, 17))
    with torch.no_grad():
        full = dec.logits(ids)
        h1, kv1 = dec(dec.embed_tokens(ids[:, :9]))
        h2, _ = dec(dec.embed_tokens(ids[:, 9:]), past=kv1)
    torch.testing.assert_close(dec.lm_head(torch.cat([h1, h2], 1)), full, rtol=1e-5, atol=1e-5)


def qwen2_config(**kw):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0)
    return transformers.Qwen2Config(**(base | kw))


def test_linear_rope_scaling_is_honoured(tmp_path):
    """A config with linear rope_scaling gives transformers' logits (positions divided by the factor)."""
    import json

    torch.manual_seed(1)
    ref = transformers.Qwen2ForCausalLM(qwen2_config(rope_scaling={"rope_type": "linear", "factor": 4.0})).eval()
    ref.save_pretrained(tmp_path)
    dims = DecoderDims.from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert dims.rope_linear_factor == 4.0
    ours = Decoder(dims).eval()
    load_hf_qwen2(ours, read_safetensors_dir(tmp_path))
    ids = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ids), ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
                                     {"type": "dynamic", "factor": 2.0}])
def test_other_rope_scalings_are_refused(scaling):
    from vico_pipeline.model.config import ModelUserError

    for cfg in ({**qwen2_config().to_dict(), "rope_scaling": scaling}, qwen2_config(rope_scaling=scaling).to_dict()):
        with pytest.raises(ModelUserError, match="not implemented"):
            DecoderDims.from_hf(cfg)


def test_trained_context_read_from_the_config():
    assert DecoderDims.from_hf(qwen2_config(max_position_embeddings=32768).to_dict()).max_position_embeddings == 32768
    cfg = qwen2_config().to_dict() | {"rope_scaling": {"type": "linear", "factor": 2.0, "original_max_position_embeddings": 4096}}
    assert DecoderDims.from_hf(cfg).max_position_embeddings == 4096


def test_empty_chunk_runs():
    """No text before the video: the decoder gets a chunk of 0 tokens and returns empty states."""
    dims = DecoderDims(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
    dec = Decoder(dims).eval()
    with torch.no_grad():
        h, kv = dec(dec.embed_tokens(torch.zeros(1, 0, dtype=torch.long)))
    assert h.shape == (1, 0, 32) and kv[0][0].shape == (1, 2, 0, 8)
