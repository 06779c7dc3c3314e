"""The one device and dtype policy: which device a model runs on and in which precision.

Serving, `yunque generate` and training all ask here, so a machine with a GPU uses it everywhere
and the device is the only switch between the CPU and GPU paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from yunque.errors import YunqueError
from yunque.model.hfdir import dtype_counts

DeviceChoice = Literal["auto", "cpu", "cuda"]


def device_kind(choice: str = "auto") -> str:
    """'cuda' or 'cpu': as chosen, with 'auto' taking CUDA when PyTorch sees a GPU; a CUDA choice
    on a machine without one is a one-sentence error."""
    if choice not in ("auto", "cpu", "cuda"):
        raise YunqueError(f"Unknown device {choice!r}; choose auto, cpu or cuda.")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise YunqueError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    return choice


def inference_dtype(kind: str, stored: str | None = None) -> torch.dtype:
    """Weights for inference: bf16 on CUDA (half the bytes a decode step reads). On a CPU, a
    checkpoint stored in bf16 ("BF16", the safetensors name) stays bf16 where the CPU multiplies
    bf16 natively (AMX: a Qwen2.5-0.5B-shaped decode step 2-3x faster than in float32, prefill
    up to 8x); everything else runs in float32, whose kernels are the fast ones without native
    bf16 (int8 is the CPU's smaller form)."""
    if kind == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if stored == "BF16" and cpu_has_bf16() else torch.float32


def stored_dtype(model_dir: str | Path) -> str | None:
    """The dtype most of a checkpoint's parameters are stored in ("BF16", "F32", ...), from its headers."""
    counts = dtype_counts(model_dir)
    return max(counts, key=counts.get) if counts else None


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). There bf16 autocast trains
    small models 1.5-2.1x faster than fp32 (benchmarks/cpu_bf16_step.py); elsewhere it would be emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def training_bf16(kind: str, choice: str = "auto") -> bool:
    """Whether training autocasts to bf16: as chosen, or under 'auto' on CUDA and on CPUs with native bf16."""
    return choice == "bfloat16" or (choice == "auto" and (kind == "cuda" or cpu_has_bf16()))


def available_memory(device: str) -> int | None:
    """Bytes free for new weights: the GPU's free memory, or Linux's MemAvailable; None if unknown."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
