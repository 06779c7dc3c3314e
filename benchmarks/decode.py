"""Decoding speed: yunque vs transformers `generate`, same float32 weights, same process, interleaved.

Batch-1 greedy decoding of 128 new tokens after a 64-token prompt, for two Llama-family sizes,
plus int8 weights for the larger one, a bare loop over yunque's decode step (the engine's
overhead is the gap to it), the roofline of each size (one pass of matrix-vector products
over all its weights, posed the fastest way, timed in the same run) and the aggregate
throughput of the continuous-batching `Engine` at 1, 4 and 16 concurrent requests.

    .venv/bin/python benchmarks/decode.py [--reps 7] [--threads N] [--sizes 5M 30M] [--no-engine]
    .venv/bin/python benchmarks/decode.py --real [--reps 5]   # SmolLM2-135M and Qwen2.5-0.5B vs llama.cpp

`--real` runs real models' shapes against llama.cpp instead (benchmarks/real_shapes.py says how).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from yunque.infer.decode import DecodeStep
from yunque.infer.generate import generate_ids
from yunque.model.matmul import measure_products, tune_products
from yunque.model.transformer import Transformer
from yunque.model.quantize import quantize_int8
from yunque.infer.engine import Engine

PROMPT, NEW = 64, 128
SIZES = {
    "5M": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=688, vocab_size=4096),
    "30M": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, intermediate_size=1376, vocab_size=8192),
}


def make_pair(size: str, tmp: str) -> tuple[torch.nn.Module, Transformer]:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SIZES[size], max_position_embeddings=512, tie_word_embeddings=False)
    theirs = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so greedy choices are not near-ties
        for p in theirs.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 0
    path = os.path.join(tmp, size)
    theirs.save_pretrained(path)
    return theirs, Transformer.from_pretrained(path).eval()


def timed(fn) -> tuple[float, list[int]]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bare_loop(model: Transformer, prompt: list[int]) -> list[int]:
    """The engine's prefill and decode step in the plainest loop (no sampling settings, no text, no
    stop checks): the floor for the engine's overhead."""
    tune_products(model)
    step = DecodeStep(model)
    with torch.inference_mode():
        cache = model.make_cache(1, PROMPT + NEW)
        first = model(torch.tensor([prompt]), cache=cache, input_pos=torch.zeros(1, dtype=torch.long), logits_at=torch.tensor([PROMPT - 1]))
        token = first[:, -1].argmax(-1)
        pos, out = torch.tensor([PROMPT]), [token]
        for i in range(PROMPT, PROMPT + NEW - 1):
            token = step(token, pos, cache, i, i).argmax(-1)
            pos += 1
            out.append(token)
        return torch.cat(out).tolist()


def roofline_seconds(model: Transformer) -> float:
    """One pass over every linear weight (LM head included) with one row, the fastest measured way
    (plain, or transposed on one, two or four rows): the floor of a decode step."""
    return min(min(t) for t in measure_products(model, (1, 2, 4), rounds=1, max_bytes=float("inf")).values())


def engine_throughput(model: Transformer, n: int, prompts: list[list[int]]) -> float:
    with Engine(model, max_batch=16, max_queue=64) as engine:
        t = time.perf_counter()
        handles = [engine.submit(p, temperature=0, max_new_tokens=NEW, stop_token_ids=[]) for p in prompts[:n]]
        tokens = sum(len([c for c in h]) for h in handles)
        return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="model sizes to run")
    ap.add_argument("--no-engine", action="store_true", help="skip the continuous-batching throughput runs")
    ap.add_argument("--real", action="store_true", help="only the real shapes (SmolLM2-135M, Qwen2.5-0.5B) against llama.cpp")
    ap.add_argument("--node-modules", type=Path, default=Path(__file__).with_name(".peer") / "node_modules",
                    help="where `npm install node-llama-cpp` put its modules (for --real)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.real:
        import real_shapes

        real_shapes.compare(args.reps, torch.get_num_threads(), args.node_modules)
        return
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            theirs, ours = make_pair(size, tmp)
            vocab = ours.config.vocab_size
            prompt = torch.randint(0, vocab, (PROMPT,), generator=g).tolist()
            ids = torch.tensor([prompt])
            contenders = {
                "transformers": lambda: theirs.generate(ids, do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)[0, PROMPT:].tolist(),
                "yunque": lambda: list(generate_ids(ours, prompt, temperature=0, max_new_tokens=NEW, stop_token_ids=[])),
                "(bare loop)": lambda: bare_loop(ours, prompt),
            }
            if size == "30M":
                _, q = make_pair(size, tmp)
                quantize_int8(q)
                contenders["yunque int8"] = lambda: list(generate_ids(q, prompt, temperature=0, max_new_tokens=NEW, stop_token_ids=[]))
            times: dict[str, list[float]] = {k: [] for k in contenders}
            outs: dict[str, list[int]] = {}
            roof: list[float] = []
            with torch.no_grad():
                for fn in contenders.values():  # warm-up
                    fn()
                order = list(contenders.items())
                for rep in range(args.reps):
                    for name, fn in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate: no fixed neighbour
                        dt, outs[name] = timed(fn)
                        times[name].append(dt)
                    roof.append(roofline_seconds(ours))
            base = NEW / statistics.median(times["transformers"])
            n_params = sum(p.numel() for p in ours.parameters()) / 1e6
            print(f"\n{size} ({n_params:.1f}M params), batch 1, {PROMPT}-token prompt, {NEW} new tokens, median of {args.reps}:")
            print(f"  {'':14s} {'tok/s':>8s} {'vs transformers':>16s}  ids == transformers")
            for name, ts in times.items():
                rate = NEW / statistics.median(ts)
                same = outs[name] == outs["transformers"] if "int8" not in name else "(quantized weights)"
                print(f"  {name:14s} {rate:8.1f} {rate / base:15.2f}x  {same}")
            roof_rate = 1 / statistics.median(roof)
            print(f"  roofline (one matrix-vector pass over all float32 weights, fastest form): {roof_rate:.1f} steps/s; "
                  f"yunque float32 reaches {NEW / statistics.median(times['yunque']) / roof_rate:.0%} of it, "
                  f"transformers {base / roof_rate:.0%}")
            if size == "5M" and not args.no_engine:
                prompts = [torch.randint(0, vocab, (PROMPT,), generator=g).tolist() for _ in range(16)]
                engine_throughput(ours, 2, prompts)  # warm-up
                rates: dict[int, list[float]] = {1: [], 4: [], 16: []}
                for rep in range(max(1, args.reps // 2)):
                    for n in list(rates)[rep % 3 :] + list(rates)[: rep % 3]:
                        rates[n].append(engine_throughput(ours, n, prompts))
                one = statistics.median(rates[1])
                print("\n  Engine (continuous batching), aggregate greedy tok/s, 128 new tokens per request:")
                for n, rs in rates.items():
                    print(f"  batch {n:2d}: {statistics.median(rs):8.1f} tok/s  ({statistics.median(rs) / one:.1f}x batch 1)")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
