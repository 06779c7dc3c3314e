"""Linear layers that pose their product the way this machine's BLAS computes fastest.

A decode step multiplies a few rows (one per sequence in the batch) by every weight, and how
fast a BLAS does that depends on how the product is posed. Measured on an AMD EPYC with MKL
(docs/benchmarks.md): on 2 to 16 rows, (W @ xᵀ)ᵀ runs 1.5-3x faster than x @ Wᵀ, and a single
row is faster padded to two or four rows than multiplied alone. Which form wins, and from how
many rows, differs between CPUs and libraries, so `tune_products` measures both forms on the
model's own weights once and gives every `Linear` of the model the resulting `ProductPlan`.
Weights, shapes and values stay as they are; only the call into the BLAS changes.
"""

from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # row counts measured; beyond the last one, plain F.linear
SAMPLE_BYTES = 32 << 20  # more than a CPU's last-level cache, so the timing streams weights from memory
MIN_GAIN = 1.05  # keep F.linear unless the transposed form is clearly faster

_PLANS: "weakref.WeakKeyDictionary[nn.Module, ProductPlan | None]" = weakref.WeakKeyDictionary()  # per tuned model


@dataclass(frozen=True)
class ProductPlan:
    """For n rows: compute (W xᵀ)ᵀ with the rows zero-padded to `padded[n]`, or x Wᵀ where that is 0."""

    padded: tuple[int, ...]  # indexed by the row count; rows beyond its end use F.linear

    def rows(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """x (n, in) -> (n, out); on the transposed path a strided view of the product, not a copy."""
        n = x.shape[0]
        p = self.padded[n] if n < len(self.padded) else 0
        if not p:
            return F.linear(x, weight, bias)
        if p > n:
            x = torch.cat((x, _zeros(p - n, x.shape[1], x.dtype, x.device)))
        y = torch.mm(weight, x.t()).t()[:n]
        return y if bias is None else y + bias

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Any leading shape, as `F.linear`; the result is row-major, as attention kernels and views downstream expect."""
        y = self.rows(x.reshape(-1, x.shape[-1]), weight, bias).contiguous()
        return y.view(*x.shape[:-1], weight.shape[0])


@functools.lru_cache(maxsize=64)
def _zeros(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Padding rows, shared and never written (a fresh pad would cost an allocation per product)."""
    return torch.zeros(rows, cols, dtype=dtype, device=device)


class Linear(nn.Linear):
    """`nn.Linear` that follows its model's `ProductPlan` once `tune_products` has set one."""

    plan: ProductPlan | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.plan is None:
            return F.linear(x, self.weight, self.bias)
        return self.plan.linear(x, self.weight, self.bias)


def _seconds(fn, weights: list[Tensor], xs: list[Tensor]) -> float:
    t = time.perf_counter()
    for w, x in zip(weights, xs):
        fn(x, w)
    return time.perf_counter() - t


def _plain(x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w)


def _transposed(x: Tensor, w: Tensor) -> Tensor:
    return torch.mm(w, x.t())


@torch.inference_mode()
def measure_products(model: nn.Module, buckets: tuple[int, ...] = BUCKETS, rounds: int = 2,
                     max_bytes: float = SAMPLE_BYTES) -> dict[int, tuple[float, float]]:
    """Seconds for one pass over the model's linear weights (the first `max_bytes` of them) per
    row count: {rows: (x @ Wᵀ, (W @ xᵀ)ᵀ)}, best of `rounds` after a warm-up, the forms alternating."""
    weights, total = [], 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and total < max_bytes:
            weights.append(module.weight.detach())
            total += weights[-1].numel() * weights[-1].element_size()
    times: dict[int, tuple[float, float]] = {}
    for n in buckets:
        # Timing does not depend on the values; ones leave the global random stream untouched.
        xs = [torch.ones(n, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
        plain, transposed = [], []
        for _ in range(rounds + 1):
            plain.append(_seconds(_plain, weights, xs))
            transposed.append(_seconds(_transposed, weights, xs))
        times[n] = (min(plain[1:]), min(transposed[1:]))
    return times


def plan_from(times: dict[int, tuple[float, float]]) -> ProductPlan:
    """The plan that, for each row count, takes the fastest measured way: plain, or transposed on
    that count rounded up to any measured bucket (padding costs only the extra rows' arithmetic)."""
    buckets = sorted(times)
    padded = [0]
    for n in range(1, buckets[-1] + 1):
        own = next(b for b in buckets if b >= n)
        cost, best = min((times[b][1], b) for b in buckets if b >= n)
        padded.append(best if cost * MIN_GAIN < times[own][0] else 0)
    return ProductPlan(tuple(padded))


def tune_products(model: nn.Module) -> ProductPlan | None:
    """Once per model on a CPU: measure, then give every `Linear` of `model` the plan (None elsewhere)."""
    if model in _PLANS:
        return _PLANS[model]
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    plan = None
    if layers and layers[0].weight.device.type == "cpu":
        plan = plan_from(measure_products(model))
        for layer in layers:
            layer.plan = plan
    _PLANS[model] = plan
    return plan
