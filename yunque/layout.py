"""Memory order of the linear weights: whichever one this machine's BLAS multiplies fastest.

A decode step is one matrix-vector product per weight, so it runs at the speed the BLAS
streams the weights from memory, and that speed depends on how the weight is stored. On
some CPUs (seen on AMD EPYC with MKL) `F.linear` streams a column-major weight ~1.5x
faster than the row-major one PyTorch creates; on others the row-major order is as good.
`tune_weight_order` measures both on the model's own weights once and keeps the faster.
Only strides change: the values, shapes, `state_dict` and saved files stay the same, and
the model still trains (autograd and the optimizers follow the parameters' strides).
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_TUNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
SAMPLE_BYTES = 64 << 20  # more than a CPU's last-level cache, so the timing streams from memory
MIN_GAIN = 1.05  # keep PyTorch's default order unless the other one is clearly faster


def is_column_major(weight: Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.shape[1] > 1


def set_weight_order(model: nn.Module, column_major: bool) -> None:
    """Store every `nn.Linear` weight of `model` column-major (or row-major), values unchanged."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and is_column_major(module.weight) != column_major:
                w = module.weight.data
                module.weight.data = w.t().contiguous().t() if column_major else w.contiguous()


def _stream_seconds(weights: list[Tensor], xs: list[Tensor]) -> float:
    t = time.perf_counter()
    for w, x in zip(weights, xs):
        F.linear(x, w)
    return time.perf_counter() - t


@torch.inference_mode()
def measure_weight_orders(model: nn.Module, rounds: int = 3, max_bytes: float = SAMPLE_BYTES) -> tuple[float, float]:
    """Seconds for one batch-1 `F.linear` pass over the model's weights (the first `max_bytes` of
    them), stored row-major and column-major: the floor of a decode step in each order."""
    row, total = [], 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and total < max_bytes:
            row.append(module.weight.detach().contiguous())
            total += row[-1].numel() * row[-1].element_size()
    col = [w.t().contiguous().t() for w in row]
    xs = [torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in row]
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds + 1):  # the first round warms up; the two orders alternate
        times[0].append(_stream_seconds(row, xs))
        times[1].append(_stream_seconds(col, xs))
    return min(times[0][1:]), min(times[1][1:])


def tune_weight_order(model: nn.Module) -> bool:
    """Once per model on a CPU: measure both weight orders and keep the faster; returns True if column-major."""
    weight = next((m.weight for m in model.modules() if isinstance(m, nn.Linear)), None)
    if weight is None or weight.device.type != "cpu":
        return False
    if model not in _TUNED:
        row, col = measure_weight_orders(model)
        set_weight_order(model, row > MIN_GAIN * col)
        _TUNED.add(model)
    return is_column_major(weight)
