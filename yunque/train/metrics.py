"""A run's metrics.jsonl (one JSON object per logged step and per evaluation), MFU, and the loss plot."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from yunque.fsutil import atomic_file

# Dense bf16 tensor-core peak FLOP/s per GPU, for MFU (vendor datasheets; SXM parts).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s, where known (GPUs in PEAK_FLOPS); None on a CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def step_record(step: int, tokens: int, train_loss: float, lr: float, tokens_per_s: float, elapsed: float, mfu_per_token_s: float | None) -> dict[str, Any]:
    """One metrics.jsonl line for a training step; MFU (a token per second's share of the devices'
    peak, `mfu_per_token_s`) only where the peak is known, i.e. on GPUs."""
    record: dict[str, Any] = {"step": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s, "elapsed_s": elapsed}
    if mfu_per_token_s:
        record["mfu"] = mfu_per_token_s * tokens_per_s
    return record


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Add one record as a line (a kill mid-write leaves at most a torn last line, which readers skip)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    out = []
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget what was logged after the checkpoint: those steps are trained again."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    with atomic_file(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)


def plot_metrics(metrics: str | Path, png: str | Path) -> None:
    """Train and val loss against tokens seen, with val bits per byte on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    bpb = [(r["tokens"], r["val_bpb"]) for r in records if "val_bpb" in r]  # objectives without bytes have none
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", ms=3)
    if bpb:
        right = ax.twinx()
        right.plot(*zip(*bpb), "s--", color="tab:red", ms=3, label="val bits/byte")
        right.set_ylabel("val bits per byte")
        right.legend(loc="center right")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
