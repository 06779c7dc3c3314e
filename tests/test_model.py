import math

import pytest
import torch

from yunque.model.config import ModelConfig
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer, load_balancing_loss

FAMILIES = {
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu"),
    "llama": dict(
        positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
        norm_bias=False, tie_embeddings=False, n_kv_head=2,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    ),
    "mistral": dict(
        positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
        norm_bias=False, tie_embeddings=False, n_kv_head=2, sliding_window=5,
    ),
    "mixtral": dict(
        positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
        norm_bias=False, tie_embeddings=False, n_kv_head=2, n_experts=4, n_experts_per_tok=2,
    ),
}


def tiny(family: str, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, d_ff=48, max_seq_len=64, init_std=0.2),
                         **FAMILIES[family], **kw})
    return Transformer(cfg).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decoding_matches_full_recompute_with_rows_at_different_positions(family):
    model = tiny(family)
    B, total = 3, 14
    idx = torch.randint(0, 97, (B, total))
    full = model(idx)
    prompt_lens = [3, 7, 5]  # each row prefilled separately, then decoded together at different positions
    cache = model.make_cache(batch_size=4, max_len=32)
    slots = [2, 0, 3]  # rows land in arbitrary slots of a larger cache
    with torch.no_grad():
        for b, (slot, n) in enumerate(zip(slots, prompt_lens)):
            out = model(idx[b : b + 1, :n], cache=cache.rows([slot]), input_pos=torch.tensor([0]))
            torch.testing.assert_close(out[0], full[b, :n], atol=1e-5, rtol=0)
        pos = torch.tensor(prompt_lens)
        view = cache.rows(slots)
        while int(pos.max()) < total:
            pos = pos.clamp(max=total - 1)
            token = idx[torch.arange(B), pos][:, None]
            out = model(token, cache=view, input_pos=pos)
            torch.testing.assert_close(out[:, 0], full[torch.arange(B), pos], atol=1e-5, rtol=0)
            pos = pos + 1


def test_decode_step_over_the_whole_cache_and_multi_token_chunks():
    model = tiny("llama")
    idx = torch.randint(0, 97, (2, 12))
    full = model(idx)
    cache = model.make_cache(2)
    with torch.no_grad():
        a = model(idx[:, :4], cache=cache, input_pos=torch.tensor([0, 0]))
        b = model(idx[:, 4:9], cache=cache, input_pos=torch.tensor([4, 4]))
    torch.testing.assert_close(torch.cat([a, b], 1), full[:, :9], atol=1e-5, rtol=0)


def test_rows_at_different_positions_over_the_whole_cache_and_logits_at():
    model = tiny("mistral")  # with a sliding window that cuts, so the per-row mask matters
    idx = torch.randint(0, 97, (2, 12))
    full = model(idx)
    cache = model.make_cache(2)
    with torch.no_grad():
        model(idx[:1, :7], cache=cache.rows([0]), input_pos=torch.tensor([0]))
        model(idx[1:, :3], cache=cache.rows([1]), input_pos=torch.tensor([0]))
        # Row 0 continues at 7, row 1 at 3: one call writes each row's chunk at its own positions.
        out = model(torch.stack([idx[0, 7:10], idx[1, 3:6]]), cache=cache, input_pos=torch.tensor([7, 3]))
        last = model(torch.stack([idx[0, 10:12], idx[1, 6:8]]), cache=cache, input_pos=torch.tensor([10, 6]),
                     logits_at=torch.tensor([1, 0]))
    torch.testing.assert_close(out, torch.stack([full[0, 7:10], full[1, 3:6]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(last[:, 0], torch.stack([full[0, 11], full[1, 6]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("uniform", [True, False])
def test_a_cache_in_another_dtype_is_written_in_its_own_dtype(uniform):
    model = tiny("llama")
    idx = torch.randint(0, 97, (2, 6))
    outs = []
    for dtype in (torch.float32, torch.float64):
        cache = model.make_cache(2, max_len=16, dtype=dtype)
        with torch.no_grad():
            model(idx, cache=cache, input_pos=torch.tensor([0, 0]))
            outs.append(model(idx[:, :1], cache=cache, input_pos=torch.tensor([6, 6] if uniform else [6, 5])))
        assert cache.k[0].dtype == dtype
    assert outs[1].dtype == torch.float32
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)


def test_sliding_window_limits_what_a_token_sees():
    model = tiny("mistral")
    idx = torch.randint(0, 97, (1, 12))
    other = idx.clone()
    other[0, 0] = (idx[0, 0] + 1) % 97  # token 0 is outside the window of position 11 (window 5, 2 layers -> 9 back)
    assert torch.allclose(model(idx)[0, -1], model(other)[0, -1], atol=1e-6)
    assert not torch.allclose(model(idx)[0, 3], model(other)[0, 3], atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_backward(family):
    model = tiny(family).train()
    idx = torch.randint(0, 97, (2, 10))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 10, 97)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1), ignore_index=-100)
    if model.config.is_moe:
        assert loss > ce  # the load-balancing term is added when training
    else:
        torch.testing.assert_close(loss, ce)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    targets[0, :6] = -100  # a masked prompt: the head runs only where a target is learnt, same loss and gradients
    model.zero_grad()
    full = model(idx, targets)[1]
    full.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    none, only = model(idx, targets, loss_only=True)
    only.backward()
    assert none is None and torch.allclose(only, full, atol=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), grads))


def test_load_balancing_loss_is_its_minimum_top_k_when_routing_is_uniform():
    # Mixtral's convention (transformers' load_balancing_loss_func): uniform routing scores k.
    E, k, N = 4, 2, 8
    probs = torch.full((N, E), 1 / E)
    chosen = torch.tensor([[i % E, (i + 1) % E] for i in range(N)])
    assert math.isclose(load_balancing_loss([(probs, chosen)], E).item(), float(k), rel_tol=1e-6)
    skewed = torch.tensor([[0, 1]] * N)
    assert load_balancing_loss([(torch.tensor([[0.4, 0.4, 0.1, 0.1]] * N), skewed)], E) > k


def test_out_of_vocabulary_ids_are_a_clear_error():
    model = tiny("gpt2")
    with pytest.raises(YunqueError, match="outside the model's vocabulary of 97"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(YunqueError, match="outside"):
        model(torch.tensor([[-1]]))


def test_cache_overflow_and_context_errors():
    model = tiny("llama")
    cache = model.make_cache(1, max_len=8)
    with pytest.raises(YunqueError, match="KV cache"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache, input_pos=torch.tensor([6]))
    with pytest.raises(YunqueError, match="context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(YunqueError, match="context"):
        model.make_cache(1, max_len=100)


@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_capture_attention_matches_the_sdpa_path(family):
    model = tiny(family)
    idx = torch.randint(0, 97, (2, 9))
    probs = model.capture_attention(idx)
    assert len(probs) == 2 and probs[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, 4, 9))
    assert probs[0].triu(1).abs().max() == 0  # causal
    window = model.config.sliding_window
    if window:
        assert probs[0].tril(-window).abs().max() == 0


def test_parameter_and_flop_accounting():
    model = tiny("mixtral")
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total
    expert = 3 * c.d_model * c.d_ff
    assert model.num_params(active=True) == total - c.n_layer * (c.n_experts - c.n_experts_per_tok) * expert
    non_emb = model.num_params(non_embedding=True, active=True)
    assert non_emb == model.num_params(active=True) - 2 * c.vocab_size * c.d_model
    expected = 6 * (non_emb + c.d_model * c.vocab_size) + 12 * c.n_layer * c.n_head * c.head_dim * 64
    assert model.flops_per_token() == expected
    gpt = tiny("gpt2")
    assert gpt.num_params() == sum(p.numel() for p in gpt.parameters())  # tied head counted once
    assert gpt.num_params(non_embedding=True) == gpt.num_params() - 97 * 32 - 64 * 32


def test_bf16_forward_runs_and_roughly_agrees():
    model = tiny("llama")
    idx = torch.randint(0, 97, (2, 8))
    ref = model(idx)
    low = model.to(torch.bfloat16)(idx)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
