"""The model: shape, causality, learning, and KV-cache sampling equal to recomputation."""
import pytest
import torch

import gpty2_wiki as g


def tiny(block_size=16, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return g.GPTLanguageModel(g.GPTConfig(len(g.VOCAB), block_size, 32, 4, 2, dropout))


def test_vocab_is_fixed_and_round_trips():
    assert len(g.VOCAB) == 96 and g.VOCAB[0] == "\n" and g.VOCAB[1] == " " and g.VOCAB[-1] == "~"
    text = "Q: Who is Ada Lovelace?\nA: An English mathematician (1815-1852).\n\n"
    assert g.decode(g.encode(text)) == text
    assert g.decode(g.encode("Ada — “Lovelace” café")) == 'Ada - "Lovelace" cafe'


def test_split_is_a_stable_hash_of_the_title():
    titles = [a.title for a in g.load_offline_articles()]
    val = [t for t in titles if g.split_of(t, 0.1) == "val"]
    assert 0.08 < len(val) / len(titles) < 0.12
    # the same answer whatever else is in the corpus, and in any process (sha256, not hash())
    assert [g.split_of(t) for t in titles[:50]] == [g.split_of(t) for t in reversed(titles[:50])][::-1]
    assert g.split_of("Ada Lovelace") == "train" and g.split_of("Abu Muslim") == "val"  # fixed for good


def test_original_names_and_init():
    m = tiny()
    for name in ("token_embedding_table", "position_embedding_table", "blocks", "ln_f", "lm_head"):
        assert hasattr(m, name)
    assert abs(m.lm_head.weight.std().item() - 0.02) < 0.003
    assert abs(m.token_embedding_table.weight.std().item() - 0.02) < 0.003
    assert all(mod.bias.abs().sum() == 0 for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    logits, loss = m(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 96) and loss is None


def test_model_is_causal():
    m = tiny().eval()
    idx = torch.randint(0, 96, (1, 16))
    changed = idx.clone()
    changed[0, 9] = (idx[0, 9] + 1) % 96
    a, _ = m(idx)
    b, _ = m(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_tiny_model_overfits_a_tiny_corpus():
    ids, _ = g.records_to_tensors([{"question": "Who is Ada?", "answer": "Ada was a mathematician."},
                                   {"question": "What is tea?", "answer": "Tea is a drink."}])
    m = tiny(block_size=32)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        x, y = g.get_batch(ids, 16, 32, gen, torch.device("cpu"))
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and losses[-1] < 0.5, (losses[0], losses[-1])


@pytest.mark.parametrize("prompt_len, new", [(1, 40), (5, 60), (20, 30)])  # all run past block_size 16
def test_kv_cache_greedy_equals_recompute(prompt_len, new):
    m = tiny(block_size=16).eval()
    idx = torch.randint(0, 96, (2, prompt_len))
    cached = m.generate(idx, new, temperature=0, use_cache=True)
    full = m.generate(idx, new, temperature=0, use_cache=False)
    assert cached.shape == (2, prompt_len + new) and torch.equal(cached, full)


def test_kv_cache_sampling_equals_recompute_with_the_same_generator():
    m = tiny(block_size=16).eval()
    idx = torch.zeros(1, 1, dtype=torch.long)
    a = m.generate(idx, 50, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    b = m.generate(idx, 50, temperature=1.0, top_k=10, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_answer_mask_marks_answers():
    ids, mask = g.records_to_tensors([{"question": "Q1?", "answer": "A1."}])
    text = g.decode(ids.tolist())
    assert text == "Q: Q1?\nA: A1.\n\n"
    assert "".join(c for c, m in zip(text, mask.tolist()) if m) == "A1.\n\n"


def test_ask_stops_at_the_blank_line():
    ids, _ = g.records_to_tensors([{"question": "Who is Ada?", "answer": "Ada was a mathematician."}] * 3)
    m = tiny(block_size=48)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        x, y = g.get_batch(ids, 16, 48, gen, torch.device("cpu"))
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert g.ask(m, "Who is Ada?", temperature=0) == "Ada was a mathematician."


def naive_attention_logits(m, idx):
    """The same model computed the original way: per-head matrices cut from the fused QKV, a tril mask."""
    x = m.token_embedding_table(idx) + m.position_embedding_table(torch.arange(idx.size(1)))
    T, C = idx.size(1), m.config.n_embd
    hs = C // m.config.n_head
    for blk in m.blocks:
        h = blk.ln1(x)
        q, k, v = (h @ w.T + b for w, b in zip(blk.sa.qkv.weight.split(C), blk.sa.qkv.bias.split(C)))
        heads = []
        for i in range(m.config.n_head):
            sl = slice(i * hs, (i + 1) * hs)
            wei = q[..., sl] @ k[..., sl].transpose(-2, -1) * hs ** -0.5
            wei = wei.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
            heads.append(torch.softmax(wei, dim=-1) @ v[..., sl])
        x = x + blk.sa.proj(torch.cat(heads, dim=-1))
        x = x + blk.ffwd(blk.ln2(x))
    return m.lm_head(m.ln_f(x))


def test_fast_attention_equals_the_naive_one():
    m = tiny(block_size=16).eval()
    for blk in m.blocks:  # non-zero biases, so that they are checked too
        torch.nn.init.normal_(blk.sa.qkv.bias, std=0.1)
    idx = torch.randint(0, 96, (3, 16))
    with torch.no_grad():
        ref = naive_attention_logits(m, idx)
        fp32, _ = m(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = m(idx)
    assert torch.allclose(fp32, ref, atol=1e-5)
    assert (bf16.float() - ref).abs().max() < 0.02 * ref.abs().max()  # bf16 noise, not a different function


def test_both_attention_paths_compute_the_same_function_and_gradients():
    m = tiny(block_size=16)
    idx = torch.randint(0, 96, (3, 16))
    out = {}
    for path in ("baddbmm", "sdpa"):
        for blk in m.blocks:
            blk.sa.attention = path
        m.zero_grad()
        logits, loss = m(idx, idx)
        loss.backward()
        out[path] = (logits.detach(), m.blocks[0].sa.qkv.weight.grad.clone())
    assert torch.allclose(out["baddbmm"][0], out["sdpa"][0], atol=1e-5)
    assert torch.allclose(out["baddbmm"][1], out["sdpa"][1], atol=1e-6)
    path, why = g.measure_attention(torch.device("cpu"), m.config, 4, torch.float32)
    assert path in ("baddbmm", "sdpa") and why.startswith(f"attention {path} (")
