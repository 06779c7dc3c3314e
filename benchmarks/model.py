"""Training-step speed on CPU: yunque's Transformer vs transformers' GPT2LMHeadModel / LlamaForCausalLM.

Reference config: 6 layers, width 384, 6 heads, context 256, batch 8, vocab 8192, float32.
Each peer is built from yunque's own export of the same model (same config and weights),
so both compute the same function; the script checks their losses agree. One training
step = forward + loss + backward. Runs are interleaved (yunque, peer, yunque, peer, ...)
in one process and the medians compared, because the machine is shared and noisy.

    .venv/bin/python benchmarks/model.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from yunque.model.config import preset
from yunque.model.transformer import Transformer

FLAVOURS = {
    "gpt2": dict(name="gpt2", n_layer=6, n_head=6, d_model=384, max_seq_len=256, vocab_size=8192),
    "llama": dict(name="cpu-small"),  # 6 layers, 384 wide, 6 heads, SwiGLU 1024, context 256, vocab 8192
}


def build(flavour: str):
    """yunque's model and the transformers model loaded from its export (identical weights)."""
    import transformers

    kw = dict(FLAVOURS[flavour])
    torch.manual_seed(0)
    ours = Transformer(preset(kw.pop("name"), **kw)).train()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").train()
    return ours, theirs


def step_ours(model, idx, targets):
    _, loss = model(idx, targets)
    loss.backward()
    return loss


def step_theirs(model, idx, labels):
    loss = model(idx, labels=labels).loss
    loss.backward()
    return loss


def timed(fn, model, *args) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    loss = fn(model, *args)
    return time.perf_counter() - t, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    table = Table(title=f"training step, CPU float32, batch {args.batch} x 256, {args.threads} threads, median of {args.steps}")
    for col in ("flavour", "yunque s/step", "transformers s/step", "speed-up", "yunque spread", "peer spread"):
        table.add_column(col, justify="right")
    for flavour in FLAVOURS:
        ours, theirs = build(flavour)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, ours.config.vocab_size, (args.batch, ours.config.max_seq_len), generator=g)
        targets = torch.cat([idx[:, 1:], torch.full((args.batch, 1), -100)], dim=1)  # HF shifts labels itself
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for i in range(args.steps + 2):
            t_ours, l_ours = timed(step_ours, ours, idx, targets)
            t_theirs, l_theirs = timed(step_theirs, theirs, idx, idx)
            assert abs(l_ours - l_theirs) < 1e-4 * max(1.0, abs(l_theirs)), (flavour, l_ours, l_theirs)
            if i >= 2:
                times["ours"].append(t_ours)
                times["theirs"].append(t_theirs)
        m_ours, m_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])

        def spread(ts: list[float]) -> str:
            return f"{min(ts):.2f}-{max(ts):.2f}"

        table.add_row(flavour, f"{m_ours:.3f}", f"{m_theirs:.3f}", f"{m_theirs / m_ours:.2f}x", spread(times["ours"]), spread(times["theirs"]))
    console.print(table)


if __name__ == "__main__":
    main()
