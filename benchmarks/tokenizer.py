"""Tokenizer speed: yunque vs tiktoken (same ranks) vs tokenizers (same tokenizer.json).

Encodes tinyshakespeare + Don Quijote (3.3 MB) as one long string and as a list of lines,
with GPT-2's BPE files and with a 32k tokenizer trained by yunque; runs are interleaved and
the table shows medians in MB/s and the ratio yunque / tiktoken (target >= 0.9). Also times
training the 32k tokenizer on the same text.

    .venv/bin/python benchmarks/tokenizer.py [--repeats 12]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import tiktoken  # noqa: E402
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402
from tiktoken_ext.openai_public import r50k_pat_str  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

from yunque import Tokenizer  # noqa: E402

DATA = Path(os.environ.get("YUNQUE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FILES = [DATA / "tinyshakespeare.txt", DATA / "quijote.txt"]


def peers(name: str, tok: Tokenizer, tiktoken_enc: tiktoken.Encoding, tmp: Path, threads: int) -> dict:
    """Encoders by (tokenizer, mode, library): each takes the text (or lines) and returns ids."""
    tok.save_pretrained(tmp / name)
    hf = HFTokenizer.from_file(str(tmp / name / "tokenizer.json"))
    return {
        (name, "long string", "yunque"): tok.encode,
        (name, "long string", "tiktoken"): tiktoken_enc.encode_ordinary,
        (name, "long string", "tokenizers"): lambda s: hf.encode(s, add_special_tokens=False).ids,
        (name, "batch of lines", "yunque"): lambda xs: tok.encode_batch(xs, num_threads=threads),
        (name, "batch of lines", "tiktoken"): lambda xs: tiktoken_enc.encode_ordinary_batch(xs, num_threads=threads),
        (name, "batch of lines", "tokenizers"): lambda xs: [e.ids for e in hf.encode_batch(xs, add_special_tokens=False)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    text = "".join(f.read_text(encoding="utf-8") for f in FILES)
    lines = text.splitlines(keepends=True)
    nbytes = len(text.encode("utf-8"))

    train_times = []
    for _ in range(3):
        start = time.perf_counter()
        trained = Tokenizer.train(FILES, 32_000, show_progress=False)
        train_times.append(time.perf_counter() - start)

    gpt2 = Tokenizer.from_pretrained(DATA / "gpt2")
    gpt2_ranks = data_gym_to_mergeable_bpe_ranks(str(DATA / "gpt2" / "vocab.bpe"), str(DATA / "gpt2" / "encoder.json"))
    gpt2_tt = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=gpt2_ranks, special_tokens={"<|endoftext|>": 50256})
    trained_tt = tiktoken.Encoding("trained", pat_str=trained.pattern, mergeable_ranks=trained.ranks,
                                   special_tokens=trained.special_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        encoders = peers("gpt2", gpt2, gpt2_tt, Path(tmp), args.threads) | peers(
            "yunque-32k", trained, trained_tt, Path(tmp), args.threads
        )

    # Same ids from every library, or the speed comparison means nothing.
    for (name, mode, lib), fn in encoders.items():
        ids = fn(text) if mode == "long string" else [i for ids in fn(lines) for i in ids]
        reference = encoders[(name, "long string", "yunque")](text)
        if mode == "batch of lines":
            reference = [i for ids in encoders[(name, "batch of lines", "yunque")](lines) for i in ids]
        assert ids == reference, f"{lib} disagrees with yunque on {name} ({mode})"

    times: dict[tuple, list[float]] = {key: [] for key in encoders}
    keys, rng = list(encoders), random.Random(0)
    for _ in range(args.repeats):
        # Interleaved in a fresh random order each round: a fixed order would always time the same
        # run right after tokenizers' batch call, whose worker threads keep spinning for a while.
        rng.shuffle(keys)
        for key in keys:
            fn, arg = encoders[key], (text if key[1] == "long string" else lines)
            gc.collect()
            time.sleep(0.2)  # let other libraries' idle threads settle
            start = time.perf_counter()
            fn(arg)
            times[key].append(time.perf_counter() - start)

    mbps = {key: nbytes / statistics.median(t) / 1e6 for key, t in times.items()}
    print(f"text: {nbytes / 1e6:.2f} MB, {len(lines):,} lines; {args.repeats} interleaved rounds, "
          f"{args.threads} threads for batches; medians in MB/s")
    print(f"{'tokenizer':<12} {'mode':<16} {'yunque':>8} {'tiktoken':>9} {'tokenizers':>11} {'yunque/tiktoken':>16}")
    for name, mode in dict.fromkeys((k[0], k[1]) for k in encoders):
        row = [mbps[(name, mode, lib)] for lib in ("yunque", "tiktoken", "tokenizers")]
        print(f"{name:<12} {mode:<16} {row[0]:>8.1f} {row[1]:>9.1f} {row[2]:>11.1f} {row[0] / row[1]:>16.2f}")
    print(f"training a 32k tokenizer on the same text: median {statistics.median(train_times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in train_times)}); vocab size {trained.vocab_size:,}")


if __name__ == "__main__":
    main()
