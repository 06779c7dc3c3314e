"""Int8 weight-only quantization: validation bits per byte and decoding speed, float32 vs int8.

Trains a tiny Llama-style model (preset cpu-tiny) for a fixed time on tinyshakespeare (first 90% of it;
a quick loop here, so the script needs nothing but the shared data), then scores the last
10% in bits per byte (total nats / (ln 2 x bytes)) with float32 and with int8 weights, and
times batch-1 greedy decoding of both, interleaved.

    .venv/bin/python benchmarks/int8_quality.py [--train-seconds 180] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from yunque.model.config import preset
from yunque.infer.generate import generate_ids
from yunque.model.transformer import Transformer
from yunque.model.quantize import quantize_int8
from yunque.text.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
CTX = 128


def bits_per_byte(model: Transformer, ids: torch.Tensor, n_bytes: int) -> float:
    nats = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, CTX):
            x = ids[start : start + CTX + 1]
            if len(x) < 2:
                break
            logits = model(x[None, :-1])
            nats += F.cross_entropy(logits[0].float(), x[1:], reduction="sum").item()
    return nats / (math.log(2) * n_bytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-seconds", type=float, default=180)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = DATA.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    tok = Tokenizer.train_from_iterator([train_text], 2048, show_progress=False)
    train_ids = torch.tensor(tok.encode(train_text))
    val_ids = torch.tensor(tok.encode(val_text))
    torch.manual_seed(0)
    cfg = preset("cpu-tiny", vocab_size=tok.vocab_size, max_seq_len=CTX)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.train_seconds:
        starts = torch.randint(0, len(train_ids) - CTX - 1, (16,))
        x = torch.stack([train_ids[s : s + CTX] for s in starts])
        y = torch.stack([train_ids[s + 1 : s + CTX + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    n_bytes = len(val_text.encode("utf-8"))
    print(f"trained {model.num_params() / 1e6:.1f}M params for {step} steps ({args.train_seconds:.0f} s), "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    fp32_bpb = bits_per_byte(model, val_ids, n_bytes)
    q = Transformer(cfg).eval()
    q.load_state_dict(model.state_dict())
    quantize_int8(q)
    int8_bpb = bits_per_byte(q, val_ids, n_bytes)
    prompt = val_ids[:64].tolist()
    runs = {"float32": model, "int8": q}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(6):
        for name, m in runs.items():
            t = time.perf_counter()
            list(generate_ids(m, prompt, temperature=0, max_new_tokens=128, stop_token_ids=[]))
            if rep:  # the first round is a warm-up
                times[name].append(128 / (time.perf_counter() - t))
    print(f"validation bits per byte: float32 {fp32_bpb:.4f}, int8 {int8_bpb:.4f} ({int8_bpb - fp32_bpb:+.4f})")
    f32, i8 = statistics.median(times["float32"]), statistics.median(times["int8"])
    print(f"batch-1 greedy decode, 64-token prompt, 128 new tokens: float32 {f32:.1f} tok/s, int8 {i8:.1f} tok/s ({i8 / f32:.2f}x)")


if __name__ == "__main__":
    main()
