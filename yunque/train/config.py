"""Training configuration: `TrainConfig`, one validated dataclass per run, and its TOML reader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from yunque.errors import YunqueError
from yunque.model.config import PRESETS, DictConfig, ModelConfig, check_types, check_value

Schedule = Literal["cosine", "wsd", "constant"]


def _setting(default: Any, help: str) -> Any:
    """A TrainConfig field with its one line of help: `yunque train` makes each field a flag with it."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig(DictConfig):
    """One pretraining run: data, model shape, optimizer, schedule, evaluation and checkpoints.

    A TOML file holds these fields at top level and model overrides in a `[model]` table;
    command-line flags (one per field, `--max-steps` for max_steps) override the file. `batch_size` is per process and micro-step, so
    the global batch is batch_size × grad_accum × processes.
    """

    _what = "training config"

    data: str = _setting("", "Token shard directory made by `yunque data prepare`.")
    out: str = _setting("runs/train", "Run directory: metrics.jsonl, checkpoints/, model/, loss.png.")
    preset: str = _setting("cpu-tiny", "Model preset, e.g. cpu-tiny, cpu-small, llama-tiny, gpt2.")
    model: dict[str, Any] = field(  # ModelConfig overrides of the preset
        default_factory=dict, metadata={"help": "Model override FIELD=VALUE (repeatable), e.g. --model n_layer=6."}
    )
    max_steps: int | None = _setting(1000, "Optimizer steps to train for.")
    time_budget: float | None = _setting(None, "Seconds of training, then evaluate and save (the schedule decays to fit).")
    batch_size: int = _setting(16, "Sequences per process per micro-step.")
    grad_accum: int = _setting(1, "Micro-steps per optimizer step (global batch = batch × accum × processes).")
    context: int = _setting(256, "Tokens per training sequence.")
    lr: float = _setting(1e-3, "Peak learning rate.")
    min_lr_ratio: float = _setting(0.1, "The schedule ends at lr × this (0 decays to zero).")
    schedule: Schedule = _setting("cosine", "cosine, wsd (warmup-stable-decay) or constant.")
    warmup_steps: int | None = _setting(None, "Linear warmup steps (default: 100, or a tenth of a shorter run).")
    decay_steps: int | None = _setting(None, "Schedule length in steps (default: --max-steps).")
    decay_frac: float = _setting(0.2, "WSD: the final fraction of the schedule that decays.")
    weight_decay: float = _setting(0.1, "AdamW weight decay of matrices and embeddings.")
    beta1: float = _setting(0.9, "AdamW beta1 (decay of the gradient's running mean).")
    beta2: float = _setting(0.95, "AdamW beta2 (decay of the squared gradient's running mean).")
    grad_clip: float = _setting(1.0, "Clip the gradient norm to this (0: no clipping).")
    eval_every: int = _setting(250, "Evaluate every N steps (0: only at the end).")
    eval_seconds: float = _setting(0.0, "Also evaluate after every N seconds of training (0: off).")
    eval_tokens: int | None = _setting(None, "Cap on validation tokens per evaluation (default: the whole split).")
    checkpoint_every: int = _setting(500, "Checkpoint every N steps (0: only at the end).")
    keep_last: int = _setting(3, "Checkpoints to keep.")
    log_every: int = _setting(10, "Append train metrics every N steps.")
    sample_tokens: int = _setting(48, "Tokens of sample text at each evaluation (0: none).")
    seed: int = _setting(1337, "Seed for initialisation and batch sampling.")
    device: Literal["auto", "cpu", "cuda"] = _setting("auto", "cpu or cuda (default: cuda when available).")
    dtype: Literal["auto", "float32", "bfloat16"] = _setting(
        "auto", "float32 or bfloat16 autocast (default: bf16 on CUDA and on CPUs with native bf16, else fp32)."
    )
    compile: bool | None = _setting(None, "torch.compile the model (default: on CUDA only).")
    threads: int | None = _setting(None, "CPU threads for PyTorch (default: one per core).")

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
