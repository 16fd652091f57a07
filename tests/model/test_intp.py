"""INTP: the index order of the rearrangement and the NTK-scaled RoPE base are pinned."""

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.intp import (  # noqa: E402
    context_scale, interleaved_groups, ntk_rope_base, rearrange, rearranged_order,
)


def test_interleaved_groups_and_order():
    assert interleaved_groups(8, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert interleaved_groups(12, 4) == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    assert rearranged_order(8, 2) == [0, 2, 4, 6, 1, 3, 5, 7]


def test_rearrange_puts_tokens_back_at_time_slots():
    t, p, m = 8, 3, 2
    frames = torch.arange(t, dtype=torch.float32)  # frame value = its time index
    calls = []

    def encode(group):  # P tokens per frame: (frame value, group mean, token index)
        calls.append(group.tolist())
        n = group.shape[0]
        return torch.stack([group[:, None].expand(n, p), group.mean().expand(n, p), torch.arange(p).float().expand(n, p)], -1)

    out = rearrange(frames, m, encode)
    assert calls == [[0, 2, 4, 6], [1, 3, 5, 7]]  # each group is encoded on its own
    assert out[:, 0, 0].tolist() == list(range(t))  # frame t's tokens at slot t
    assert out[:, 0, 1].tolist() == [3.0, 4.0] * 4  # and they carry their group's context
    # The same as the formula in intp.md: stack groups, permute(1, 0, ...), reshape.
    z = torch.stack([encode(frames[j::m]) for j in range(m)])
    torch.testing.assert_close(out, z.permute(1, 0, 2, 3).reshape(t, p, 3))


def test_ntk_base():
    assert ntk_rope_base(10000.0, 128, 2.0) == pytest.approx(20221.3, abs=1.0)
    assert ntk_rope_base(10000.0, 128, 1.0) == 10000.0
    assert ntk_rope_base(1e6, 128, 4.0) == pytest.approx(1e6 * 4 ** (128 / 126))
    assert context_scale(4096, 1024) == 4.0 and context_scale(100, 1024) == 1.0


# Qwen2-7B-Instruct's config.json (the keys that matter here), as published.
QWEN2_7B_INSTRUCT = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rope_scaling": None}


def intp_base(dims, frames, text_len, train_frames=128):
    """The RoPE base the evaluation's INTP method reads `frames` frames with (144 tokens a frame)."""
    import types

    from vico_pipeline.model.evaluate import method_inputs

    ev = types.SimpleNamespace(model=types.SimpleNamespace(decoder=types.SimpleNamespace(dims=dims),
                                                           vision=types.SimpleNamespace(tokens_per_frame=144)))
    return method_inputs(ev, {"kind": "intp"}, list(range(frames)), train_frames, text_len)[2]


def test_intp_scale_is_length_over_the_llms_trained_context():
    """intp.md: s = max(1, L_target / L_trained), L_trained the LLM's context (32768 for Qwen2-7B),
    not the frames the video model was tuned on; base b * s^(d/(d-2))."""
    from vico_pipeline.model.decoder import DecoderDims
    from vico_pipeline.model.intp import intp_rope_base

    dims = DecoderDims.from_hf(QWEN2_7B_INSTRUCT)
    assert dims.max_position_embeddings == 32768 and dims.head_dim == 128
    # 256 frames x 144 = 36,864 visual tokens + 50 of text: about 36.9k, s about 1.13 (not 256/128 = 2).
    s = context_scale(50 + 256 * 144, 32768)
    assert s == pytest.approx(1.1265, abs=1e-3)
    assert intp_base(dims, 256, 50) == pytest.approx(1e6 * s ** (128 / 126)) == pytest.approx(1.1287e6, rel=1e-3)
    assert intp_base(dims, 128, 50) == 1e6  # 18.5k tokens fit the trained context: no scaling at all
    assert intp_base(dims, 2048, 50) == pytest.approx(1e6 * ((50 + 2048 * 144) / 32768) ** (128 / 126))
    # Video-LLaVA's Vicuna-7B (trained on 4096): twice its context gives intp.md's 20221 for b = 10000.
    assert intp_rope_base(10000.0, 128, 8192, 4096) == pytest.approx(20221.3, abs=1.0)
    assert intp_rope_base(10000.0, 128, 4000, 4096) == 10000.0
