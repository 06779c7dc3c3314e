"""CPU speedrun: the best validation bits per byte on tinyshakespeare in a fixed training budget.

    python benchmarks/cpu_speedrun.py                       # yunque's speedrun config, 180 s
    python benchmarks/cpu_speedrun.py --reference           # ... then nanoGPT's CPU "baby" config, same trainer
    python benchmarks/cpu_speedrun.py --budget 20 --vocab 1024 --model n_layer=6 --lr 2e-3   # explore

The text is split as nanoGPT splits it (first 90% train, last 10% validation; yunque's
`prepare` moves the cut to the next line end, 2 bytes later). The tokenizer and shards are
made beforehand and cached under --work; only training counts against the budget (the
trainer's --time-budget excludes evaluation). Validation bits per byte is over the whole
validation split, so it compares fairly across tokenizers. Reference: nanoGPT's baby config
(char-level, 4 layers, width 128, context 64, batch 12) reached 2.519 bpb in 180 s on an idle
machine of this kind; the target for yunque is <= 2.27.

The reference run goes through yunque's trainer with nanoGPT's hyperparameters (GPT-2 family,
with biases since Hugging Face's gpt2 has them, lr 1e-3 cosine to 1e-4 over 4000 steps, warmup 100, beta2 0.99, fp32) and a
byte-level tokenizer with no merges (one token per character on this ASCII text). Under a time
budget the schedule finishes its decay when the budget runs out, which favours the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from yunque.cli.quickstart import TRAIN_SETTINGS

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

# What yunque runs: the quickstart's training settings (chosen by the experiments recorded in
# docs/benchmarks.md) with a 512-token BPE vocabulary; dtype "auto" is bf16 on CPUs with native bf16.
SPEEDRUN = dict(vocab=512, **TRAIN_SETTINGS)
# nanoGPT config/train_shakespeare_char.py with its README's CPU overrides.
BABY = dict(
    vocab=272,
    preset="gpt2",
    model=dict(n_layer=4, n_head=4, d_model=128),  # GPT-2 keeps its biases (nanoGPT drops them): HF's gpt2 needs them
    batch_size=12,
    context=64,
    lr=1e-3,
    schedule="cosine",
    min_lr_ratio=0.1,
    warmup_steps=100,
    max_steps=4000,
    weight_decay=0.1,
    beta2=0.99,
    dtype="float32",
)


def shards(work: Path, vocab: int) -> Path:
    """Tokenizer + shards for `vocab`, made once and cached (not timed)."""
    from yunque.text.shards import prepare
    from yunque.text.tokenizer import Tokenizer

    data = work / f"data{vocab}"
    if not (data / "meta.json").is_file():
        Tokenizer.train([SHAKESPEARE], vocab, show_progress=False).save_pretrained(work / f"tok{vocab}")
        prepare([SHAKESPEARE], work / f"tok{vocab}", data, val_fraction=0.1, force=True, progress=False)
    return data


def run(name: str, setup: dict, budget: float, work: Path, threads: int | None, seed: int, steps: int | None = None) -> dict:
    """Train one config for `budget` seconds (or exactly `steps` steps) and score it on the whole val split."""
    from yunque.train.config import TrainConfig
    from yunque.train.loop import train

    setup = dict(setup)
    data = shards(work, setup.pop("vocab"))
    max_steps = setup.pop("max_steps", None)
    stop = dict(max_steps=steps, time_budget=None) if steps else dict(max_steps=max_steps, time_budget=budget)
    cfg = TrainConfig(
        data=str(data), out=str(work / f"run-{name}-{int(time.time())}"), eval_every=0, checkpoint_every=0, keep_last=1,
        log_every=50, sample_tokens=64, seed=seed, threads=threads, device="cpu", **stop, **setup,
    )
    load, cpu0 = os.getloadavg()[0], time.process_time()
    result = train(cfg, progress=sys.stdout.isatty())
    return dict(
        name=name, steps=result.step, tokens=result.tokens, bpb=result.val_bpb, loss=result.val_loss, load=load,
        sample=result.sample, cpu_s=time.process_time() - cpu0,
    )


def main() -> None:
    import torch

    from yunque.train.loop import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per run")
    ap.add_argument("--work", type=Path, default=Path("runs/cpu_speedrun"), help="cache of tokenizers, shards and runs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--steps", type=int, default=None, help="train a fixed number of steps instead (for exploring on a loaded machine)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--reference", action="store_true", help="also run nanoGPT's baby config through yunque's trainer")
    ap.add_argument("--reference-only", action="store_true", help="run only the baby config")
    ap.add_argument("--vocab", type=int, help="override the speedrun's BPE vocabulary size")
    ap.add_argument("--model", action="append", default=[], help="override a model field, FIELD=VALUE (repeatable)")
    for flag in ("batch-size", "context", "warmup-steps"):
        ap.add_argument(f"--{flag}", type=int)
    for flag in ("lr", "decay-frac", "weight-decay", "beta2", "min-lr-ratio"):
        ap.add_argument(f"--{flag}", type=float)
    for flag in ("schedule", "dtype", "preset"):
        ap.add_argument(f"--{flag}")
    args = ap.parse_args()
    if not SHAKESPEARE.is_file():
        sys.exit(f"{SHAKESPEARE} not found: clone the project with ../shared beside it")

    setup = dict(SPEEDRUN)
    for key in ("vocab", "batch_size", "context", "warmup_steps", "lr", "decay_frac", "weight_decay", "beta2", "min_lr_ratio", "schedule", "dtype", "preset"):
        if getattr(args, key) is not None:
            setup[key] = getattr(args, key)
    setup["model"] = {**setup["model"], **parse_overrides(args.model)}
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [] if args.reference_only else [("yunque", setup)]
    if args.reference or args.reference_only:
        runs.append(("nanogpt-baby", BABY))
    rows = [run(name, s, args.budget, args.work, args.threads, args.seed, args.steps) for name, s in runs]

    print(f"\nCPU speedrun: tinyshakespeare, {args.budget:.0f} s of training, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'config':<14}{'steps':>7}{'tokens':>11}{'val loss':>10}{'val bpb':>9}{'cpu s':>8}{'load':>6}")
    for r in rows:
        print(f"{r['name']:<14}{r['steps']:>7}{r['tokens']:>11,}{r['loss']:>10.4f}{r['bpb']:>9.4f}{r['cpu_s']:>8.0f}{r['load']:>6.1f}")
    if len(rows) == 2:
        print(f"yunque bpb / baby bpb: {rows[0]['bpb'] / rows[1]['bpb']:.3f}")
    print("nanoGPT baby, idle machine (reference): 2.519 bpb; target <= 2.27")
    print(f"sample ({rows[0]['name']}): {rows[0]['sample']!r}")
    print(f"setup: {setup}")


if __name__ == "__main__":
    main()
