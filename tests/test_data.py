"""Token shards: prepare (round trip, exact byte counts, val split, dtype, atomicity, errors)
and the loaders (random windows, the evaluation walk, corruption checks)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import yunque.text.shards as data
from yunque.cli.app import app
from yunque.text.shards import TokenShards, bits_per_byte, plan_split, prepare, token_dtype
from yunque.errors import YunqueError
from yunque.text.tokenizer import GPT2_PATTERN, Tokenizer

WORDS = "the quick brown fox jumps over lazy dogs while señor García eats 🍕 and café crème".split()


def _doc(rng: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(lines)) + "\n"


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    Tokenizer.train_from_iterator([_doc(rng, 200) for _ in range(5)], 400, show_progress=False).save_pretrained(path)
    return path


@pytest.fixture
def many_docs(tmp_path):
    rng = random.Random(1)
    docs = [_doc(rng, rng.randint(1, 30)) for _ in range(60)]
    docs[7] = "A document that mentions <|endoftext|> as plain text.\n"
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return tmp_path / "corpus.jsonl", docs


def _documents(tok: Tokenizer, ids: np.ndarray) -> list[str]:
    """Split a shard at its eot separators and decode each piece."""
    assert ids[0] == tok.eot_id
    cuts = np.flatnonzero(ids == tok.eot_id)
    return [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(cuts, [*cuts[1:], len(ids)])]


def test_prepare_round_trip_by_document(tmp_path, tok_dir, many_docs):
    path, docs = many_docs
    meta = prepare([path], tok_dir, tmp_path / "shards", val_fraction=0.2, progress=False)
    tok = Tokenizer.from_pretrained(tok_dir)
    shards = TokenShards(tmp_path / "shards")
    train, val = (np.fromfile(tmp_path / "shards" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    assert meta["split_by"] == "document" and meta["dtype"] == "uint16" and shards.meta == meta
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint and meta["eot_id"] == tok.eot_id
    # Every document comes back exactly, followed by eot; the split starts with eot.
    train_docs, val_docs = _documents(tok, train), _documents(tok, val)
    assert train_docs[-1] == "" and val_docs[-1] == ""
    assert train_docs[:-1] + val_docs[:-1] == docs
    # The literal special-token text in document 7 was encoded as text, not as eot.
    assert train_docs[7] == docs[7]
    # The held-out documents are the last ones and hold about val_fraction of the bytes.
    n_val = len(val_docs) - 1
    val_bytes = sum(len(d.encode()) for d in docs[-n_val:])
    assert 0.2 <= val_bytes / sum(len(d.encode()) for d in docs) <= 0.4
    for split, ids, split_docs in (("train", train, docs[:-n_val]), ("val", val, docs[-n_val:])):
        info = meta["splits"][split]
        assert info["tokens"] == len(ids) == shards.tokens(split)
        assert info["documents"] == len(split_docs)
        assert info["bytes"] == sum(len(d.encode()) for d in split_docs) == shards.bytes(split)


def test_prepare_by_position_for_one_long_document(tmp_path, tok_dir, shared_data):
    meta = prepare([shared_data / "tinyshakespeare.txt"], tok_dir, tmp_path / "s", val_fraction=0.1, progress=False)
    tok = Tokenizer.from_pretrained(tok_dir)
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    train = np.fromfile(tmp_path / "s" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "s" / "val.bin", dtype=np.uint16)
    assert meta["split_by"] == "position"
    assert train[0] == val[0] == val[-1] == tok.eot_id and train[-1] != tok.eot_id
    head, tail = tok.decode(train[1:].tolist()), tok.decode(val[1:-1].tolist())
    assert head + tail == text and head.endswith("\n")  # cut at a line boundary
    assert abs(len(tail.encode()) / len(text.encode()) - 0.1) < 0.001
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(text.encode())
    assert meta["splits"]["val"]["bytes"] == len(tail.encode())


def test_long_documents_are_encoded_in_pieces_identically(tmp_path, tok_dir, monkeypatch):
    rng = random.Random(2)
    doc = _doc(rng, 3000)
    monkeypatch.setattr(data, "PIECE_CHARS", 500)
    monkeypatch.setattr(data, "BATCH_CHARS", 4000)
    (tmp_path / "a.txt").write_text(doc)
    prepare([tmp_path / "a.txt"], tok_dir, tmp_path / "s", progress=False)
    tok = Tokenizer.from_pretrained(tok_dir)
    shards = TokenShards(tmp_path / "s")
    ids = np.concatenate([shards._array("train")[1:], shards._array("val")[1:-1]]).tolist()
    assert ids == tok.encode(doc)


def test_plan_split_rules():
    assert plan_split([10] * 20, 0.1) == data.SplitPlan(by="document", first_val_doc=18)
    # One long document and a short one: by position, inside the long one.
    plan = plan_split([1000, 10], 0.1)
    assert plan.by == "position" and plan.cut_doc == 0 and plan.first_val_doc == 1 and plan.cut_val_bytes == 91
    assert plan_split([1000], 0.25).cut_val_bytes == 250


def test_token_dtype_choice():
    assert token_dtype(4096) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(200_000) == np.uint32


def test_uint32_shards_for_a_large_vocabulary(tmp_path):
    # Every two-byte string as a merge of two bytes: 256 + 65536 tokens, then the specials.
    ranks = {bytes([b]): b for b in range(256)}
    merges = [(bytes([a]), bytes([b])) for a in range(256) for b in range(256)]
    for a, b in merges:
        ranks[a + b] = len(ranks)
    tok = Tokenizer(ranks, merges, {"<|endoftext|>": len(ranks)}, GPT2_PATTERN)
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "a.txt").write_text("zz top\n" * 50)
    (tmp_path / "b.txt").write_text("más texto\n" * 50)
    meta = prepare([tmp_path], tmp_path / "tok", tmp_path / "s", val_fraction=0.5, progress=False)
    assert meta["dtype"] == "uint32" and meta["eot_id"] == 65792
    val = TokenShards(tmp_path / "s")._array("val")
    assert val.dtype == np.uint32 and val[0] == val[-1] == 65792  # an id that uint16 cannot hold
    assert tok.decode(val[1:-1].tolist()) == "más texto\n" * 50


def test_out_dir_with_shards_is_refused_without_force(tmp_path, tok_dir, many_docs):
    path, _ = many_docs
    out = tmp_path / "s"
    first = prepare([path], tok_dir, out, progress=False)
    before = (out / "train.bin").read_bytes()
    with pytest.raises(YunqueError, match="already holds token shards; pass --force"):
        prepare([path], tok_dir, out, val_fraction=0.3, progress=False)
    assert (out / "train.bin").read_bytes() == before
    again = prepare([path], tok_dir, out, val_fraction=0.3, force=True, progress=False)
    assert again["splits"]["val"]["tokens"] > first["splits"]["val"]["tokens"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(YunqueError, match="holds files other than token shards"):
        prepare([path], tok_dir, tmp_path / "mine", force=True, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_interrupted_prepare_leaves_nothing(tmp_path, tok_dir, many_docs, monkeypatch):
    path, _ = many_docs
    monkeypatch.setattr(data, "BATCH_CHARS", 200)
    calls = []

    def failing(self, texts, allowed_special=(), num_threads=None):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, texts, allowed_special, num_threads)

    original = Tokenizer.encode_batch
    monkeypatch.setattr(Tokenizer, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare([path], tok_dir, tmp_path / "s", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.txt"], "does not exist"),
        (["corpus.jsonl", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
        (["corpus.jsonl", "--tokenizer", "nowhere"], "does not exist"),
        (["tiny.txt"], "too small to hold out a validation split"),
        (["latin1.txt"], "latin1.txt is not UTF-8 text (first bad byte at offset 1)"),
        (["corpus.jsonl", "--tokenizer", "corpus.jsonl"], "corpus.jsonl"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_writes_nothing(tmp_path, tok_dir, many_docs, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.txt").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("año".encode("latin-1"))
    full = ["data", "prepare", *args, "--out", "shards"]
    if "--tokenizer" not in args:
        full += ["--tokenizer", str(tok_dir)]
    result = CliRunner().invoke(app, full)
    assert result.exit_code != 0 and isinstance(result.exception, YunqueError)
    assert fragment in str(result.exception)
    assert not (tmp_path / "shards").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shards")]


def test_cli_main_prints_one_red_line(tmp_path, tok_dir):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "yunque.cli", "data", "prepare", str(tmp_path / "missing.txt"), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert proc.returncode == 1 and "Traceback" not in message and not (tmp_path / "s").exists()
    assert message.startswith("error: Input") and "does not exist" in message and ". " not in message


def test_cli_prepare_prints_a_summary(tmp_path, tok_dir, many_docs):
    path, _ = many_docs
    result = CliRunner().invoke(app, ["data", "prepare", str(path), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "val:" in result.output and "bytes/token" in result.output
    assert TokenShards(tmp_path / "s").tokens("train") > 0


@pytest.fixture
def shards(tmp_path, tok_dir, many_docs):
    prepare([many_docs[0]], tok_dir, tmp_path / "s", progress=False)
    return TokenShards(tmp_path / "s")


def test_get_batch_windows_are_shifted_and_deterministic(shards):
    arr = np.asarray(shards._array("train"), dtype=np.int64)
    x, y = shards.get_batch("train", 8, 16, torch.Generator().manual_seed(3))
    x2, y2 = shards.get_batch("train", 8, 16, torch.Generator().manual_seed(3))
    x3, _ = shards.get_batch("train", 8, 16, torch.Generator().manual_seed(4))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    windows = np.lib.stride_tricks.sliding_window_view(arr, 17)
    for xi, yi in zip(x.numpy(), y.numpy()):
        row = np.concatenate([xi, yi[-1:]])
        assert np.equal(windows, row).all(axis=1).any()  # a real window of the split
        assert np.array_equal(xi[1:], yi[:-1])


def test_iter_eval_covers_every_token_once(shards):
    arr = np.asarray(shards._array("val"), dtype=np.int64)
    batches = list(shards.iter_eval("val", batch_size=3, context=7))
    xs = np.concatenate([b.x.reshape(-1).numpy() for b in batches])
    ys = np.concatenate([b.y.reshape(-1).numpy() for b in batches])
    assert np.array_equal(xs, arr[:-1]) and np.array_equal(ys, arr[1:])
    assert all(b.x.shape[1] == 7 for b in batches[:-1]) and batches[-1].x.shape[1] == ((len(arr) - 1) % 7 or 7)
    # The masked targets are exactly the text tokens, whose bytes sum to the split's bytes.
    tok = Tokenizer.from_pretrained(shards.meta["tokenizer"]["path"])
    counted = np.concatenate([b.y[b.mask].numpy() for b in batches])
    assert sum(len(tok.token_bytes(int(t))) for t in counted) == shards.bytes("val")


def test_bits_per_byte():
    # A model that spreads its probability evenly over 256 byte values scores 8 bits per byte.
    assert bits_per_byte(1000 * math.log(256), 1000) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_loader_errors(tmp_path, shards):
    with pytest.raises(YunqueError, match="does not exist"):
        TokenShards(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(YunqueError, match="has no meta.json"):
        TokenShards(tmp_path / "empty")
    with pytest.raises(YunqueError, match="does not fit the val split"):
        shards.get_batch("val", 1, shards.tokens("val"), torch.Generator())
    with pytest.raises(YunqueError, match="Unknown split"):
        shards.tokens("test")
    val = shards.dir / "val.bin"
    val.write_bytes(val.read_bytes()[:-2])
    with pytest.raises(YunqueError, match="truncated or corrupt"):
        TokenShards(shards.dir)
    (shards.dir / "meta.json").write_text("{not json")
    with pytest.raises(YunqueError, match="meta.json is corrupt"):
        TokenShards(shards.dir)
