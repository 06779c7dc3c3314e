"""When a run does what: the learning rate at a step, how far through the run it is, and when it
evaluates or stops. Pure functions of the config and the run's step and training seconds."""

from __future__ import annotations

import math

from yunque.train.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """Learning rate: linear warmup, then cosine or warmup-stable-decay (WSD) down to lr × min_lr_ratio.

    Progress through the schedule is the larger of step / schedule length and elapsed /
    time budget, so a time-budgeted run ends its decay exactly when the budget runs out.
    """
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    total = cfg.decay_steps or cfg.max_steps
    progress = 0.0
    if total:
        progress = (step - warmup) / max(1, total - warmup)
    if cfg.time_budget:
        progress = max(progress, elapsed / cfg.time_budget)
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - floor)
    stable = 1.0 - cfg.decay_frac
    if progress <= stable:
        return cfg.lr
    return floor + (cfg.lr - floor) * (1.0 - progress) / cfg.decay_frac


def finished(cfg: TrainConfig, step: int, elapsed: float) -> bool:
    """The run has reached max_steps or spent its time budget."""
    return (cfg.max_steps is not None and step >= cfg.max_steps) or (cfg.time_budget is not None and elapsed >= cfg.time_budget)


def progress_fraction(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """How far the run is, by steps or by its time budget, whichever is further (at most 1)."""
    fraction = max(step / cfg.max_steps if cfg.max_steps else 0.0, elapsed / cfg.time_budget if cfg.time_budget else 0.0)
    return min(fraction, 1.0)


def evaluation_due(cfg: TrainConfig, step: int, elapsed: float, last_eval: float) -> bool:
    """Evaluate now (mid-run; the end of the run always evaluates): every `eval_every` steps, or once
    `eval_seconds` of training have passed since the last evaluation.

    Seconds count training only, and every rank sees the same `elapsed`, so a time-based
    evaluation happens at the same step on every rank and excludes evaluation time.
    """
    if finished(cfg, step, elapsed):
        return False
    return bool((cfg.eval_every and step % cfg.eval_every == 0) or (cfg.eval_seconds and elapsed - last_eval >= cfg.eval_seconds))
