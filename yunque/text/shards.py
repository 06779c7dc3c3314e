"""Token shards: corpora become flat token files for training, and loaders read them back.

A shard directory holds three files, written together (atomically):
- `train.bin`, `val.bin`: flat arrays of token ids (uint16 when the vocabulary fits,
  else uint32), nothing else. Each split starts with `<|endoftext|>` and each document
  is followed by it: `eot doc1 eot doc2 eot ...`. The leading eot gives the first
  document the same context as every other one, and makes every text token a target.
- `meta.json`: the tokenizer (path, fingerprint, vocab size, eot id), the dtype, how
  the validation split was chosen, and per split its documents, tokens (eot included)
  and the UTF-8 bytes of its text (eot excluded), which bits-per-byte divides by.

`TokenShards` memory-maps the two files (nothing is copied into RAM), samples random
training windows, and walks a split once in order for evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from yunque.text.corpus import iter_documents
from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir, write_text_atomic

if TYPE_CHECKING:
    import torch

FORMAT = "yunque-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
SHARD_FILES = ("train.bin", "val.bin", "meta.json")
# Long documents are encoded in pieces so that all cores share the work. Pieces end
# after a newline that sits between two non-space characters: no pre-tokenizer pattern
# of GPT-2 or GPT-4 style spans such a boundary, so the pieces encode as the whole would.
PIECE_CHARS = 1 << 18
_SAFE_BREAK = re.compile(r"(?<=\S)\n(?=\S)")
BATCH_CHARS = 1 << 23
# By document, the validation split may overshoot its share by at most this factor;
# beyond it (a few long documents) the split is taken by position instead.
MAX_VAL_OVERSHOOT = 2.0


# ---------------------------------------------------------------------------- writing


@dataclass
class SplitPlan:
    """Which text goes to validation: documents from `first_val_doc` on; with `cut_doc`
    set, that document is cut so that its last `cut_val_bytes` bytes (moved to a line
    boundary) start the validation split."""

    by: str
    first_val_doc: int
    cut_doc: int | None = None
    cut_val_bytes: int = 0


def plan_split(doc_bytes: Sequence[int], val_fraction: float) -> SplitPlan:
    """Hold out the last documents when that gives about `val_fraction` of the bytes,
    else the last `val_fraction` of the text by position (one or a few long documents)."""
    total = sum(doc_bytes)
    target = val_fraction * total
    tail, first = 0, len(doc_bytes)
    while first > 0 and tail < target:
        first -= 1
        tail += doc_bytes[first]
    if first >= 1 and tail <= MAX_VAL_OVERSHOOT * target:
        return SplitPlan(by="document", first_val_doc=first)
    # The byte position where validation starts falls inside document `cut`.
    start = total - math.ceil(target)
    before, cut = 0, 0
    while before + doc_bytes[cut] <= start:
        before += doc_bytes[cut]
        cut += 1
    return SplitPlan(by="position", first_val_doc=cut + 1, cut_doc=cut, cut_val_bytes=before + doc_bytes[cut] - start)


def _cut_at_line(doc: str, val_bytes: int) -> int:
    """Character index that leaves about `val_bytes` bytes after it, moved to the nearest line start."""
    encoded = doc.encode("utf-8")
    pos = len(encoded[: len(encoded) - val_bytes].decode("utf-8", "ignore"))
    starts = [i + 1 for i in (doc.rfind("\n", 0, pos), doc.find("\n", pos)) if 0 <= i < len(doc) - 1]
    if starts:
        pos = min(starts, key=lambda s: abs(s - pos))
    pos = min(max(pos, 1), len(doc) - 1)
    if not doc[:pos].strip() or not doc[pos:].strip():
        raise YunqueError("The corpus is too small to hold out a validation split; give it more text.")
    return pos


def _pieces(doc: str) -> list[str]:
    """Split a long document at safe line boundaries into pieces of about PIECE_CHARS."""
    pieces, start = [], 0
    while len(doc) - start > PIECE_CHARS:
        found = _SAFE_BREAK.search(doc, start + PIECE_CHARS)
        if not found:
            break
        pieces.append(doc[start : found.end()])
        start = found.end()
    pieces.append(doc[start:])
    return pieces


class _Piece(NamedTuple):
    split: str
    text: str
    ends_doc: bool  # followed by the eot separator
    new_doc: bool  # the first text of a document in this split (a cut document counts in both)


def _routed_pieces(docs: Iterable[str], plan: SplitPlan) -> Iterator[_Piece]:
    for i, doc in enumerate(docs):
        if i == plan.cut_doc:
            pos = _cut_at_line(doc, plan.cut_val_bytes)
            parts = [("train", doc[:pos], False), ("val", doc[pos:], True)]
        else:
            parts = [("val" if i >= plan.first_val_doc else "train", doc, True)]
        for split, text, ends in parts:
            chunks = _pieces(text)
            for j, chunk in enumerate(chunks):
                yield _Piece(split, chunk, ends and j == len(chunks) - 1, j == 0)


def _batches(pieces: Iterable[_Piece]) -> Iterator[list[_Piece]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise YunqueError(f"{out_dir} is a file, not a directory; choose another --out.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    names = {p.name for p in out_dir.iterdir()}
    if not names <= set(SHARD_FILES):
        raise YunqueError(f"{out_dir} holds files other than token shards; choose a new or empty directory for --out.")
    if not force:
        raise YunqueError(f"{out_dir} already holds token shards; pass --force to replace them.")


def _write_splits(tmp: Path, tokenizer: Any, pieces: Iterable[Any], dtype: np.dtype, workers: int | None, advance: Any) -> dict[str, dict[str, Any]]:
    """Encode `pieces` into tmp/{train,val}.bin: each split opens with an end-of-text token and
    each document ends with one. Returns each split's documents, tokens and UTF-8 bytes;
    `advance(n)` is told the bytes encoded as it goes."""
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    stats = {split: {"file": f"{split}.bin", "documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
    with contextlib.ExitStack() as stack:
        files = {split: stack.enter_context(open(tmp / f"{split}.bin", "wb")) for split in SPLITS}
        for split in SPLITS:
            eot.tofile(files[split])
            stats[split]["tokens"] += 1
        for batch in _batches(pieces):
            encoded = tokenizer.encode_batch([p.text for p in batch], num_threads=workers)
            for piece, ids in zip(batch, encoded):
                arr = np.asarray(ids, dtype=dtype)
                if piece.ends_doc:
                    arr = np.concatenate([arr, eot])
                arr.tofile(files[piece.split])
                n_bytes = len(piece.text.encode("utf-8"))
                s = stats[piece.split]
                s["tokens"] += len(arr)
                s["bytes"] += n_bytes
                s["documents"] += piece.new_doc
                advance(n_bytes)
    return stats


def prepare(
    inputs: Sequence[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    strip_gutenberg: bool = False,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode the documents of `inputs` with the tokenizer in `tokenizer_dir` into
    `out_dir/{train,val}.bin` + `meta.json`; returns the metadata written."""
    from tqdm.auto import tqdm

    from yunque.text.tokenizer import Tokenizer

    if not 0.0 < val_fraction < 1.0:
        raise YunqueError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.eot_id is None:
        raise YunqueError(f"The tokenizer in {tokenizer_dir} has no <|endoftext|> token to separate documents; use one trained by yunque.")
    t0 = time.perf_counter()

    def docs() -> Iterator[str]:
        return iter_documents(inputs, strip_gutenberg=strip_gutenberg)

    doc_bytes = [len(doc.encode("utf-8")) for doc in docs()]
    plan = plan_split(doc_bytes, val_fraction)
    dtype = token_dtype(tokenizer.vocab_size)
    with atomic_dir(out_dir, overwrite=force) as tmp:
        bar = tqdm(total=sum(doc_bytes), unit="B", unit_scale=True, desc="encoding", disable=not progress)
        with bar:
            stats = _write_splits(tmp, tokenizer, _routed_pieces(docs(), plan), dtype, workers, bar.update)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tokenizer": {"path": str(Path(tokenizer_dir).resolve()), "fingerprint": tokenizer.fingerprint},
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "eot_id": tokenizer.eot_id,
            "val_fraction": val_fraction,
            "split_by": plan.by,
            "inputs": [str(p) for p in inputs],
            "strip_gutenberg": strip_gutenberg,
            "encode_seconds": round(time.perf_counter() - t0, 3),
            "splits": stats,
        }
        write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------- reading


class EvalBatch(NamedTuple):
    """One evaluation batch: inputs, targets, and which targets count towards bits per
    byte (text tokens; the eot separators carry no bytes and are left out)."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    mask: "torch.Tensor"


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Bits per byte: total nats over the predicted text tokens ÷ (ln 2 × their UTF-8 bytes)."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return total_nats / (math.log(2) * n_bytes)


class TokenShards:
    """Read-only view of a shard directory written by `prepare`."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        meta_path = self.dir / "meta.json"
        if not self.dir.is_dir():
            raise YunqueError(f"Token shard directory {self.dir} does not exist; create it with `yunque data prepare`.")
        if not meta_path.is_file():
            raise YunqueError(f"{self.dir} has no meta.json, so it is not a token shard directory; create one with `yunque data prepare`.")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
            self.dtype = np.dtype(self.meta["dtype"])
            self.eot_id = int(self.meta["eot_id"])
            splits = {s: self.meta["splits"][s] for s in SPLITS}
        except (ValueError, KeyError, TypeError):
            raise YunqueError(f"{meta_path} is corrupt or from another tool; prepare the shards again with `yunque data prepare`.") from None
        self._arrays: dict[str, np.memmap] = {}
        for split, info in splits.items():
            path = self.dir / info["file"]
            expected = int(info["tokens"]) * self.dtype.itemsize
            actual = path.stat().st_size if path.is_file() else -1
            if actual != expected or info["tokens"] < 2:
                raise YunqueError(
                    f"Shard {path} has {max(actual, 0)} bytes but meta.json says {expected}, so it is truncated or corrupt; "
                    "prepare the shards again with `yunque data prepare --force`."
                )
            self._arrays[split] = np.memmap(path, dtype=self.dtype, mode="r")

    def _array(self, split: str) -> np.memmap:
        if split not in self._arrays:
            raise YunqueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        return self._arrays[split]

    def tokens(self, split: str) -> int:
        """Number of tokens in the split, eot separators included."""
        return len(self._array(split))

    def bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text (eot excluded): the denominator of bits per byte."""
        self._array(split)
        return int(self.meta["splits"][split]["bytes"])

    def _check_context(self, split: str, context: int) -> int:
        n = self.tokens(split)
        if context < 1 or context > n - 1:
            raise YunqueError(
                f"Context length {context} does not fit the {split} split ({n - 1} predictable tokens); use a shorter context or more text."
            )
        return n

    def get_batch(self, split: str, batch_size: int, context: int, generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
        """`batch_size` random windows: x = tokens[s:s+context], y = tokens[s+1:s+context+1] (int64)."""
        import torch

        n = self._check_context(split, context)
        starts = torch.randint(0, n - context, (batch_size,), generator=generator).numpy()
        rows = torch.from_numpy(self._array(split)[starts[:, None] + np.arange(context + 1)].astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def iter_eval(self, split: str, batch_size: int, context: int) -> Iterator[EvalBatch]:
        """Non-overlapping windows in order, so that every token but the first is a target
        exactly once; the last window may be shorter and comes as a batch of its own.
        bpb = bits_per_byte(sum of per-target nats where mask, self.bytes(split))."""
        import torch

        n = self._check_context(split, context)
        arr = self._array(split)
        full = (n - 1) // context
        for first in range(0, full, batch_size):
            count = min(batch_size, full - first)
            rows = torch.from_numpy(np.array(arr[first * context : (first + count) * context + 1], dtype=np.int64))
            x = rows[:-1].view(count, context)
            y = rows[1:].view(count, context)
            yield EvalBatch(x, y, y != self.eot_id)
        rest = (n - 1) - full * context
        if rest:
            rows = torch.from_numpy(np.array(arr[full * context :], dtype=np.int64))
            x, y = rows[:-1].view(1, rest), rows[1:].view(1, rest)
            yield EvalBatch(x, y, y != self.eot_id)
