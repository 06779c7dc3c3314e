"""Pretraining loop: one process, or data parallel under `torchrun` (gloo on CPU, nccl on CUDA).

    cfg = resolve_config("run.toml", data="data/shakespeare", max_steps=2000)
    result = train(cfg)                       # or train(cfg, resume=True)

What a run writes under `cfg.out`:
    metrics.jsonl                  one JSON object per logged step (train loss, lr, tokens/s, MFU on
                                   GPU) and per evaluation (val loss, val bits per byte, a sample)
    checkpoints/step_NNNNNNN/      the last `keep_last` checkpoints (see yunque.checkpoint)
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
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from yunque.train.checkpoint import discard_checkpoint, latest_checkpoint, load_checkpoint, prune_checkpoints, read_state, remove_leftovers, resumable_checkpoint, save_checkpoint
from yunque.model.config import ModelConfig, preset
from yunque.train.config import TrainConfig, read_toml
from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir, atomic_file
from yunque.model.device import device_kind, training_bf16
from yunque.model.hf import family_of

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
def resolve_config(config_file: str | Path | None = None, resume: bool = False, **flags: Any) -> TrainConfig:
    """Defaults < the resumed checkpoint's config < the TOML file < flags (None flags are ignored).

    Giving a time budget without a step count means "train until the budget is spent".
    """
    given = {k: v for k, v in flags.items() if v is not None}
    from_file = read_toml(config_file) if config_file else {}
    base: dict[str, Any] = {}
    out = given.get("out", from_file.get("out"))
    if resume:
        if out is None:
            raise YunqueError("--resume needs --out (or `out` in the config file) to find the run to continue.")
        ckpt, _ = resumable_checkpoint(Path(out) / "checkpoints")
        if ckpt is None:
            raise YunqueError(f"Nothing to resume: {out} has no complete checkpoint; start the run without --resume.")
        base = read_state(ckpt)["config"]
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


def model_config(cfg: TrainConfig, vocab_size: int, eot_id: int | None = None) -> ModelConfig:
    """The preset with the run's overrides; the vocabulary (and end-of-text id) come from the data's tokenizer."""
    if cfg.model.get("vocab_size", vocab_size) != vocab_size:
        raise YunqueError(
            f"The model's vocab_size ({cfg.model['vocab_size']}) does not match the data's tokenizer ({vocab_size}); "
            "drop vocab_size from the model settings or prepare the data with the model's tokenizer."
        )
    return preset(cfg.preset, **{"max_seq_len": cfg.context, "bos_token_id": eot_id, "eos_token_id": eot_id, **cfg.model, "vocab_size": vocab_size})


# ---------------------------------------------------------------------------- schedule
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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's rule: every 2D+ tensor (matmul weights, embeddings) decays; biases and norm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def batch_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator for global micro-batch `index` of `step`: a hash of the three, so any process
    can draw any batch without replaying the ones before it."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1))
    return g


# ---------------------------------------------------------------------------- data
def open_data(path: str | Path):
    """The token shards at `path`, with a one-sentence error if they are missing."""
    from yunque.text.shards import TokenShards

    if not path:
        raise YunqueError("No training data given; pass --data DIR (a directory made by `yunque data prepare`).")
    return TokenShards(path)


def data_tokenizer(shards) -> tuple[int, str]:
    """(vocab_size, tokenizer fingerprint) recorded in the shards' metadata."""
    return int(shards.meta["vocab_size"]), str(shards.meta["tokenizer"]["fingerprint"])


def load_tokenizer(shards):
    """The tokenizer the shards were encoded with (its directory is recorded in their metadata)."""
    from yunque.text.tokenizer import Tokenizer

    path = Path(shards.meta["tokenizer"]["path"])
    if not path.is_dir():
        raise YunqueError(f"The tokenizer the data in {shards.dir} was made with ({path}) is gone; restore it or prepare the data again.")
    tokenizer = Tokenizer.from_pretrained(path)
    if tokenizer.fingerprint != shards.meta["tokenizer"]["fingerprint"]:
        raise YunqueError(f"The tokenizer at {path} has changed since the data in {shards.dir} was made; prepare the data again.")
    return tokenizer


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, shards, cfg: TrainConfig, device: torch.device, autocast: Any, world: int = 1, rank: int = 0) -> tuple[float, float, int]:
    """(mean val loss in nats/token, val bits per byte, tokens scored) over the val split.

    Bits per byte = nats over the text tokens ÷ (ln 2 × their UTF-8 bytes), as the loader
    defines it (end-of-text separators carry no bytes and are left out). Over the whole split
    the byte count is exact; with `eval_tokens` the split's bytes are scaled by the share of
    tokens scored. Under torchrun the batches are shared out between ranks and the sums all-reduced.
    """
    from yunque.text.shards import bits_per_byte

    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nats, targets, text nats, text targets
    seen = 0
    for i, (x, y, mask) in enumerate(shards.iter_eval("val", cfg.batch_size, cfg.context)):
        if cfg.eval_tokens is not None and seen >= cfg.eval_tokens:
            break
        seen += y.numel()
        if i % world != rank:
            continue
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        with autocast:
            logits = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").double()
        sums += torch.stack([nats.sum(), nats.new_tensor(y.numel()), nats[mask.flatten()].sum(), mask.sum().double()])
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    n_bytes = shards.bytes("val") * min(1.0, seen / (shards.tokens("val") - 1))
    return float(sums[0] / sums[1]), bits_per_byte(float(sums[2]), n_bytes), int(sums[1])


def sample(model: torch.nn.Module, tokenizer, n_tokens: int, seed: int, temperature: float = 0.8, top_k: int = 40) -> str:
    """A short text the model writes after an end-of-text token (yunque.infer.generate, seeded; the
    training RNG is left as it was)."""
    from yunque.infer.generate import generate_ids

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        stream = generate_ids(
            model, [tokenizer.eot_id or 0], max_new_tokens=n_tokens, temperature=temperature, top_k=top_k, seed=seed, stop_token_ids=()
        )
        ids = list(stream)
    model.train(was_training)
    return tokenizer.decode(ids)


# ---------------------------------------------------------------------------- plumbing
def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event the loop checks after each step (it then checkpoints and stops);
    a second Ctrl-C interrupts at once."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        event.set()
        signal.signal(signum, previous[signum])

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _distributed(device_kind: str) -> tuple[int, int, int]:
    """(rank, local rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if device_kind(cfg.device) == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
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


def _truncate_metrics(path: Path, step: int) -> None:
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
    val = [(r["tokens"], r["val_loss"], r["val_bpb"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="val loss", ms=3)
        bpb = ax.twinx()
        bpb.plot([v[0] for v in val], [v[2] for v in val], "s--", color="tab:red", ms=3, label="val bits/byte")
        bpb.set_ylabel("val bits per byte")
        bpb.legend(loc="center right")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _progress(enabled: bool):
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


# ---------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run (or resume) pretraining as `cfg` describes; see the module docstring for outputs."""
    cfg.validate()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    resume_from, damaged = resumable_checkpoint(ckpt_root) if resume else (None, [])
    if resume and resume_from is None:
        raise YunqueError(f"Nothing to resume: {out} has no complete checkpoint; start the run without --resume.")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports and removes
        for ckpt, problem in damaged:
            print(f"yunque: checkpoint {ckpt} is unusable ({problem}); discarded it, resuming from {resume_from.name}", file=sys.stderr)
            discard_checkpoint(ckpt)
    if not resume and latest_checkpoint(ckpt_root) is not None:
        raise YunqueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out.")

    # Everything below up to the model's construction only reads metadata: bad input fails fast.
    shards = open_data(cfg.data)
    vocab_size, fingerprint = data_tokenizer(shards)
    tokenizer = load_tokenizer(shards)
    mcfg = model_config(cfg, vocab_size, shards.eot_id)
    family_of(mcfg)  # checkpoints are Hugging Face directories: refuse a model no family can express
    if resume_from is not None:
        saved = read_state(resume_from)
        if cfg.max_steps is not None and cfg.max_steps < saved["step"]:
            raise YunqueError(f"The run in {out} is already at step {saved['step']}; pass a larger --max-steps to train further.")
        if saved["tokenizer_fingerprint"] != fingerprint:
            raise YunqueError(
                f"The data in {cfg.data} was made with a different tokenizer than the checkpoint in {resume_from}; "
                "resume with the data the run started on."
            )
        if saved["model_config"] != mcfg.to_dict():
            raise YunqueError(f"The model settings differ from those of the checkpoint in {resume_from}; resume without changing the model.")
    for split in ("train", "val"):
        if shards.tokens(split) <= cfg.context:
            raise YunqueError(
                f"The {split} split of {cfg.data} has {shards.tokens(split)} tokens, not more than the context of {cfg.context}; "
                "use a shorter --context or more data."
            )

    rank, local_rank, world = _distributed(device_kind(cfg.device))
    try:
        result = _run(cfg, shards, tokenizer, mcfg, fingerprint, resume_from, rank, local_rank, world, progress)
        if world > 1:
            # Leave together: a rank that tears gloo down while rank 0 is still writing the final
            # model makes gloo abort the process ("terminate called without an active exception").
            dist.barrier()
        return result
    finally:
        if world > 1 and dist.is_initialized():
            # Free the DDP wrapper (its reducer holds gloo work objects) while the interpreter is
            # whole: left to interpreter shutdown, gloo can abort the process the same way.
            gc.collect()
            dist.destroy_process_group()


def _accumulate(model: Any, shards: Any, cfg: TrainConfig, step: int, device: torch.device, autocast: Any, rank: int, world: int) -> torch.Tensor:
    """Forward and backward over this rank's micro-batches of `step`; returns [mean loss, 0, 0], the
    tensor the loop fills with the stop flag and rank 0's clock before its one all-reduce."""
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        x, y = shards.get_batch("train", cfg.batch_size, cfg.context, batch_generator(cfg.seed, step, micro * world + rank))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = contextlib.nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else model.no_sync()
        with sync:
            with autocast:
                _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    return torch.stack([loss_sum / cfg.grad_accum, torch.zeros((), device=device), torch.zeros((), device=device)])


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


def _step_record(step: int, tokens: int, train_loss: float, lr: float, tokens_per_s: float, elapsed: float, mfu_per_token_s: float | None) -> dict[str, Any]:
    """One metrics.jsonl line for a training step; MFU (a token per second's share of the devices'
    peak, `mfu_per_token_s`) only where the peak is known, i.e. on GPUs."""
    record: dict[str, Any] = {"step": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s, "elapsed_s": elapsed}
    if mfu_per_token_s:
        record["mfu"] = mfu_per_token_s * tokens_per_s
    return record


def _progress_fraction(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """How far the run is, by steps or by its time budget, whichever is further (at most 1)."""
    fraction = max(step / cfg.max_steps if cfg.max_steps else 0.0, elapsed / cfg.time_budget if cfg.time_budget else 0.0)
    return min(fraction, 1.0)


def _save_final_model(out: Path, model: Any, tokenizer: Any, metrics_path: Path) -> Path:
    """Write the finished model with its tokenizer to OUT/model (atomically) and plot the losses."""
    model_dir = out / "model"
    with atomic_dir(model_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    plot_metrics(metrics_path, out / "loss.png")
    return model_dir


def _run(cfg, shards, tokenizer, mcfg: ModelConfig, fingerprint: str, resume_from: Path | None, rank: int, local_rank: int, world: int, show_progress: bool) -> TrainResult:
    from yunque.model.transformer import Transformer

    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    lead = rank == 0
    device = _device(cfg, local_rank)
    use_bf16 = training_bf16(device.type, cfg.dtype)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    compile_model = cfg.compile if cfg.compile is not None else device.type == "cuda"

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )
    step, elapsed, tokens = 0, 0.0, 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer)
        step, elapsed, tokens = state["step"], state["elapsed_s"], state["tokens"]
    last_eval = elapsed  # training seconds at the last evaluation (eval_seconds)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(ckpt_root)
        if resume_from is not None:
            _truncate_metrics(metrics_path, step)
        else:
            metrics_path.unlink(missing_ok=True)

    raw = model
    if compile_model:
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    flops_per_token = raw.flops_per_token(cfg.context)
    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.context * cfg.grad_accum * world

    def state() -> dict[str, Any]:
        return {
            "tokens": tokens,
            "elapsed_s": elapsed,
            "config": cfg.to_dict(),
            "model_config": mcfg.to_dict(),
            "tokenizer_fingerprint": fingerprint,
            "world_size": world,
        }

    def checkpoint(keep_last: int | None = None) -> Path | None:
        if lead:
            return save_checkpoint(ckpt_root, step, raw, optimizer, state(), tokenizer=tokenizer, keep_last=keep_last)
        return None

    def run_eval() -> dict[str, Any]:
        val_loss, bpb, n = evaluate(raw, shards, cfg, device, autocast, world, rank)
        record = {"val_loss": val_loss, "val_bpb": bpb, "val_tokens": n}
        if lead and cfg.sample_tokens:
            record["sample"] = sample(raw, tokenizer, cfg.sample_tokens, cfg.seed)
        return record

    def done() -> bool:
        return (cfg.max_steps is not None and step >= cfg.max_steps) or (cfg.time_budget is not None and elapsed >= cfg.time_budget)

    last_ckpt = resume_from
    # A checkpoint's weights are only known good once a step computes a finite loss from them:
    # until then it is "unproven", and older checkpoints are pruned only after that proof.
    unproven: Path | None = None
    train_loss = None
    interrupted = False
    final: dict[str, Any] = {}
    window_tokens, window_time = 0, 0.0
    model.train()
    with stop_on_signals() as stop, _progress(lead and show_progress) as bar:
        task = bar.add_task("train", total=100, info="")
        while not done():
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            shared = _accumulate(model, shards, cfg, step, device, autocast, rank, world)
            # One small all-reduce carries the mean loss, any rank's stop request and rank 0's clock,
            # so every rank takes the same decisions (stop, lr) from the same numbers.
            shared[1] = float(stop.is_set())
            if world > 1:
                shared[2] = time.perf_counter() - t0 if lead else 0.0
                dist.all_reduce(shared)
                shared[0] /= world
            train_loss = float(shared[0])
            if not math.isfinite(train_loss):
                _refuse_nonfinite(train_loss, step, unproven, last_ckpt, ckpt_root)
            if unproven is not None:
                prune_checkpoints(ckpt_root, cfg.keep_last)
                unproven = None
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            dt = float(shared[2]) if world > 1 else time.perf_counter() - t0
            elapsed += dt
            window_tokens += tokens_per_step
            window_time += dt

            # Seconds count training only (every rank sees the same `elapsed`), so a time-based
            # evaluation happens at the same step on every rank and excludes evaluation time.
            evaluating = not done() and (
                (cfg.eval_every and step % cfg.eval_every == 0) or (cfg.eval_seconds and elapsed - last_eval >= cfg.eval_seconds)
            )
            if evaluating:
                last_eval = elapsed
            if step % cfg.log_every == 0 or evaluating:
                record = _step_record(step, tokens, train_loss, lr, window_tokens / max(window_time, 1e-9), elapsed,
                                      flops_per_token / (peak * world) if peak else None)
                window_tokens, window_time = 0, 0.0
                if evaluating:
                    record |= run_eval()
                    if lead:
                        bar.console.print(f"step {step}: val loss {record['val_loss']:.4f}, {record['val_bpb']:.4f} bits/byte")
                if lead:
                    _append_jsonl(metrics_path, record)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not done():
                last_ckpt = unproven = checkpoint()
            bar.update(task, completed=100 * _progress_fraction(cfg, step, elapsed), info=f"step {step} loss {train_loss:.3f} {tokens_per_step / max(dt, 1e-9):,.0f} tok/s")
            if float(shared[1]) > 0:
                interrupted = True
                break

    if not interrupted:
        final = run_eval()
        if lead:
            _append_jsonl(metrics_path, {"step": step, "tokens": tokens, "elapsed_s": elapsed, **final})
    if last_ckpt is None or read_state(last_ckpt)["step"] != step:
        last_ckpt = checkpoint(keep_last=cfg.keep_last)
    elif lead:
        prune_checkpoints(ckpt_root, cfg.keep_last)
    model_dir = _save_final_model(out, raw, tokenizer, metrics_path) if lead and not interrupted else None
    return TrainResult(
        step=step,
        tokens=tokens,
        train_loss=train_loss,
        val_loss=final.get("val_loss"),
        val_bpb=final.get("val_bpb"),
        sample=final.get("sample"),
        out=out,
        model_dir=model_dir,
        interrupted=interrupted,
    )


