"""KV memory in use: prompt caching's time to first token, and streams a fixed KV budget holds.

    python benchmarks/kv_cache.py                       # both parts, defaults below
    python benchmarks/kv_cache.py --turn-tokens 2048    # a longer conversation

1. **Second turn's time to first token.** A conversation's first turn (`--turn-tokens` of
   prompt, 32 generated), then its second (the first prompt, the answer and 32 new tokens),
   through one `Engine` with the prompt cache and one without, in interleaved rounds; medians
   of each turn's time from submission to its first token. The peer is the same engine with
   `prompt_cache=False`, in the same run.
2. **Streams in a fixed KV budget.** `--streams` requests of 512 positions (448 prompt tokens,
   64 generated, no max_tokens of their own: they may fill the 4,096-token context, as a /v1
   request without max_tokens may) submitted at once to an engine with a budget of
   `--budget-contexts` whole contexts. It reports how many decode at once at the peak, against
   what reserving each request's worst case (prompt + max_new_tokens within the context, the
   rule before blocks) admits in the same budget: budget / worst case.

The model is random-initialised, llama-shaped (`--d-model`, `--layers`, 4,096 context).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from yunque.infer.budget import KVBudget
from yunque.infer.engine import Engine
from yunque.model.config import ModelConfig
from yunque.model.transformer import Transformer


def build(d_model: int, layers: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, n_layer=layers, n_head=d_model // 64, n_kv_head=max(1, d_model // 256), d_model=d_model,
                      d_ff=4 * d_model, max_seq_len=4096, positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False,
                      attn_out_bias=False, mlp_bias=False, norm_bias=False, tie_embeddings=True)
    return Transformer(cfg).eval()


def first_token_seconds(engine: Engine, ids: list[int], new: int) -> tuple[float, list[int]]:
    """Seconds from submission to the first generated token, and the whole answer."""
    t0 = time.perf_counter()
    handle = engine.submit(ids, temperature=0, max_new_tokens=new, stop_token_ids=[])
    answer, ttft = [], None
    for chunk in handle:
        ttft = ttft or time.perf_counter() - t0
        answer += chunk.token_ids
    return ttft, answer


def second_turns(model: Transformer, turn_tokens: int, rounds: int) -> None:
    engines = {"cache": Engine(model, max_batch=4), "no cache": Engine(model, max_batch=4, prompt_cache=False)}
    times: dict[tuple[str, int], list[float]] = {(k, t): [] for k in engines for t in (1, 2)}
    g = torch.Generator().manual_seed(1)
    for r in range(rounds + 1):  # round 0 warms up
        first = torch.randint(1, 8192, (turn_tokens,), generator=g).tolist()
        message = torch.randint(1, 8192, (32,), generator=g).tolist()
        answers = {}
        for name, engine in engines.items():
            t1, answer = first_token_seconds(engine, first, 32)
            t2, answers[name] = first_token_seconds(engine, first + answer + message, 32)
            if r:
                times[(name, 1)].append(t1)
                times[(name, 2)].append(t2)
        assert answers["cache"] == answers["no cache"], "the prompt cache changed an answer"
    for engine in engines.values():
        engine.shutdown()
    print(f"\nSecond turn's time to first token ({turn_tokens}-token first prompt, 32-token answer, 32-token message; medians of {rounds})")
    print("| engine | turn 1 TTFT ms | turn 2 TTFT ms |")
    print("|---|---:|---:|")
    for name in engines:
        print(f"| {name} | {statistics.median(times[(name, 1)]) * 1e3:.1f} | {statistics.median(times[(name, 2)]) * 1e3:.1f} |")
    ratio = statistics.median(times[("no cache", 2)]) / statistics.median(times[("cache", 2)])
    print(f"turn 2 without the cache / with it: {ratio:.1f}x")


def streams_in_budget(model: Transformer, streams: int, budget_contexts: int) -> None:
    per_position = 2 * model.config.n_layer * model.config.n_kv_head * model.config.head_dim * 4
    context = model.config.max_seq_len
    budget = KVBudget(budget_contexts * context * per_position)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 8192, (448,), generator=g).tolist() for _ in range(streams)]
    with Engine(model, max_batch=streams, kv_budget=budget, prompt_cache=False) as engine:
        t0 = time.perf_counter()
        handles = [engine.submit(p, temperature=0, max_new_tokens=context - 448, stop_token_ids=[]) for p in prompts]
        peak, tokens = 0, 0
        for h in handles:  # each stops itself after 64 tokens, as an answer that ends would
            for chunk in h:
                tokens += len(chunk.token_ids)
                peak = max(peak, engine.active)
                if len(h.request.generated) >= 64:
                    h.cancel()
        elapsed = time.perf_counter() - t0
    worst_case = budget.total // (context * per_position)
    print(f"\nStreams in a KV budget of {budget_contexts} x {context} positions ({budget.total / 2**20:.0f} MiB), "
          f"{streams} requests of 448 + 64 tokens that may fill the context")
    print("| admission | streams decoding at once | tok/s |")
    print("|---|---:|---:|")
    print(f"| blocks in use (now) | {peak} | {tokens / elapsed:.0f} |")
    print(f"| worst case reserved (before) | {worst_case} | |")
    print(f"streams: {peak / worst_case:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--turn-tokens", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--budget-contexts", type=int, default=8)
    args = ap.parse_args()
    model = build(args.d_model, args.layers)
    second_turns(model, args.turn_tokens, args.rounds)
    streams_in_budget(model, args.streams, args.budget_contexts)


if __name__ == "__main__":
    main()
