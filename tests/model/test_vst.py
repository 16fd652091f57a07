"""VST memory: equals the plain decoder without compression, and a naive full-sequence
reference (explicit mask and position ids) with compression."""

import math

import pytest

torch = pytest.importorskip("torch")

from vico_pipeline.model.checkpoint import build_model  # noqa: E402
from vico_pipeline.model.decoder import apply_rope, rope_cos_sin  # noqa: E402



@pytest.fixture(scope="module")
def model(tiny_model_config):
    m = build_model(tiny_model_config(), eos_id=3).eval()
    with torch.no_grad():  # VST q/k/v differ from the layer's own, so using the wrong ones would show
        for block in m.decoder.layers:
            for p in (block.self_attn.vst_q_proj, block.self_attn.vst_k_proj, block.self_attn.vst_v_proj):
                p.weight.add_(torch.randn_like(p.weight) * 0.05)
                p.bias.normal_(0, 0.3)
    return m


def inputs(model, n_frames=5):
    g = torch.Generator().manual_seed(1)
    pre = torch.randint(0, 300, (1, 6), generator=g)
    post = torch.randint(0, 300, (1, 7), generator=g)
    visual = torch.randn(n_frames, model.vision.tokens_per_frame, model.decoder.dims.hidden_size, generator=g)
    return pre, visual, post


def naive_reference(model, pre, visual, post, ratios):
    """The whole sequence at once. Each VST appears twice among the keys: at its place inside its
    window (seen by later tokens of that window) and as a memory entry packed after the sink
    (seen by every later window and the text). Sizes are tiny, so plain loops are fine."""
    dec = model.decoder
    d_model = dec.dims.hidden_size
    emb, is_vst, qpos, step = [], [], [], []
    s = pre.shape[1]
    for i in range(s):
        emb.append(dec.embed_tokens.weight[pre[0, i]]), is_vst.append(False), qpos.append(i), step.append(-1)
    flat = visual.reshape(-1, d_model)
    per_window = model.window_frames * model.vision.tokens_per_frame
    n_mem = 0
    vst_rows, vst_mempos = [], []
    for w, start in enumerate(range(0, flat.shape[0], per_window)):
        r = ratios[w]
        win = flat[start:start + per_window]
        offset, base = 0, s + n_mem
        for j in range(win.shape[0]):
            emb.append(win[j]), is_vst.append(False), qpos.append(base + offset), step.append(w)
            offset += 1
            if (j + 1) % r == 0 or j + 1 == win.shape[0]:
                vst_rows.append(len(emb)), vst_mempos.append(s + n_mem)
                emb.append(dec.vst_embed.weight[0]), is_vst.append(True), qpos.append(base + offset), step.append(w)
                offset += 1
                n_mem += 1
    for i in range(post.shape[1]):
        emb.append(dec.embed_tokens.weight[post[0, i]]), is_vst.append(False), qpos.append(s + n_mem + i), step.append(10**6)
    t = len(emb)
    x = torch.stack(emb)[None]
    kpos = torch.tensor(qpos + vst_mempos)
    qpos_t = torch.tensor(qpos)
    mask = torch.zeros(t, t + len(vst_rows), dtype=torch.bool)
    for a in range(t):
        for b in range(a + 1):
            sink_b = step[b] == -1
            mask[a, b] = sink_b or step[a] == step[b]
        for g, row in enumerate(vst_rows):
            mask[a, t + g] = step[a] > step[row] and step[a] != -1
    vst_idx = torch.tensor(vst_rows)
    heads, kv_heads, hd = dec.dims.num_heads, dec.dims.num_kv_heads, dec.dims.head_dim
    cq, sq = rope_cos_sin(qpos_t, hd, dec.dims.rope_theta, x.dtype)
    ck, sk = rope_cos_sin(kpos, hd, dec.dims.rope_theta, x.dtype)
    for block in dec.layers:
        a = block.self_attn
        h = block.input_layernorm(x)
        q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
        q[:, vst_idx], k[:, vst_idx], v[:, vst_idx] = a.vst_q_proj(h[:, vst_idx]), a.vst_k_proj(h[:, vst_idx]), a.vst_v_proj(h[:, vst_idx])
        q = q.view(1, t, heads, hd).transpose(1, 2)
        k = k.view(1, t, kv_heads, hd).transpose(1, 2)
        v = v.view(1, t, kv_heads, hd).transpose(1, 2)
        k = torch.cat([k, k[:, :, vst_idx]], 2)
        v = torch.cat([v, v[:, :, vst_idx]], 2)
        q, k = apply_rope(q, cq, sq), apply_rope(k, ck, sk)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        out = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        x = x + a.o_proj(out.transpose(1, 2).reshape(1, t, -1))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return dec.lm_head(dec.norm(x))[:, t - post.shape[1]:]


def test_no_compression_equals_plain_decoder(model):
    pre, visual, post = inputs(model)
    dec = model.decoder
    with torch.no_grad():
        mem = model.encode_video(pre, visual=visual, ratios=None)
        got, _ = model.read(mem, post)
        whole = torch.cat([dec.embed_tokens(pre), visual.reshape(1, -1, visual.shape[-1]), dec.embed_tokens(post)], 1)
        h, _ = dec(whole)
        expected = dec.lm_head(h)[:, -post.shape[1]:]
    assert mem.length == pre.shape[1] + visual.shape[0] * visual.shape[1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratios", [[2, 4, 4], [4, 2, 2], [8, 8, 8]])
def test_windowed_equals_naive_reference(model, ratios):
    pre, visual, post = inputs(model)  # 5 frames x 4 tokens, windows of 8 tokens: 8, 8, 4
    with torch.no_grad():
        mem = model.encode_video(pre, visual=visual, ratios=ratios)
        got, _ = model.read(mem, post)
        expected = naive_reference(model, pre, visual, post, ratios)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_memory_length_is_sink_plus_windows_over_ratio(model):
    pre, visual, post = inputs(model, n_frames=6)
    lengths = model.window_lengths(6)
    assert lengths == [8, 8, 8]
    with torch.no_grad():
        mem = model.encode_video(pre, visual=visual, ratios=[2, 4, 8])
    assert mem.length == pre.shape[1] + sum(n // r for n, r in zip(lengths, [2, 4, 8]))
    assert mem.window_vsts == [4, 2, 1]


def test_no_state_between_calls(model):
    pre, visual, post = inputs(model)
    with torch.no_grad():
        a = model.read(model.encode_video(pre, visual=visual, ratios=4), post)[0]
        model.read(model.encode_video(post, visual=visual[:2], ratios=2), pre)  # another sample in between
        b = model.read(model.encode_video(pre, visual=visual, ratios=4), post)[0]
        gen1 = model.generate(model.encode_video(pre, visual=visual, ratios=4), post, 5)
        gen2 = model.generate(model.encode_video(pre, visual=visual, ratios=4), post, 5)
    assert torch.equal(a, b) and gen1 == gen2 and len(gen1) <= 5


def test_generation_continues_from_memory(model):
    """Greedy tokens equal the argmax of a full re-read with the generated tokens appended."""
    pre, visual, post = inputs(model)
    with torch.no_grad():
        mem = model.encode_video(pre, visual=visual, ratios=2)
        toks = model.generate(mem, post, 4)
        logits, _ = model.read(mem, torch.cat([post, torch.tensor([toks[:-1]])], 1))
    assert logits[0, post.shape[1] - 1:].argmax(-1).tolist() == toks


def test_gradients_flow_through_memory_across_windows(tiny_model_config):
    m = build_model(tiny_model_config(), eos_id=3)
    pre, _, post = inputs(m)
    pixels = torch.randn(5, 3, 56, 56)
    labels = post.clone()
    labels[:, :3] = -100
    loss = m(pre, pixels, post, labels, [2, 4, 4])
    loss.backward()
    assert torch.isfinite(loss)
    assert m.decoder.vst_embed.weight.grad.abs().sum() > 0
    assert m.decoder.layers[0].self_attn.vst_k_proj.weight.grad.abs().sum() > 0
    assert m.vision.projector[0].weight.grad.abs().sum() > 0


def test_vst_initialised_from_eos_and_layer_projections(tiny_model_config):
    m = build_model(tiny_model_config(), eos_id=7)
    assert torch.equal(m.decoder.vst_embed.weight[0], m.decoder.embed_tokens.weight[7])
    a = m.decoder.layers[1].self_attn
    assert torch.equal(a.vst_q_proj.weight, a.q_proj.weight) and torch.equal(a.vst_v_proj.bias, a.v_proj.bias)


def test_vision_144_tokens_per_336px_frame(tiny_model_config):
    m = build_model(tiny_model_config(image_size=336, vision_layers=2, vision_hidden_size=16, vision_heads=2,
                                      vision_intermediate_size=16, vision_chunk_frames=2))
    assert m.vision.tokens_per_frame == 144
    with torch.no_grad():
        out = m.vision(torch.randn(3, 3, 336, 336))
    assert out.shape == (3, 144, 32)


def test_empty_text_before_the_video(model):
    """pre_ids of length 0: the memory is the video alone, equal to the plain decoder on [video, text]."""
    _, visual, post = inputs(model)
    dec = model.decoder
    with torch.no_grad():
        mem = model.encode_video(torch.zeros(1, 0, dtype=torch.long), visual=visual, ratios=None)
        got, _ = model.read(mem, post)
        h, _ = dec(torch.cat([visual.reshape(1, -1, visual.shape[-1]), dec.embed_tokens(post)], 1))
        compressed = model.encode_video(torch.zeros(1, 0, dtype=torch.long), visual=visual, ratios=2)
    assert mem.sink == 0 and mem.length == visual.shape[0] * visual.shape[1]
    torch.testing.assert_close(got, dec.lm_head(h)[:, -post.shape[1]:], rtol=1e-5, atol=1e-5)
    assert compressed.length == sum(compressed.window_vsts) == 10


def test_reading_leaves_the_memory_unchanged(model):
    """One memory answers many questions: read() returns new tensors and never writes into it."""
    pre, visual, post = inputs(model)
    with torch.no_grad():
        mem = model.encode_video(pre, visual=visual, ratios=2)
        before = [(k.clone(), v.clone()) for k, v in mem.kv]
        first, _ = model.read(mem, post, extend=False)
        model.read(mem, pre)
        model.generate(mem, post, 3)
        again, extended = model.read(mem, post)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(mem.kv, before))
    assert torch.equal(first, again) and extended.length == mem.length + post.shape[1]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_config):
    m = build_model(tiny_model_config(), eos_id=3)
    pre, _, post = inputs(m)
    pixels = torch.randn(3, 3, 56, 56)
    labels = post.clone()
    results = []
    for flag in (False, True):
        m.zero_grad()
        m.set_gradient_checkpointing(flag)
        m.train()
        loss = m(pre, pixels, post, labels, [2, 4])
        loss.backward()
        results.append((loss.detach(), m.decoder.layers[0].self_attn.vst_q_proj.weight.grad.clone(),
                        m.vision.tower.embeddings.patch_embedding.weight.grad.clone()
                        if hasattr(m.vision.tower, "embeddings") else m.vision.projector[0].weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
