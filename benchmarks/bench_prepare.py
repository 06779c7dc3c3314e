"""Throughput of `yunque data prepare` against the bare minimum a hand-written script does.

Peer: the nanoGPT-style preparation with the same tiktoken ranks: `encode_ordinary_batch`
over the whole documents (all threads), one eot per document, `np.tofile`; no validation
split, no byte counts, no atomic write. Both encode the same documents with the same
tokenizer; runs are interleaved and the medians reported.

    .venv/bin/python benchmarks/bench_prepare.py [--repeats 5] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from yunque.text.corpus import iter_documents
from yunque.text.shards import prepare, token_dtype
from yunque.text.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def peer(tok: Tokenizer, inputs: list[str], out: Path) -> None:
    docs = list(iter_documents(inputs))
    ids = tok._enc.encode_ordinary_batch(docs, num_threads=8)
    dtype = token_dtype(tok.vocab_size)
    with open(out, "wb") as f:
        for doc_ids in ids:
            np.asarray(doc_ids + [tok.eot_id], dtype=dtype).tofile(f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    corpora = {
        "python-docs (538 docs)": ["python-docs"],
        "tinyshakespeare + quijote (2 docs)": [str(SHARED / "tinyshakespeare.txt"), str(SHARED / "quijote.txt")],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp / "tok"
        Tokenizer.train(["python-docs", *corpora["tinyshakespeare + quijote (2 docs)"]], args.vocab_size, show_progress=False).save_pretrained(tok_dir)
        tok = Tokenizer.from_pretrained(tok_dir)
        print("| corpus | MB | yunque prepare (s) | peer (s) | yunque MB/s | peer MB/s | yunque / peer time |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c, (name, inputs) in enumerate(corpora.items()):
            mb = sum(len(d.encode()) for d in iter_documents(inputs)) / 1e6
            ours, theirs = [], []
            for i in range(args.repeats):
                t = time.perf_counter()
                prepare(inputs, tok_dir, tmp / f"s{c}-{i}", progress=False)
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                peer(tok, inputs, tmp / f"peer{i}.bin")
                theirs.append(time.perf_counter() - t)
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"| {name} | {mb:.2f} | {a:.3f} | {b:.3f} | {mb / a:.1f} | {mb / b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
