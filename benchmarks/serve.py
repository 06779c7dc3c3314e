"""Serving throughput and latency under concurrency: 1, 4 and 16 streaming clients against a live `yunque serve`.

    python benchmarks/serve.py                      # a random-initialised model built for the run
    python benchmarks/serve.py --model mymodel      # a model from your store ($YUNQUE_HOME)
    python benchmarks/serve.py --url http://127.0.0.1:11434 --model mymodel   # a server already running

Each client streams /api/chat requests back to back. For every concurrency level it reports
the aggregate generated tokens per second (all clients' tokens ÷ wall time of the wave) and
the time to first token (request sent → first text chunk) at p50 and p95. Levels are run in
rounds, interleaved (1, 4, 16, 1, 4, 16, ...), and the medians over rounds are printed, with
the throughput ratio of each level over one client: the gain continuous batching gives.

The peer is yunque's own engine in this process, fed the same requests (same template,
sampling options and token budgets) by threads instead of HTTP clients, in the same rounds:
`server / engine` is the share of the engine's throughput that survives the HTTP layer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import LiveServer, make_tiny_model  # noqa: E402  (test helpers: a tiny model and a server subprocess)

from yunque.store import entries as store  # noqa: E402


async def one_request(http: httpx.AsyncClient, model: str, i: int, max_tokens: int) -> tuple[int, float]:
    """(generated tokens, seconds to the first text chunk) for one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": f"Tell me story number {i}."}], "options": {"num_predict": max_tokens, "seed": i}}
    t0 = time.perf_counter()
    ttft, count = None, 0
    async with http.stream("POST", "/api/chat", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            event = json.loads(line)
            if "error" in event:
                raise RuntimeError(event["error"])
            if ttft is None and event.get("message", {}).get("content"):
                ttft = time.perf_counter() - t0
            if event["done"]:
                count = event["eval_count"]
    return count, ttft if ttft is not None else time.perf_counter() - t0


async def wave(url: str, model: str, clients: int, requests_each: int, max_tokens: int) -> tuple[float, list[float]]:
    """Aggregate tokens/s and every request's time to first token, for `clients` concurrent clients."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as http:

        async def client(c: int) -> list[tuple[int, float]]:
            return [await one_request(http, model, c * 1000 + j, max_tokens) for j in range(requests_each)]

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    return sum(n for n, _ in flat) / elapsed, [t for _, t in flat]


def engine_wave(runner, entry, clients: int, requests_each: int, max_tokens: int) -> tuple[float, list[float]]:
    """The same workload as `wave`, straight into an in-process engine from `clients` threads."""
    from yunque.server import prepare as gen

    settings = gen.settings_for(entry)
    results: list[tuple[int, float]] = []

    def client(c: int) -> None:
        for j in range(requests_each):
            i = c * 1000 + j
            ids = gen.encode(runner, settings.render([{"role": "user", "content": f"Tell me story number {i}."}]))
            params = gen.ollama_params(runner, settings, {"num_predict": max_tokens, "seed": i}, len(ids))
            t0 = time.perf_counter()
            handle, ttft = runner.scheduler.submit(ids, params), None
            for chunk in handle:
                if ttft is None and chunk.text:
                    ttft = time.perf_counter() - t0
            results.append((handle.result.generated_tokens, ttft or time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(n for n, _ in results) / (time.perf_counter() - t0), [t for _, t in results]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(url: str, model: str, levels: list[int], rounds: int, requests_each: int, max_tokens: int, peer: bool) -> None:
    asyncio.run(wave(url, model, 2, 1, 8))  # warm-up: load the model
    runs = {"server": lambda n: asyncio.run(wave(url, model, n, requests_each, max_tokens))}
    if peer:
        from yunque.server.runner import load_runner

        entry = store.get(model)
        runner = load_runner(entry)
        runs["engine"] = lambda n: engine_wave(runner, entry, n, requests_each, max_tokens)
    tps = {(k, n): [] for k in runs for n in levels}
    ttfts = {(k, n): [] for k in runs for n in levels}
    for r in range(rounds):
        for n in levels:
            for kind, go in runs.items():
                rate, firsts = go(n)
                tps[kind, n].append(rate)
                ttfts[kind, n].extend(firsts)
                print(f"  round {r + 1}: {kind:<6} {n:>2} clients  {rate:8.1f} tok/s", file=sys.stderr)
    print(f"\nmodel {model}, {requests_each} requests per client, up to {max_tokens} new tokens each, median of {rounds} rounds")
    print(f"{'':<7} {'clients':>7}  {'tok/s (aggregate)':>17}  {'TTFT p50 ms':>11}  {'TTFT p95 ms':>11}  {'vs 1 client':>11}  {'server/engine':>13}")
    for kind in runs:
        base = statistics.median(tps[kind, levels[0]])
        for n in levels:
            med = statistics.median(tps[kind, n])
            share = f"{med / statistics.median(tps['engine', n]):12.2f}x" if "engine" in runs and kind == "server" else ""
            p50, p95 = percentile(ttfts[kind, n], 0.5) * 1e3, percentile(ttfts[kind, n], 0.95) * 1e3
            print(f"{kind:<7} {n:>7}  {med:17.1f}  {p50:11.1f}  {p95:11.1f}  {med / base:10.2f}x  {share:>13}")
    if peer:
        runner.scheduler.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server; default: start one for the run")
    ap.add_argument("--model", help="store model to serve; default: a random model built for the run")
    ap.add_argument("--levels", default="1,4,16", help="concurrency levels (default 1,4,16)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2, help="requests per client per wave")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256, help="width of the built model (default 256)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the built model (default 4)")
    ap.add_argument("--no-peer", action="store_true", help="skip the in-process engine peer")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.url:
        run(args.url, args.model, levels, args.rounds, args.requests, args.max_tokens, peer=False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            home, model = store.store_root(), args.model
        else:
            home, model = Path(tmp) / "home", "bench"
            os.environ["YUNQUE_HOME"] = str(home)  # the store (and the server below) read their root from here
            src = make_tiny_model(Path(tmp) / "bench", d_model=args.d_model, n_layer=args.layers, max_seq_len=1024, vocab_size=2048)
            store.import_model(src, model)
        server = LiveServer(home, log=Path(tmp) / "server.log").start()
        try:
            run(server.url, model, levels, args.rounds, args.requests, args.max_tokens, peer=not args.no_peer)
        finally:
            server.stop()

if __name__ == "__main__":
    main()
