"""LoRA training steps: yunque against peft + transformers on the same model, rank and targets.

    .venv/bin/python benchmarks/lora_step.py [--rounds 3] [--steps 4] [--batch 8] [--dtype bfloat16]

The model is SmolLM2-135M's exact config and tokenizer (../shared/data/configs), random weights
saved once by transformers in float32 and loaded by both. LoRA r=8, alpha 16, dropout 0.05 on
all seven projections (q, k, v, o, gate, up, down), AdamW on the adapters only. The batch is
real fine-tuning data: `--batch` examples of ../shared/data/sft/alpaca_sample_2k.json rendered
with SmolLM2's chat template by `Sft`, right-padded, the loss on the answers only (-100
elsewhere). A second workload learns every position of the same batch (as continued
pretraining would). One step is forward, that loss, backward and the optimizer's step. Each side runs
as it would in its own fine-tuning: yunque's model computes the loss itself (`loss_only`, the
LM head only where an answer token is learnt), transformers gives the logits of every position
and the loss is cross-entropy over them, ignoring -100, as its causal-LM loss does. With
`--dtype bfloat16` both sides keep the frozen base in bf16 (QLoRA-style) and the adapters in
float32 (yunque's `--base-dtype bfloat16`; PEFT's default `autocast_adapter_dtype`).

Each measurement runs in a fresh process, so the memory figure is that side's own: the peak
resident memory during the timed steps (the kernel's high-water mark, reset after loading),
and that peak over the memory held after loading. Sides alternate in rounds (yunque, peft,
yunque, ...) because the machine is shared; the table shows medians and the ratio. Before
training, each side's loss on the batch in eval mode must agree (same weights, same function),
and the trainable parameter counts must be equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = SHARED / "configs" / "SmolLM2-135M-Instruct"
DATA = SHARED / "sft" / "alpaca_sample_2k.json"
WORKLOADS = {"answers": "answers only (SFT)", "every": "every position"}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA, DROPOUT = 8, 16, 0.05


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _model(side: str, base: Path, dtype_name: str):
    """The side's model with adapters on TARGETS, and its loss on a batch (x, y with -100 = not learnt)."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    if side == "yunque":
        from yunque.model.lora import LoraSettings, add_lora
        from yunque.model.transformer import Transformer

        model = add_lora(Transformer.from_pretrained(base, dtype=dtype), LoraSettings(R, ALPHA, DROPOUT, TARGETS))
        return model, lambda x, y: model(x, y, loss_only=True)[1]
    import peft
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
    model = peft.get_peft_model(hf, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    return model, lambda x, y: F.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


def worker(side: str, base: Path, steps: int, workload: str, dtype: str) -> dict:
    """Time `steps` LoRA steps of one side in this process; what the parent tabulates."""
    import torch

    torch.manual_seed(0)
    model, loss_of = _model(side, base, dtype)
    batch = torch.load(base / "batch.pt")
    x, y = batch["x"], batch[workload]

    model.eval()
    with torch.no_grad():
        eval_loss = float(loss_of(x, y))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        loss_of(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: the optimizer's state and the allocator's pools
    held = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to what is held now
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"times": times, "peak_mib": _kib("VmHWM") / 1024, "over_mib": (_kib("VmHWM") - held) / 1024, "held_mib": held / 1024,
            "trainable": sum(p.numel() for p in trainable), "eval_loss": eval_loss, "shape": list(x.shape), "learnt": int((y != -100).sum())}


def _save_base(path: Path, batch_size: int) -> None:
    """The random model with SmolLM2's tokenizer and template, and one fine-tuning batch (batch.pt)."""
    import shutil

    import torch
    import transformers

    from yunque.store.chat import model_chat_settings
    from yunque.store.modelfile import Modelfile
    from yunque.train.config import TrainConfig
    from yunque.train.sft import Sft

    config = transformers.AutoConfig.from_pretrained(CONFIG)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.05)  # wide enough that the loss depends on the weights
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(CONFIG / name, path / name)
    cfg = TrainConfig(out=str(path / "run"), context=512, batch_size=batch_size, max_steps=1, warmup_steps=0)
    sft = Sft(cfg, path, model_chat_settings(path, Modelfile(from_=str(path))), DATA, lora_tokens="none")
    x, y = sft.batch(0, 0, torch.device("cpu"))
    every = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)  # the next token at every position
    torch.save({"x": x, "answers": y, "every": every}, path / "batch.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    ap.add_argument("--batch", type=int, default=8, help="examples per step")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the frozen base's dtype on both sides")
    ap.add_argument("--worker", choices=["yunque", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base, args.steps, args.workload, args.dtype)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        _save_base(base, args.batch)
        runs: dict[tuple[str, str], list[dict]] = {(w, side): [] for w in WORKLOADS for side in ("yunque", "peft")}
        for _ in range(args.rounds):
            for workload, side in runs:
                cmd = [sys.executable, __file__, "--worker", side, "--workload", workload, "--base", str(base), "--steps", str(args.steps), "--dtype", args.dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout
                runs[workload, side].append(json.loads(out.strip().splitlines()[-1]))
    report(runs, args)


def report(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    first = runs["answers", "yunque"][0]
    (b, t), learnt = first["shape"], first["learnt"]
    table = Table(title=f"LoRA r={R} on {len(TARGETS)} projections, SmolLM2-135M shape, {args.dtype} base, {b} Alpaca examples padded to {t} tokens "
                        f"({learnt:,} answer tokens), {first['trainable']:,} trainable parameters each; medians of {args.rounds} x {args.steps} steps",
                  title_justify="left")
    for column in ("loss on", "", "step (s)", "tokens/s", "peak RSS (MiB)", "peak over loaded (MiB)"):
        table.add_column(column, justify="left" if column in ("loss on", "") else "right")
    for workload, what in WORKLOADS.items():
        ours, theirs = runs[workload, "yunque"], runs[workload, "peft"]
        assert ours[0]["trainable"] == theirs[0]["trainable"], (ours[0]["trainable"], theirs[0]["trainable"])
        a, c = ours[0]["eval_loss"], theirs[0]["eval_loss"]
        tolerance = 1e-4 if args.dtype == "float32" else 1e-2  # bf16 products round differently on each side
        assert abs(a - c) <= tolerance * abs(c), f"{workload}: the sides compute different losses ({a} vs {c})"
        step = {side: statistics.median(x for r in rs for x in r["times"]) for side, rs in (("yunque", ours), ("peft", theirs))}
        mem = {side: {k: statistics.median(r[k] for r in rs) for k in ("peak_mib", "over_mib")} for side, rs in (("yunque", ours), ("peft", theirs))}
        for side, name in (("yunque", "yunque"), ("peft", "peft + transformers")):
            table.add_row(what if side == "yunque" else "", name, f"{step[side]:.3f}", f"{b * t / step[side]:,.0f}", f"{mem[side]['peak_mib']:,.0f}",
                          f"{mem[side]['over_mib']:,.0f}")
        table.add_row("", "ratio (peft / yunque)", f"[bold]{step['peft'] / step['yunque']:.2f}x faster[/]", "",
                      f"{mem['peft']['peak_mib'] / mem['yunque']['peak_mib']:.2f}x", f"{mem['peft']['over_mib'] / mem['yunque']['over_mib']:.2f}x",
                      end_section=True)
        print(f"{what}: eval loss before training yunque {a:.6f}, peft {c:.6f}")
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
