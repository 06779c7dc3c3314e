"""Training configuration: `TrainConfig`, one validated dataclass per run, and its TOML reader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from yunque.errors import YunqueError
from yunque.model.config import PRESETS, DictConfig, ModelConfig, check_types, check_value

Schedule = Literal["cosine", "wsd", "constant"]


@dataclass
class TrainConfig(DictConfig):
    """One pretraining run: data, model shape, optimizer, schedule, evaluation and checkpoints.

    A TOML file holds these fields at top level and model overrides in a `[model]` table;
    command-line flags override the file. `batch_size` is per process and micro-step, so
    the global batch is batch_size × grad_accum × processes.
    """

    _what = "training config"

    data: str = ""
    out: str = "runs/train"
    preset: str = "cpu-tiny"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides of the preset
    max_steps: int | None = 1000
    time_budget: float | None = None  # seconds of training (evaluation and checkpoints not counted)
    batch_size: int = 16
    grad_accum: int = 1
    context: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr × this
    schedule: Schedule = "cosine"
    warmup_steps: int | None = None  # None: 100, or a tenth of a shorter schedule
    decay_steps: int | None = None  # length of the schedule in steps; None means max_steps
    decay_frac: float = 0.2  # WSD: the final fraction of the schedule that decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 250  # 0 evaluates only at the end
    eval_seconds: float = 0.0  # also evaluate after this much training time since the last evaluation (0: off)
    eval_tokens: int | None = None  # cap on validation tokens; None means the whole split
    checkpoint_every: int = 500  # 0 checkpoints only at the end
    keep_last: int = 3
    log_every: int = 10
    sample_tokens: int = 48
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16
    compile: bool | None = None  # None: compile on CUDA only
    threads: int | None = None  # CPU threads for PyTorch; None keeps its default (one per core)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject inconsistent settings before anything is allocated, naming the fields involved."""
        check_types(self, "training config")
        model_hints = get_type_hints(ModelConfig)
        for name, value in self.model.items():
            if name in model_hints:
                check_value(name, value, model_hints[name], "[model] table")

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise YunqueError(f"Invalid training config: {msg}.")

        need(self.max_steps is not None or self.time_budget is not None, "set max_steps or time_budget so the run knows when to stop")
        need(self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}")
        need(self.time_budget is None or self.time_budget > 0, f"time_budget must be positive, got {self.time_budget}")
        for name in ("batch_size", "grad_accum", "context", "keep_last", "log_every"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.threads is None or self.threads > 0, f"threads must be positive, got {self.threads}")
        need(self.warmup_steps is None or self.warmup_steps >= 0, f"warmup_steps must not be negative, got {self.warmup_steps}")
        for name in ("eval_every", "eval_seconds", "checkpoint_every", "sample_tokens", "weight_decay", "grad_clip"):
            need(getattr(self, name) >= 0, f"{name} must not be negative, got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.schedule in ("cosine", "wsd", "constant"), f"schedule must be 'cosine', 'wsd' or 'constant', got {self.schedule!r}")
        need(0.0 <= self.decay_frac <= 1.0, f"decay_frac must be in [0, 1], got {self.decay_frac}")
        need(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        need(self.decay_steps is None or self.decay_steps > 0, f"decay_steps must be positive, got {self.decay_steps}")
        total = self.decay_steps or self.max_steps
        need(
            self.time_budget is not None or total is None or self.warmup < total,
            f"warmup_steps ({self.warmup_steps}) must be smaller than the schedule length ({total} steps)",
        )
        need(self.eval_tokens is None or self.eval_tokens >= self.context, f"eval_tokens ({self.eval_tokens}) must be at least context ({self.context})")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        need(self.dtype in ("auto", "float32", "bfloat16"), f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        need(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        need(isinstance(self.model, dict), "the [model] table must map ModelConfig fields to values")
        unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(ModelConfig)})
        need(not unknown, f"unknown model field(s) {', '.join(unknown)} in the [model] table")
        need(
            self.model.get("max_seq_len", self.context) >= self.context,
            f"context ({self.context}) is longer than the model's max_seq_len ({self.model.get('max_seq_len')})",
        )

    @property
    def warmup(self) -> int:
        """Warmup steps: as set, else 100, or a tenth of a schedule shorter than 1000 steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        total = self.decay_steps or self.max_steps
        return min(100, total // 10) if total else 100


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, with a one-sentence error for a missing or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise YunqueError(f"Config file {path} does not exist; pass the path of a .toml file.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise YunqueError(f"Config file {path} is not valid TOML ({e}); fix the line it names.") from e
