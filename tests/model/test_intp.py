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
