"""The training loop over an Objective: one process, or data parallel under `torchrun` (see train.distributed).

    cfg = resolve_config("run.toml", data="data/shakespeare", max_steps=2000)
    result = train(cfg)                       # or train(cfg, resume=True)

What a run writes under `cfg.out`:
    metrics.jsonl                  one JSON object per logged step (train loss, lr, tokens/s, MFU on
                                   GPU) and per evaluation (val loss, val bits per byte, a sample)
    checkpoints/step_NNNNNNN/      the last `keep_last` checkpoints (see yunque.train.checkpoint)
    model/                         the final model in Hugging Face layout, with its tokenizer
    loss.png                       the loss curves

Exact resume: every batch is drawn from a generator seeded by (seed, step, micro-batch index),
so the data position is the step number itself; with weights, AdamW moments and the torch RNG
restored, a resumed CPU run reproduces the uninterrupted run's losses bit for bit. The same
seeding makes each torchrun rank draw distinct batches and makes N processes with batch B see
exactly the batches one process sees with batch B and N-fold gradient accumulation.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir
from yunque.model.config import ModelConfig
from yunque.model.device import training_bf16
from yunque.model.hf import family_of
from yunque.model.lora import adapters, write_adapter_files
from yunque.train.checkpoint import discard_checkpoint, latest_checkpoint, load_checkpoint, prune_checkpoints, read_state, remove_leftovers, resumable_checkpoint, save_checkpoint
from yunque.train.config import TrainConfig, read_toml
from yunque.train.distributed import Placement, all_reduce_, join, launched_rank, leave
from yunque.train.metrics import append_metrics, peak_flops, plot_metrics, step_record, truncate_metrics
from yunque.train.objectives import NextToken, Objective
from yunque.train.schedule import evaluation_due, finished, lr_at, progress_fraction
from yunque.train.signals import stop_on_signals


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    sample: str | None
    out: Path
    model_dir: Path | None
    interrupted: bool = False


# ---------------------------------------------------------------------------- config
def resolve_config(config_file: str | Path | None = None, resume: bool = False, defaults: dict[str, Any] | None = None, **flags: Any) -> TrainConfig:
    """TrainConfig's defaults < `defaults` (a command's own, e.g. fine-tuning's) < the resumed
    checkpoint's config < the TOML file < flags (None flags are ignored).

    Giving a time budget without a step count means "train until the budget is spent".
    """
    given = {k: v for k, v in flags.items() if v is not None}
    from_file = read_toml(config_file) if config_file else {}
    base: dict[str, Any] = dict(defaults or {})
    out = given.get("out", from_file.get("out", base.get("out")))
    if resume:
        if out is None:
            raise YunqueError("--resume needs --out (or `out` in the config file) to find the run to continue.")
        ckpt, _ = resumable_checkpoint(Path(out) / "checkpoints")
        if ckpt is None:
            raise YunqueError(f"Nothing to resume: {out} has no complete checkpoint; start the run without --resume.")
        base = {**base, **read_state(ckpt)["config"]}
    merged = {**base, **from_file, **given}
    merged["model"] = {**base.get("model", {}), **from_file.get("model", {}), **given.get("model", {})}
    if "time_budget" in {**from_file, **given} and "max_steps" not in {**from_file, **given}:
        merged["max_steps"] = None
    return TrainConfig.from_dict(merged)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["n_layer=6", "mlp=swiglu"]` -> `{"n_layer": 6, "mlp": "swiglu"}`: values read as TOML, else as text."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise YunqueError(f"Model override {item!r} is not FIELD=VALUE; write it like --model n_layer=6.")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


# ---------------------------------------------------------------------------- optimizer
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's rule: every 2D+ tensor (matmul weights, embeddings) decays; biases and norm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


# ---------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, objective: Objective | None = None) -> TrainResult:
    """Run (or resume) training toward `objective` (next-token pretraining on `cfg.data` when not
    given) as `cfg` describes; see the module docstring for outputs."""
    cfg.validate()
    resume_from = _resume_point(cfg, resume)
    # Everything below up to the model's construction only reads metadata: bad input fails fast.
    objective = objective if objective is not None else NextToken(cfg)
    mcfg = objective.model_config()
    family_of(mcfg)  # checkpoints are Hugging Face directories: refuse a model no family can express
    if resume_from is not None:
        _check_resumable(cfg, read_state(resume_from), resume_from, objective.fingerprint, mcfg)
    place = join(cfg.device)
    completed = False
    try:
        result = _Run(cfg, objective, mcfg, place, resume_from).run(progress)
        completed = True
        return result
    finally:
        leave(place, completed)


def _resume_point(cfg: TrainConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (damaged newer ones are reported and discarded), or None for a
    fresh run, which must not overwrite an existing one."""
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    if not resume:
        if latest_checkpoint(ckpt_root) is not None:
            raise YunqueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out.")
        return None
    resume_from, damaged = resumable_checkpoint(ckpt_root)
    if resume_from is None:
        raise YunqueError(f"Nothing to resume: {out} has no complete checkpoint; start the run without --resume.")
    if launched_rank() == 0:  # under torchrun, rank 0 alone reports and removes
        for ckpt, problem in damaged:
            print(f"yunque: checkpoint {ckpt} is unusable ({problem}); discarded it, resuming from {resume_from.name}", file=sys.stderr)
            discard_checkpoint(ckpt)
    return resume_from


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], resume_from: Path, fingerprint: str, mcfg: ModelConfig) -> None:
    """A resume continues the same run: more steps, the same tokenizer, the same model."""
    if cfg.max_steps is not None and cfg.max_steps < saved["step"]:
        raise YunqueError(f"The run in {cfg.out} is already at step {saved['step']}; pass a larger --max-steps to train further.")
    if saved["tokenizer_fingerprint"] != fingerprint:
        raise YunqueError(
            f"The data in {cfg.data or 'this run'} was made with a different tokenizer (or other LoRA settings) than the checkpoint in "
            f"{resume_from}; resume with the data and settings the run started with."
        )
    if saved["model_config"] != mcfg.to_dict():
        raise YunqueError(f"The model settings differ from those of the checkpoint in {resume_from}; resume without changing the model.")


def _refuse_nonfinite(train_loss: float, step: int, unproven: Path | None, last_ckpt: Path | None, ckpt_root: Path) -> None:
    """Stop on a NaN/inf loss: the unproven checkpoint (saved since the last finite loss) is discarded,
    and the error names the last good one, or says there is none."""
    if unproven is not None:
        discard_checkpoint(unproven)
        last_ckpt = latest_checkpoint(ckpt_root)
    if last_ckpt is None:
        raise YunqueError(
            f"Training stopped at step {step + 1} because the loss became {train_loss} before any checkpoint "
            "was saved; lower --lr or raise --warmup-steps and start again."
        )
    raise YunqueError(
        f"Training stopped at step {step + 1} because the loss became {train_loss}; the last good checkpoint, "
        f"{last_ckpt}, is kept: lower --lr or raise --warmup-steps and continue with --resume."
    )


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


class _Run:
    """One run in progress: the model and optimizer on this rank, its counters, and the steps that
    make a run (train a step, log, evaluate, checkpoint, finish), each a method named for its job."""

    def __init__(self, cfg: TrainConfig, objective: Objective, mcfg: ModelConfig, place: Placement, resume_from: Path | None) -> None:
        self.cfg, self.objective, self.mcfg, self.place = cfg, objective, mcfg, place
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        device = place.device
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_bf16(device.type, cfg.dtype))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.raw = objective.build_model(device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.raw, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
        )
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        if resume_from is not None:
            state = load_checkpoint(resume_from, self.raw, self.optimizer)
            self.step, self.elapsed, self.tokens = state["step"], state["elapsed_s"], state["tokens"]
        self.last_eval = self.elapsed  # training seconds at the last evaluation (eval_seconds)
        self.last_ckpt = resume_from
        # A checkpoint's weights are only known good once a step computes a finite loss from them:
        # until then it is "unproven", and older checkpoints are pruned only after that proof.
        self.unproven: Path | None = None
        self.train_loss: float | None = None
        self.window_tokens, self.window_time = 0, 0.0
        self.model = self._wrap(self.raw)
        self.tokens_per_step = cfg.batch_size * cfg.context * cfg.grad_accum * place.world
        peak = peak_flops(device)
        self.mfu_per_token_s = self.raw.flops_per_token(cfg.context) / (peak * place.world) if peak else None
        if place.lead:
            self._prepare_outputs(resume_from is not None)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the steps run: compiled (by default on CUDA) and wrapped for data parallelism."""
        compile_model = self.cfg.compile if self.cfg.compile is not None else self.place.device.type == "cuda"
        if compile_model:
            model = torch.compile(model)
        if self.place.world > 1:
            model = DistributedDataParallel(model, device_ids=[self.place.local_rank] if self.place.device.type == "cuda" else None)
        return model

    def _prepare_outputs(self, resumed: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.ckpt_root)
        if resumed:
            truncate_metrics(self.metrics_path, self.step)
        else:
            self.metrics_path.unlink(missing_ok=True)

    def run(self, show_progress: bool) -> TrainResult:
        """Train until done or stopped by a signal, then evaluate, checkpoint and save the model."""
        interrupted = False
        self.model.train()
        with stop_on_signals() as stop, _progress_bar(self.place.lead and show_progress) as bar:
            task = bar.add_task("train", total=100, info="")
            while not finished(self.cfg, self.step, self.elapsed):
                lr, dt, stop_requested = self.train_step(stop)
                self.log(lr, bar)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and not finished(self.cfg, self.step, self.elapsed):
                    self.last_ckpt = self.unproven = self.checkpoint()
                info = f"step {self.step} loss {self.train_loss:.3f} {self.tokens_per_step / max(dt, 1e-9):,.0f} tok/s"
                bar.update(task, completed=100 * progress_fraction(self.cfg, self.step, self.elapsed), info=info)
                if stop_requested:
                    interrupted = True
                    break
        return self.finish(interrupted)

    def train_step(self, stop: threading.Event) -> tuple[float, float, bool]:
        """One optimizer step: (its lr, its seconds on rank 0's clock, whether any rank asked to stop)."""
        t0 = time.perf_counter()
        lr = lr_at(self.cfg, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # One small all-reduce carries the mean loss, any rank's stop request and rank 0's clock,
        # so every rank takes the same decisions (stop, lr) from the same numbers.
        loss = self._accumulate()
        shared = torch.stack([loss, loss.new_tensor(float(stop.is_set())), loss.new_zeros(())])
        if self.place.world > 1:
            shared[2] = time.perf_counter() - t0 if self.place.lead else 0.0
            all_reduce_(shared, self.place)
            shared[0] /= self.place.world
        self.train_loss = float(shared[0])
        if not math.isfinite(self.train_loss):
            _refuse_nonfinite(self.train_loss, self.step, self.unproven, self.last_ckpt, self.ckpt_root)
        if self.unproven is not None:
            prune_checkpoints(self.ckpt_root, self.cfg.keep_last)
            self.unproven = None
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        dt = float(shared[2]) if self.place.world > 1 else time.perf_counter() - t0
        self.elapsed += dt
        self.window_tokens += self.tokens_per_step
        self.window_time += dt
        return lr, dt, float(shared[1]) > 0

    def _accumulate(self) -> torch.Tensor:
        """Forward and backward over this rank's micro-batches of the step; the mean loss (detached)."""
        cfg, place = self.cfg, self.place
        loss_sum = torch.zeros((), device=place.device)
        for micro in range(cfg.grad_accum):
            batch = self.objective.batch(self.step, micro * place.world + place.rank, place.device)
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if place.world == 1 or last else self.model.no_sync():
                with self.autocast:
                    loss = self.objective.loss(self.model, batch)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
        return loss_sum / cfg.grad_accum

    def log(self, lr: float, bar: Any) -> None:
        """Every `log_every` steps, and at each evaluation, a metrics record (rank 0 writes it)."""
        evaluating = evaluation_due(self.cfg, self.step, self.elapsed, self.last_eval)
        if evaluating:
            self.last_eval = self.elapsed
        if self.step % self.cfg.log_every != 0 and not evaluating:
            return
        tokens_per_s = self.window_tokens / max(self.window_time, 1e-9)
        record = step_record(self.step, self.tokens, self.train_loss, lr, tokens_per_s, self.elapsed, self.mfu_per_token_s)
        self.window_tokens, self.window_time = 0, 0.0
        if evaluating:
            record |= self.evaluate()
            if self.place.lead:
                bar.console.print(f"step {self.step}: {self.objective.report(record)}")
        if self.place.lead:
            append_metrics(self.metrics_path, record)

    def evaluate(self) -> dict[str, Any]:
        return self.objective.evaluate(self.raw, self.place, self.autocast)

    def state(self) -> dict[str, Any]:
        """What a checkpoint records beside the weights, for resume and for its checks."""
        return {
            "tokens": self.tokens,
            "elapsed_s": self.elapsed,
            "config": self.cfg.to_dict(),
            "model_config": self.mcfg.to_dict(),
            "tokenizer_fingerprint": self.objective.fingerprint,
            "world_size": self.place.world,
        }

    def checkpoint(self, keep_last: int | None = None) -> Path | None:
        """Save a checkpoint of this step (rank 0 only; other ranks get None)."""
        if not self.place.lead:
            return None
        return save_checkpoint(self.ckpt_root, self.step, self.raw, self.optimizer, self.state(), tokenizer=self.objective.tokenizer, keep_last=keep_last)

    def finish(self, interrupted: bool) -> TrainResult:
        """The final evaluation (unless interrupted), a checkpoint of the last step, and the final model."""
        final: dict[str, Any] = {}
        if not interrupted:
            final = self.evaluate()
            if self.place.lead:
                append_metrics(self.metrics_path, {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed, **final})
        if self.last_ckpt is None or read_state(self.last_ckpt)["step"] != self.step:
            self.last_ckpt = self.checkpoint(keep_last=self.cfg.keep_last)
        elif self.place.lead:
            prune_checkpoints(self.ckpt_root, self.cfg.keep_last)
        model_dir = self._save_final_model() if self.place.lead and not interrupted else None
        return TrainResult(
            step=self.step,
            tokens=self.tokens,
            train_loss=self.train_loss,
            val_loss=final.get("val_loss"),
            val_bpb=final.get("val_bpb"),
            sample=final.get("sample"),
            out=self.out,
            model_dir=model_dir,
            interrupted=interrupted,
        )

    def _save_final_model(self) -> Path:
        """Write the finished model with its tokenizer to OUT/model (a LoRA run: its adapter to
        OUT/adapter, PEFT's format), atomically, and plot the losses."""
        lora = bool(adapters(self.raw))
        model_dir = self.out / ("adapter" if lora else "model")
        with atomic_dir(model_dir, overwrite=True) as tmp:
            if lora:
                write_adapter_files(self.raw, tmp)
            else:
                self.raw.save_pretrained(tmp)
            self.objective.tokenizer.save_pretrained(tmp)
        plot_metrics(self.metrics_path, self.out / "loss.png")
        return model_dir
