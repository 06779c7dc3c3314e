"""One decoder-only Transformer for GPT-2, Llama, Mistral, Qwen2 and Mixtral.

Families differ only in `ModelConfig` values: learned positions or RoPE (with Llama-3
frequency scaling), LayerNorm or RMSNorm, a GELU or SwiGLU MLP or a sparse mixture of
experts, grouped-query attention, an optional sliding window, tied or untied LM head.

Inference uses a static KV cache (`Transformer.make_cache`). Each row of the cache is a
"slot" that holds one sequence; rows may sit at different positions, and a forward call
may touch only some rows (`cache.rows(slot_indices)`), which is what continuous batching
needs: prefill a new request into a free slot while others are mid-generation, then
decode one token for every active slot at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yunque.errors import YunqueError
from yunque.model.config import ModelConfig
from yunque.model.hf import config_from_hf, load_weights_into, save_pretrained
from yunque.model.hfdir import read_config
from yunque.model import lazymem
from yunque.model.lazymem import LazyZeros
from yunque.model.matmul import Linear


# MLP activations as data: (how many d_ff-wide halves the input projection produces, activation).
def _swiglu(h: Tensor) -> Tensor:
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


_ACTIVATIONS: dict[str, tuple[int, Callable[[Tensor], Tensor]]] = {
    "gelu": (1, lambda h: F.gelu(h, approximate="tanh")),  # GPT-2's gelu_new
    "swiglu": (2, _swiglu),  # fused [gate; up] projection, silu(gate) * up
}

def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()  # no kernel at all when dropout is off


_NORMS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "layernorm": lambda c: nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.norm_bias),
    "rmsnorm": lambda c: nn.RMSNorm(c.d_model, eps=c.norm_eps),
}


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """RoPE inverse frequencies (head_dim/2,), with optional HF-style rope scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise YunqueError(f"Unsupported rope scaling type {kind!r}; supported types are default, linear and llama3.")


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # HF's (non-interleaved) convention, so checkpoints load without permuting q/k weights.
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Static per-layer key/value buffers of shape (batch, n_kv_head, max_len, head_dim).

    `rows(slot_indices)` returns a cache that shares the same buffers but addresses only
    those rows (in that order); a forward call with it writes and reads only those slots.
    Nothing needs clearing between requests: a row attends only to positions below its
    current one, so stale entries from an earlier, longer sequence are never seen.
    """

    def __init__(self, k: list[Tensor], v: list[Tensor], row_ids: Tensor | None = None, lazy: list[LazyZeros] | None = None) -> None:
        self.k, self.v, self.row_ids = k, v, row_ids
        self.lazy = lazy or []  # the lazily committed buffers behind k and v (CPU), kept alive here

    def release(self, slot: int, start: int = 0) -> None:
        """Give back the memory of positions `start:` of row `slot` (every layer, head, key and
        value) where the buffers are lazily committed; those positions read as zeros after."""
        for buffer in self.lazy:
            _, heads, length, dim = buffer.tensor.shape
            for h in range(heads):
                row = (slot * heads + h) * length
                buffer.release((row + start) * dim, (row + length) * dim)

    def copy_positions(self, src: int, dst: int, n: int) -> None:
        """Copy positions [0, n) of row `src` into row `dst` (every layer, keys and values)."""
        for buf in (*self.k, *self.v):
            buf[dst, :, :n] = buf[src, :, :n]

    def swap_positions(self, a: int, b: int, n: int) -> None:
        """Exchange positions [0, n) of rows `a` and `b`."""
        for buf in (*self.k, *self.v):
            held = buf[a, :, :n].clone()
            buf[a, :, :n] = buf[b, :, :n]
            buf[b, :, :n] = held

    def bytes_per_position(self) -> int:
        """Memory one position of one row takes over all layers (keys and values)."""
        return sum(t.shape[1] * t.shape[3] * t.element_size() for t in (*self.k, *self.v))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0] if self.row_ids is None else self.row_ids.numel()

    def rows(self, slot_indices: Tensor | list[int]) -> "KVCache":
        """A view of some rows (slots) of this cache; writes through it land in the shared buffers."""
        idx = torch.as_tensor(slot_indices, dtype=torch.long, device=self.k[0].device).reshape(-1)
        return KVCache(self.k, self.v, idx if self.row_ids is None else self.row_ids[idx])


@dataclass
class StepPlan:
    """What every layer of one forward call shares: rotary tables, mask and cache addressing."""

    cos: Tensor | None
    sin: Tensor | None
    mask: Tensor | None  # boolean (B|1, 1, T, L), True = may attend
    causal: bool = True  # with no mask: True = square causal attention, False = attend to every key read
    cache: KVCache | None = None
    write_at: int | None = None  # every row writes at [write_at, write_at + T): a plain slice copy
    write_pos: Tensor | None = None  # else (B, T) absolute positions of the new tokens
    rows: Tensor | None = None  # (B,) cache rows addressed by this call (None: rows 0..B-1 of the buffers)
    length: int = 0  # L: cache positions read (max over rows of pos + T)
    capture: list[Tensor] | None = None  # attention probabilities, only in capture_attention
    router: list[tuple[Tensor, Tensor]] | None = None  # MoE (probs, chosen experts) for the aux loss


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # One fused matmul for [q; k; v]; its output viewed as (n_head + 2 * n_kv_head) heads.
        self.qkv = Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.qkv_bias)
        self.out = Linear(self.n_head * self.head_dim, config.d_model, bias=config.attn_out_bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor, step: StepPlan, layer: int) -> Tensor:
        B, T, _ = x.shape
        H, KV = self.n_head, self.n_kv_head
        qkv = self.qkv(x).view(B, T, H + 2 * KV, self.head_dim)
        qk, v = qkv[:, :, : H + KV], qkv[:, :, H + KV :]
        if step.cos is not None:  # rotate queries and keys in one pass
            qk = _apply_rope(qk, step.cos, step.sin)
        q, k, v = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2), v.transpose(1, 2)
        if step.cache is not None:
            k, v = self._through_cache(k, v, step, layer)
        if step.capture is not None:
            y = self._explicit(q, k, v, step)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=step.mask,
                is_causal=step.mask is None and step.causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_head != self.n_kv_head,
            )
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    @staticmethod
    def _through_cache(k: Tensor, v: Tensor, step: StepPlan, layer: int) -> tuple[Tensor, Tensor]:
        kc, vc = step.cache.k[layer], step.cache.v[layer]
        # In-place writes of the new keys/values at each row's own positions: no cache copy.
        # (`.to` is a no-op when the cache has the model's dtype.)
        if step.rows is not None:  # a subset of rows: advanced indexing
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            rows = step.rows[:, None]
            kc[rows, :, step.write_pos] = k.to(kc.dtype)
            vc[rows, :, step.write_pos] = v.to(vc.dtype)
            kc, vc = kc[step.rows, :, : step.length], vc[step.rows, :, : step.length]
        elif step.write_at is not None:  # rows 0..B-1, all at one position: a slice copy
            T = k.shape[2]
            kc[:, :, step.write_at : step.write_at + T].copy_(k)
            vc[:, :, step.write_at : step.write_at + T].copy_(v)
            kc, vc = kc[:, :, : step.length], vc[:, :, : step.length]
        else:  # rows 0..B-1 at their own positions: one scatter along the position axis
            index = step.write_pos[:, None, :, None].expand(k.shape)
            kc.scatter_(2, index, k.to(kc.dtype))
            vc.scatter_(2, index, v.to(vc.dtype))
            kc, vc = kc[:, :, : step.length], vc[:, :, : step.length]
        if kc.dtype != k.dtype:
            kc, vc = kc.to(k.dtype), vc.to(v.dtype)
        return kc, vc

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, step: StepPlan) -> Tensor:
        """Attention with the probabilities materialised, for heat maps (capture_attention)."""
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        T, L = scores.shape[-2:]
        mask = step.mask if step.mask is not None else torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        step.capture.append(probs)
        return probs @ v


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        halves, self.act = _ACTIVATIONS[config.mlp]
        self.fc = Linear(config.d_model, halves * config.d_ff, bias=config.mlp_bias)
        self.proj = Linear(config.d_ff, config.d_model, bias=config.mlp_bias)
        self.dropout = _dropout(config.dropout)

    def forward(self, x: Tensor, step: StepPlan) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class MoE(nn.Module):
    """Sparse mixture of experts with top-k routing (softmax over the top-k logits, as Mixtral)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        halves, self.act = _ACTIVATIONS[config.mlp]
        E, d, f = config.n_experts, config.d_model, config.d_ff
        self.top_k = config.n_experts_per_tok
        self.router = Linear(d, E, bias=False)
        # Experts stacked in two tensors (as transformers 5 keeps them): w_in[e] is expert e's
        # fused input projection (out, in), w_out[e] its down projection.
        self.w_in = nn.Parameter(torch.empty(E, halves * f, d))
        self.w_out = nn.Parameter(torch.empty(E, d, f))

    def forward(self, x: Tensor, step: StepPlan) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.router(x).softmax(dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        if step.router is not None:
            step.router.append((probs, chosen))
        out = torch.zeros_like(x)
        for e in range(self.w_in.shape[0]):
            token, slot = torch.where(chosen == e)
            h = self.act(F.linear(x[token], self.w_in[e]))
            out.index_add_(0, token, F.linear(h, self.w_out[e]) * weights[token, slot, None])
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = _NORMS[config.norm](config)
        self.attn = Attention(config)
        self.norm2 = _NORMS[config.norm](config)
        self.mlp = MoE(config) if config.is_moe else MLP(config)
        self.resid_dropout = _dropout(config.dropout)

    def forward(self, x: Tensor, step: StepPlan, layer: int) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.norm1(x), step, layer))
        return x + self.mlp(self.norm2(x), step)


def load_balancing_loss(router: list[tuple[Tensor, Tensor]], n_experts: int) -> Tensor:
    """Switch/Mixtral auxiliary loss over all layers' tokens: E * sum_e (fraction routed to e) * (mean prob of e)."""
    probs = torch.cat([p for p, _ in router])
    chosen = torch.cat([c for _, c in router])
    routed = F.one_hot(chosen, n_experts).float().mean(dim=0)  # (k, E)
    return (routed * probs.mean(dim=0)).sum() * n_experts


class Transformer(nn.Module):
    """A decoder-only Transformer; see the module docstring for what the config selects."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned" else None
        self.emb_dropout = _dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _NORMS[config.norm](config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.positions == "rope":
            cos, sin = _rope_tables(config)
            # Not saved with the weights: they follow from the config.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std), residual output projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, MoE):
                nn.init.normal_(module.w_in, mean=0.0, std=std)
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.w_out if self.config.is_moe else block.mlp.proj.weight, mean=0.0, std=resid_std)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        input_pos: Tensor | None = None,
        logits_at: Tensor | None = None,
        loss_only: bool = False,
    ) -> Tensor | tuple[Tensor | None, Tensor]:
        """Logits (B, T, vocab); with `targets` (B, T, -100 = ignore) also the mean loss.

        With `cache`, `input_pos` (B,) holds each row's start position: the call writes the
        new keys/values at [pos, pos + T) of each addressed row and attends to that row's
        cached prefix plus the new tokens, causally (and within the sliding window).
        `logits_at` (B,) picks one position of each row: the logits are then (B, 1, vocab),
        and the LM head runs only there (a prefill needs only each prompt's last position).
        `loss_only` (with `targets`) returns (None, loss) and runs the LM head only where a target
        is learnt: fine-tuning masks the prompts, whose vocabulary-wide logits would be wasted.
        """
        step = self._plan(idx, cache, input_pos)
        if targets is not None and self.training and self.config.is_moe and self.config.router_aux_loss_coef > 0:
            step.router = []
        x = self._hidden(idx, step)
        if logits_at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_at.to(x.device)][:, None]
        if targets is not None and loss_only and not torch.compiler.is_compiling():  # compiled: one static shape
            learnt = targets != -100
            x, targets = x[learnt], targets[learnt]
        logits = self.lm_head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        if step.router:
            loss = loss + self.config.router_aux_loss_coef * load_balancing_loss(step.router, self.config.n_experts)
        return (None if loss_only else logits), loss

    @torch.no_grad()
    def capture_attention(self, idx: Tensor) -> list[Tensor]:
        """Attention probabilities per layer, each (B, n_head, T, T), computed explicitly (for heat maps)."""
        step = self._plan(idx, None, None)
        step.capture = []
        self._hidden(idx, step)
        return step.capture

    @torch.no_grad()
    def hidden_states(self, idx: Tensor) -> Tensor:
        """Final (normalised) hidden states (B, T, d_model): what the LM head reads, e.g. for embeddings."""
        return self._hidden(idx, self._plan(idx, None, None))

    def _hidden(self, idx: Tensor, step: StepPlan) -> Tensor:
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            pos = step.write_pos if step.write_pos is not None else torch.arange(idx.shape[1], device=idx.device)
            x = x + self.pos_emb(pos)
        x = self.emb_dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, step, layer)
        return self.norm_f(x)

    def _plan(self, idx: Tensor, cache: KVCache | None, input_pos: Tensor | None) -> StepPlan:
        """Check the input and build the positions, rotary tables and mask all layers share."""
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise YunqueError(f"Model input must be a (batch, time) integer tensor, got {tuple(idx.shape)} {idx.dtype}.")
        B, T = idx.shape
        V = self.config.vocab_size
        # A one-token decode step feeds back a token the model sampled itself; the prompt was checked.
        if (cache is None or T > 1) and bool(((idx < 0) | (idx >= V)).any()):
            bad = idx[(idx < 0) | (idx >= V)][0].item()
            raise YunqueError(f"Token id {bad} is outside the model's vocabulary of {V}; check that the tokenizer matches the model.")
        window = self.config.sliding_window
        if cache is None:
            if T > self.config.max_seq_len:
                raise YunqueError(f"Sequence of {T} tokens is longer than the model's context of {self.config.max_seq_len}; shorten it.")
            cos, sin = self._rope_slice(0, T)
            mask = None
            if window is not None and window < T:
                pos = torch.arange(T, device=idx.device)
                mask = _allowed(pos[:, None], pos[None, :], window)[None, None]
            return StepPlan(cos, sin, mask)
        if input_pos is None or input_pos.shape != (B,):
            raise YunqueError(f"With a KV cache, input_pos must be a tensor of {B} start positions (one per row).")
        if cache.batch_size != B:
            raise YunqueError(f"The KV cache addresses {cache.batch_size} rows but the input has {B}; pass cache.rows(slot_indices).")
        starts = input_pos.tolist()  # one read of B numbers: the lengths below must be Python ints for slicing
        lo, hi = min(starts), max(starts)
        length = hi + T
        if length > cache.max_len or lo < 0:
            raise YunqueError(f"Positions up to {length} do not fit the KV cache of {cache.max_len}; make a larger cache or shorten the input.")
        rows = cache.row_ids
        uniform = lo == hi and rows is None
        write_pos = None
        if not uniform or self.pos_emb is not None:
            input_pos = input_pos.to(device=idx.device, dtype=torch.long)
            write_pos = input_pos[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        # The mask is built once per call (all layers share it), and only when plain attention is wrong:
        # rows at different positions, a chunk after a cached prefix, or a sliding window that cuts.
        mask, causal = None, False
        if not uniform or (window is not None and window < length) or (T > 1 and lo > 0):
            q_pos = write_pos if write_pos is not None else torch.arange(lo, length, device=idx.device)[None]
            key_pos = torch.arange(length, device=idx.device)
            mask = _allowed(q_pos[:, :, None], key_pos[None, None, :], window)[:, None]  # (B|1, 1, T, L)
        elif T > 1:
            causal = True  # a chunk from position 0: square causal attention
        if uniform:
            cos, sin = self._rope_slice(lo, T)
            return StepPlan(cos, sin, mask, causal, cache, write_at=lo, write_pos=write_pos, length=length)
        cos = None if self.rope_cos is None else self.rope_cos[write_pos][:, :, None]  # (B, T, 1, head_dim)
        sin = None if self.rope_sin is None else self.rope_sin[write_pos][:, :, None]
        return StepPlan(cos, sin, mask, causal, cache, write_pos=write_pos, rows=rows, length=length)

    def _rope_slice(self, start: int, T: int) -> tuple[Tensor | None, Tensor | None]:
        """Rotary tables for positions [start, start + T), shared by every row: views, no gather."""
        if self.rope_cos is None:
            return None, None
        return self.rope_cos[start : start + T, None], self.rope_sin[start : start + T, None]  # (T, 1, head_dim)

    # ------------------------------------------------------------------ cache
    def make_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A KV cache of `batch_size` rows (slots) and `max_len` positions (default: context); on a
        CPU its memory is committed as positions are written (yunque.model.lazymem)."""
        max_len = max_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise YunqueError(f"A KV cache of {max_len} positions exceeds the model's context of {self.config.max_seq_len}.")
        ref = self.tok_emb.weight  # float even when the linear layers are quantized
        shape = (batch_size, self.config.n_kv_head, max_len, self.config.head_dim)
        made = [lazymem.zeros(shape, dtype or ref.dtype, device or ref.device) for _ in range(2 * self.config.n_layer)]
        tensors = [t for t, _ in made]
        n = self.config.n_layer
        return KVCache(tensors[:n], tensors[n:], lazy=[b for _, b in made if b is not None])

    # ------------------------------------------------------------------ accounting
    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Parameter count. `non_embedding` leaves out the token and position embeddings and
        the LM head (as in Kaplan et al.'s scaling laws); `active` counts only the experts a
        token is routed to (n_experts_per_tok of n_experts) for MoE models."""
        c = self.config
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if active and c.is_moe:
            per_expert = sum(p[0].numel() for b in self.blocks for p in (b.mlp.w_in, b.mlp.w_out))
            n -= (c.n_experts - c.n_experts_per_tok) * per_expert
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not c.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token at context `seq_len` (default: max_seq_len).

        6 * N + 12 * n_layer * n_head * head_dim * S (Kaplan et al. 2020, PaLM appendix B), where
        N = active non-embedding parameters + the LM head matmul (d_model * vocab), and S is the
        attended length: seq_len, capped by the sliding window. Router and norms are negligible.
        """
        c = self.config
        S = seq_len or c.max_seq_len
        if c.sliding_window is not None:
            S = min(S, c.sliding_window)
        n = self.num_params(non_embedding=True, active=True) + c.d_model * c.vocab_size
        return 6.0 * n + 12.0 * c.n_layer * c.n_head * c.head_dim * S

    # ------------------------------------------------------------------ Hugging Face
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "Transformer":
        """Load a Hugging Face directory (config.json + safetensors) of a supported family."""
        # Built without memory, then given it in the final dtype and device: no random init to
        # overwrite, and no float32 copy of a bf16 checkpoint on the way (1 GB for Qwen2.5-0.5B).
        with torch.device("meta"):
            model = cls(config_from_hf(read_config(path)))
        model = model.to(dtype=dtype).to_empty(device=device)
        if model.config.tie_embeddings:  # leaving the meta device makes new parameters: tie them again
            model.lm_head.weight = model.tok_emb.weight
        if model.rope_cos is not None:
            cos, sin = _rope_tables(model.config)
            model.rope_cos.copy_(cos)
            model.rope_sin.copy_(sin)
        load_weights_into(model, path)
        return model.eval()

    def save_pretrained(self, path: str | Path, **kw: Any) -> Path:
        """Write a Hugging Face directory (config.json, model.safetensors, generation_config.json)."""
        return save_pretrained(self, path, **kw)


def _rope_tables(config: ModelConfig) -> tuple[Tensor, Tensor]:
    """The rotary cos and sin of every position and frequency, (max_seq_len, head_dim)."""
    freqs = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), rope_inv_freq(config))
    freqs = torch.cat((freqs, freqs), dim=-1)
    return freqs.cos(), freqs.sin()


def _allowed(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """Which key positions a query may attend to: causal, and within the sliding window (HF semantics)."""
    ok = k_pos <= q_pos
    if window is not None:
        ok = ok & (k_pos > q_pos - window)
    return ok
