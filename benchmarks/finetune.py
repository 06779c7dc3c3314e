"""Instruction fine-tuning, measured: a model pretrained in this run, then SFT on Alpaca examples.

    .venv/bin/python benchmarks/finetune.py                       # full fine-tuning
    .venv/bin/python benchmarks/finetune.py --method lora         # LoRA adapters on the frozen model
    .venv/bin/python benchmarks/finetune.py --method lora --base-dtype bfloat16   # QLoRA-style bf16 base
    .venv/bin/python benchmarks/finetune.py --pretrain-seconds 300 --steps 400

1. `yunque quickstart` pretrains a small model on Python's documentation (offline) for
   `--pretrain-seconds`.
2. `Sft` fine-tunes it on ../shared/data/sft/alpaca_sample_2k.json (5% held out, examples over
   the context dropped and counted) for `--steps`.
3. Before and after, on the held-out examples: the loss on the assistant's tokens, and the
   share of greedy answers (up to `--answer-tokens`) that end with the template's end-of-turn
   token, which is what makes a chat model stop. The peer is the pretrained model itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from yunque.model.lora import LoraSettings, load_adapter, merge_lora
from yunque.model.transformer import Transformer
from yunque.train.config import TrainConfig
from yunque.train.distributed import Placement
from yunque.train.loop import train
from yunque.train.sft import Sft

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft" / "alpaca_sample_2k.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-seconds", type=float, default=180)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--base-dtype", choices=["float32", "bfloat16"], default="float32", help="the frozen base's dtype (lora only)")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 full, 3e-3 lora")
    ap.add_argument("--answers", type=int, default=40, help="held-out prompts answered before and after")
    ap.add_argument("--answer-tokens", type=int, default=96)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["YUNQUE_HOME"] = str(Path(tmp) / "home")
        from yunque.cli.quickstart import quickstart
        from yunque.store import entries as store

        t0 = time.perf_counter()
        report = quickstart(Path(tmp) / "qs", train_seconds=args.pretrain_seconds, progress=False)
        entry = store.get(report.model_name)
        print(f"pretrained {report.train.get('steps')} steps in {time.perf_counter() - t0:.0f} s: val {report.train.get('val_bpb'):.3f} bits/byte")
        lr = args.lr or (1e-3 if args.method == "full" else 3e-3)
        cfg = TrainConfig(out=str(Path(tmp) / "sft"), max_steps=args.steps, batch_size=8, context=int(entry.details["context_length"]), lr=lr, warmup_steps=min(20, args.steps // 10),
                          eval_every=0, checkpoint_every=0, sample_tokens=0, seed=1)
        lora = LoraSettings(r=16, alpha=32, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) if args.method == "lora" else None
        sft = Sft(cfg, entry.path, store.chat_settings(entry), DATA, lora=lora, base_dtype=args.base_dtype)
        print(f"{len(sft.train_set)} training and {len(sft.val_set)} held-out examples; {sft.dropped + sft.val_dropped} over {cfg.context} tokens dropped")
        place = Placement(0, 0, 1, torch.device("cpu"))
        base = Transformer.from_pretrained(entry.path)
        before = sft.evaluate(base, place, contextlib.nullcontext())["val_loss"], sft.stop_share(base, args.answers, args.answer_tokens)
        t1 = time.perf_counter()
        train(cfg, progress=False, objective=sft)
        seconds = time.perf_counter() - t1
        if lora is None:
            tuned = Transformer.from_pretrained(Path(cfg.out) / "model")
        else:
            tuned = merge_lora(load_adapter(Transformer.from_pretrained(entry.path), Path(cfg.out) / "adapter"))
        after = sft.evaluate(tuned, place, contextlib.nullcontext())["val_loss"], sft.stop_share(tuned, args.answers, args.answer_tokens)
    print(f"\nSFT ({args.method}, base {args.base_dtype}, lr {lr}, {args.steps} steps of 8 examples, {seconds:.0f} s):")
    print("| model | held-out loss on answers (nats/token) | answers ending on end-of-turn |")
    print("|---|---:|---:|")
    print(f"| pretrained | {before[0]:.3f} | {before[1]:.0%} |")
    print(f"| fine-tuned | {after[0]:.3f} | {after[1]:.0%} |")


if __name__ == "__main__":
    main()
