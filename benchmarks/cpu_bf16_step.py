"""Does bf16 autocast speed up CPU training? Training-step time, fp32 vs bf16, interleaved.

    python benchmarks/cpu_bf16_step.py [--threads 1] [--repeats 5]

For each model shape, alternates fp32 and bf16 blocks of training steps (forward, backward,
AdamW) and reports the median step time of each and the ratio. The peer is the same model in
fp32. The trainer's dtype="auto" turns bf16 on for CPUs with native bf16 (AVX512-BF16, AMX)
because of what this prints there; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from yunque.model.config import preset
from yunque.model.transformer import Transformer

# (layers, width, batch, context, vocab)
SHAPES = [(4, 128, 16, 128, 512), (4, 192, 16, 128, 1024), (6, 256, 16, 128, 1024), (4, 128, 12, 64, 272)]


def step_times(model: Transformer, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved blocks per dtype")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per block")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {', '.join(native) or 'no'}, load {os.getloadavg()[0]:.1f}")
    print(f"{'shape (L, d, B, T, V)':<26}{'fp32 ms':>9}{'bf16 ms':>9}{'fp32/bf16':>11}")
    for L, d, B, T, V in SHAPES:
        torch.manual_seed(0)
        model = Transformer(preset("cpu-tiny", vocab_size=V, max_seq_len=T, n_layer=L, d_model=d, n_head=d // 64, n_kv_head=d // 64, d_ff=3 * d))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, V, (B, T))
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True):
            step_times(model, opt, x, bf16, 2)  # warm up both paths
        for _ in range(args.repeats):
            for bf16 in (False, True):
                times[bf16] += step_times(model, opt, x, bf16, args.steps)
        f32, b16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"{str((L, d, B, T, V)):<26}{f32 * 1e3:>9.1f}{b16 * 1e3:>9.1f}{f32 / b16:>11.2f}")


if __name__ == "__main__":
    main()
