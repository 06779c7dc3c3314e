"""The engine's decode step: the model's forward for one new token per cache row, written straight.

A decode step of a small model on a CPU costs more in PyTorch's per-op overhead (a few µs
per op, some 150 ops a step) than in arithmetic. `Transformer.forward` is general: any
number of tokens, training, masks, attention capture, rows addressed anywhere in the cache.
`DecodeStep` handles only what the engine's hot loop needs, one token for each of the cache
rows 0..n-1, and so can do less per token:
- every choice the config makes (norm, activation, positions, biases, experts) is resolved
  once, when the step is built, into plain functions over the model's own weights (nothing
  is copied), so a step calls no modules and builds no per-call plan;
- activations stay 2-D (rows, features), and the transposed matmul's output of a
  `ProductPlan` stays a strided view instead of being copied back to row-major;
- RoPE rotates with one `roll` against a sign-folded sine table instead of split, negate
  and concatenate.
Tests hold its logits to the model's forward for every family (tests/test_decode.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yunque.model.matmul import Linear
from yunque.model.transformer import MLP, KVCache, Transformer, StepPlan

Fn = Callable[[Tensor], Tensor]
_NO_STEP = StepPlan(cos=None, sin=None, mask=None)  # what a module-called MoE layer reads: no router capture


def _product(layer: nn.Module) -> Fn:
    """x (n, in) -> (n, out) the way the layer computes it; a tuned `Linear` may return a strided view."""
    if isinstance(layer, Linear):
        weight, bias, plan = layer.weight, layer.bias, layer.plan
        if plan is None:
            return lambda x: F.linear(x, weight, bias)
        return lambda x: plan.rows(x, weight, bias)
    return layer  # another linear (e.g. int8): its own forward takes (n, in)


def _norm(module: nn.Module) -> Fn:
    if isinstance(module, nn.RMSNorm):
        return lambda x: F.rms_norm(x, module.normalized_shape, module.weight, module.eps)
    return lambda x: F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _mlp(module: nn.Module) -> Fn:
    if isinstance(module, MLP):
        fc, act, proj = _product(module.fc), module.act, _product(module.proj)
        return lambda x: proj(act(fc(x)))
    return lambda x: module(x, _NO_STEP)  # mixture of experts: routing dominates, the module's own forward


class DecodeStep:
    """`step(tokens, positions, cache, lo, hi)`: logits (n, vocab) for one new token in each of
    the cache rows 0..n-1, row i at position positions[i]; `lo`/`hi` are the smallest and
    largest position as Python ints (the caller tracks them without reading the tensor).

    By default a step reads only the cache positions up to `hi` (least work, eager). `static`
    steps read the whole cache under a mask and ignore `lo`/`hi`, so their shapes depend on
    the row count alone: the form to compile.
    """

    def __init__(self, model: Transformer, static: bool = False) -> None:
        c = model.config
        # Static: every row reads the whole cache under a mask and writes by index, so no shape
        # depends on the positions and a compiled step (one graph per row count) never recompiles.
        self.static = static
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.gqa = c.n_head != c.n_kv_head
        self.window = c.sliding_window
        self.tok_emb = model.tok_emb.weight
        self.pos_emb = None if model.pos_emb is None else model.pos_emb.weight
        self.cos = model.rope_cos
        if model.rope_sin is not None:
            # rotate_half(x) * sin == roll(x, half) * sin with the first half of sin negated.
            half = c.head_dim // 2
            self.sin = torch.cat((-model.rope_sin[:, :half], model.rope_sin[:, half:]), dim=-1)
        self.layers = [
            (_norm(b.norm1), _product(b.attn.qkv), _product(b.attn.out), _norm(b.norm2), _mlp(b.mlp))
            for b in model.blocks
        ]
        self.norm_f, self.lm_head = _norm(model.norm_f), _product(model.lm_head)

    def __call__(self, tokens: Tensor, positions: Tensor, cache: KVCache, lo: int, hi: int) -> Tensor:
        n, H, KV, D = tokens.shape[0], self.n_head, self.n_kv_head, self.head_dim
        uniform = not self.static and lo == hi  # static: never read lo or hi, so a compiled step never guards on them
        length = cache.max_len if self.static else hi + 1
        x = F.embedding(tokens, self.tok_emb)
        if self.pos_emb is not None:
            x = x + F.embedding(positions, self.pos_emb)
        # Rows all at one position write with a plain index and read without a mask.
        at: tuple = (slice(0, n), slice(None), lo)
        if not uniform:
            at = (torch.arange(n, device=tokens.device), slice(None), positions)
        mask = None
        if not uniform or (self.window is not None and self.window < length):
            keys = torch.arange(length, device=tokens.device)
            ok = keys <= positions[:, None]
            if self.window is not None:
                ok &= keys > positions[:, None] - self.window
            mask = ok[:, None, None]  # (n, 1, 1, length)
        if self.cos is not None:
            cos, sin = (self.cos[lo], self.sin[lo]) if uniform else (self.cos[positions][:, None], self.sin[positions][:, None])
        for i, (norm1, qkv, out, norm2, mlp) in enumerate(self.layers):
            # Row-major heads: the fused attention kernels need the last dimension contiguous.
            heads = qkv(norm1(x)).contiguous().view(n, H + 2 * KV, D)
            qk, v = heads[:, : H + KV], heads[:, H + KV :]
            if self.cos is not None:
                qk = qk * cos + qk.roll(D // 2, dims=-1) * sin
            k_cache, v_cache = cache.k[i], cache.v[i]
            k_cache[at] = qk[:, H:]
            v_cache[at] = v
            y = F.scaled_dot_product_attention(
                qk[:, :H, None], k_cache[:n, :, :length], v_cache[:n, :, :length], attn_mask=mask, enable_gqa=self.gqa,
            )
            x = x + out(y.view(n, H * D))
            x = x + mlp(norm2(x))
        return self.lm_head(self.norm_f(x))


def decode_step(model: Transformer) -> Callable[..., Tensor]:
    """The engine's decode step for `model`: plain on CPU, compiled on a GPU.

    On CPU the step is bound by reading the weights (and by per-op overhead for tiny models),
    and compiling costs seconds per row count, so it stays eager. On CUDA, where kernel
    launches dominate a small step, the static step is compiled with `mode="reduce-overhead"`
    (CUDA graphs where torch can apply them): a graph for the first row count, one with the row
    count dynamic and one for a single row, never one per position (tests/test_decode.py).
    """
    if model.tok_emb.weight.device.type == "cuda":
        return torch.compile(DecodeStep(model, static=True), mode="reduce-overhead")
    return DecodeStep(model)
