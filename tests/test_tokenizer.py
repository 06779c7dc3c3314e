"""Tokenizer: training, special tokens, lossless round trips, the two backends agreeing,
Hugging Face interop, streaming decode, and one-sentence errors (library and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from yunque import Tokenizer
from yunque.cli.app import app
from yunque.errors import YunqueError
from yunque.text.special import SPECIAL_TOKENS
from yunque.text.tokenizer import MAX_VOCAB_SIZE, train_tokenizer

# Any Unicode text that has a UTF-8 form (lone surrogates do not).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def corpus(shared_data) -> str:
    return (shared_data / "tinyshakespeare.txt").read_text() + (shared_data / "quijote.txt").read_text()


@pytest.fixture(scope="session")
def tok(corpus) -> Tokenizer:
    return Tokenizer.train_from_iterator([corpus], 4096, show_progress=False)


@pytest.fixture(scope="session")
def tok_dir(tok, tmp_path_factory):
    return tok.save_pretrained(tmp_path_factory.mktemp("tok") / "tok")


def test_vocab_layout_and_special_tokens(tok):
    assert tok.vocab_size == 4096
    assert Tokenizer.SPECIAL_TOKENS == SPECIAL_TOKENS and len(SPECIAL_TOKENS) == 16
    assert SPECIAL_TOKENS[:8] == ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>",
                                  "<|tool_call|>", "<|/tool_call|>")
    # Bytes first (id == byte value), merges next, the 16 specials last, in order.
    assert all(tok.token_bytes(b) == bytes([b]) for b in range(256))
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert list(tok.special_tokens.values()) == list(range(4096 - 16, 4096))
    assert tok.eot_id == tok.token_to_id("<|endoftext|>") == 4080
    assert tok.token_to_id("<|end|>") == 4085


def test_special_text_is_ordinary_unless_allowed(tok):
    text = "a<|endoftext|>b<|user|>c"
    ordinary = tok.encode(text)
    assert not set(ordinary) & set(tok.special_tokens.values())
    assert tok.decode(ordinary) == text
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert only_eot.count(tok.eot_id) == 1 and tok.special_tokens["<|user|>"] not in only_eot
    everything = tok.encode(text, allowed_special="all")
    assert tok.eot_id in everything and tok.special_tokens["<|user|>"] in everything
    assert tok.decode(everything) == text
    assert tok.encode_batch([text, text]) == [ordinary, ordinary]
    assert tok.encode_batch([text], allowed_special="all") == [everything]
    with pytest.raises(YunqueError, match="no special token"):
        tok.encode(text, allowed_special={"<|nope|>"})


@HYPO
@given(text=TEXT)
def test_lossless_on_any_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_lossless_on_awkward_text(tok):
    for text in ["", "\r\n\r\n\t\t  x", "e\u0301\u0301", "👩‍👩‍👧 🇪🇸", "\x00\x7f\ufeff\U0010ffff", "  \n \n", "1234567"]:
        assert tok.decode(tok.encode(text)) == text


def test_encode_batch_matches_encode(tok, corpus):
    lines = corpus.splitlines(keepends=True)[:3000]
    assert tok.encode_batch(lines, num_threads=2) == [tok.encode(line) for line in lines]


def test_tokenizers_backend_agrees_on_real_text(tok, corpus):
    hf = tok.to_tokenizers()
    assert hf.encode(corpus, add_special_tokens=False).ids == tok.encode(corpus)


@HYPO
@given(text=TEXT)
def test_tokenizers_backend_agrees_on_any_unicode(tok, text):
    hf = _hf_backend(tok)  # Hugging Face always turns special-token text into its id
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")


_HF_CACHE: dict[str, object] = {}


def _hf_backend(tok):
    return _HF_CACHE.setdefault(tok.fingerprint, tok.to_tokenizers())


def test_stream_decoder_holds_back_split_characters(tok):
    text = "olé 🦜 ñandú 漢字 done"
    ids = tok.encode(text)
    assert any(tok.token_bytes(i).decode("utf-8", errors="replace") != tok.token_bytes(i).decode("utf-8", "ignore")
               for i in ids), "the sample must split a character across tokens"
    stream = tok.stream_decoder()
    pieces = [stream.add(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@HYPO
@given(text=TEXT)
def test_stream_decoder_equals_decode(tok, text):
    stream = tok.stream_decoder()
    out = "".join(stream.add(i) for i in tok.encode(text)) + stream.flush()
    assert out == text


def test_stream_decoder_flush_replaces_invalid_tail(tok):
    stream = tok.stream_decoder()
    assert stream.add(0xE6) == ""  # first byte of a 3-byte character: held back
    assert stream.flush() == "\ufffd"


def test_save_and_load_round_trip(tok, tok_dir, corpus):
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    again = Tokenizer.from_pretrained(tok_dir)
    assert again.fingerprint == tok.fingerprint
    assert again.special_tokens == tok.special_tokens and again.eot_id == tok.eot_id
    sample = corpus[:20000]
    assert again.encode(sample) == tok.encode(sample)
    assert Tokenizer.from_pretrained(tok_dir / "tokenizer.json").fingerprint == tok.fingerprint


def test_fingerprint_tells_tokenizers_apart(tok, corpus):
    other = Tokenizer.train_from_iterator([corpus[:200000]], 1000, show_progress=False)
    assert other.fingerprint != tok.fingerprint
    assert Tokenizer.train_from_iterator([corpus[:200000]], 1000, show_progress=False).fingerprint == other.fingerprint


def test_hugging_face_loads_saved_tokenizer_identically(tok, tok_dir, corpus):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = corpus[:5000] + " <|user|>hola<|end|><|endoftext|>"
    want = tok.encode(text, allowed_special="all")  # Hugging Face always splits out special tokens
    assert HFTokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids == want
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    assert fast(text, add_special_tokens=False)["input_ids"] == want
    auto = AutoTokenizer.from_pretrained(tok_dir)
    assert auto(text)["input_ids"] == want
    assert auto.decode(want) == text
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == tok.eot_id
    assert auto.convert_tokens_to_ids("<|assistant|>") == tok.token_to_id("<|assistant|>")
    assert set(auto.all_special_tokens) == set(SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", ["WordPiece", "Unigram", "WordLevel"])
def test_other_tokenizer_types_load_through_the_tokenizers_library(tmp_path, kind):
    """Not byte-level BPE, so not tiktoken's: the library runs them (tests/test_tokenizer_library.py
    holds them to transformers on real text)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from yunque.text.hf_tokenizer import LibraryTokenizer

    model = {"WordPiece": models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"),
             "Unigram": models.Unigram([("a", -1.0), ("<unk>", -2.0)], 1),
             "WordLevel": models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")}[kind]
    HFTokenizer(model).save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, LibraryTokenizer) and tok.vocab_size == 2
    assert tok.encode("a") == HFTokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("a").ids


def test_train_from_files_directories_and_jsonl(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Notas\n\nEl yunque del herrero suena.\n" * 50)
    rows = [json.dumps({"text": f"Documento {i}: el martillo golpea el yunque."}) for i in range(50)]
    (tmp_path / "docs.jsonl").write_text("\n".join(rows) + "\n")
    tok = Tokenizer.train([tmp_path / "notes", tmp_path / "docs.jsonl"], 300, show_progress=False)
    assert tok.vocab_size == 300
    assert len(tok.encode("el yunque")) < len("el yunque".encode())
    assert tok.decode(tok.encode("el yunque")) == "el yunque"


def test_bad_vocab_sizes_and_empty_input():
    for size in (256, 256 + 15, MAX_VOCAB_SIZE + 1):
        with pytest.raises(YunqueError, match="out of range"):
            Tokenizer.train_from_iterator(["some text"], size)
    with pytest.raises(YunqueError, match="no text"):
        Tokenizer.train_from_iterator([], 1000)


def test_train_tokenizer_refuses_a_different_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("the anvil rings and the hammer falls " * 200)
    (tmp_path / "b.txt").write_text("el yunque suena y cae el martillo " * 200)
    out = tmp_path / "out"
    first = train_tokenizer([tmp_path / "a.txt"], 300, out, show_progress=False)
    assert first.bytes_per_token > 1 and first.sample.startswith("the anvil")
    assert train_tokenizer([tmp_path / "a.txt"], 300, out, show_progress=False).tokenizer.fingerprint == first.tokenizer.fingerprint
    before = (out / "tokenizer.json").read_bytes()
    with pytest.raises(YunqueError, match="already holds a different tokenizer"):
        train_tokenizer([tmp_path / "b.txt"], 300, out, show_progress=False)
    assert (out / "tokenizer.json").read_bytes() == before
    forced = train_tokenizer([tmp_path / "b.txt"], 300, out, force=True, show_progress=False)
    assert Tokenizer.from_pretrained(out).fingerprint == forced.tokenizer.fingerprint != first.tokenizer.fingerprint


def test_failed_training_leaves_no_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(YunqueError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], 300, out, show_progress=False)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(YunqueError, match="No text found"):
        train_tokenizer([tmp_path / "empty.txt"], 300, out, show_progress=False)
    (tmp_path / "bad.txt").write_bytes(b"ok text " * 100 + b"\xff\xfe")
    (tmp_path / "good.txt").write_text("fine text " * 100)
    with pytest.raises(YunqueError, match="not UTF-8"):
        train_tokenizer([tmp_path / "good.txt", tmp_path / "bad.txt"], 300, out, show_progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty.txt", "good.txt"]


def test_loading_errors(tmp_path, tok):
    with pytest.raises(YunqueError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(YunqueError, match="holds no tokenizer"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(YunqueError, match="not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    for bad in ([tok.vocab_size], [-1], [0, 5, 10**6]):
        with pytest.raises(YunqueError, match="not in this tokenizer's vocabulary"):
            tok.decode(bad)


def test_cli_train_encode_decode(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("In a village of La Mancha, the name of which I have no desire to call to mind.\n" * 100)
    out = tmp_path / "tok"
    runner = CliRunner()
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "400", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tok = Tokenizer.from_pretrained(out)  # a small corpus runs out of merges before 400
    assert f"vocab size {tok.vocab_size}" in result.output and "bytes/token" in result.output
    result = runner.invoke(app, ["tokenizer", "encode", str(out), "La Mancha<|endoftext|>", "--allow-special"])
    ids = [int(i) for i in result.output.split()]
    assert ids == tok.encode("La Mancha<|endoftext|>", allowed_special="all") and ids[-1] == tok.eot_id
    result = runner.invoke(app, ["tokenizer", "encode", str(out), "-"], input="village\n")
    assert [int(i) for i in result.output.split()] == tok.encode("village\n")
    result = runner.invoke(app, ["tokenizer", "decode", str(out), *map(str, ids)])
    assert result.output == "La Mancha<|endoftext|>\n"
    result = runner.invoke(app, ["tokenizer", "decode", str(out), "-"], input=" ".join(map(str, ids)))
    assert result.output == "La Mancha<|endoftext|>\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{tmp}/missing.txt", "--vocab-size", "400", "--out", "{tmp}/o"], "does not exist"),
        (["train", "{tmp}/c.txt", "--vocab-size", "100", "--out", "{tmp}/o"], "out of range"),
        (["train", "{tmp}/c.txt", "--vocab-size", "273", "--out", "{tmp}/tok"], "already holds a different tokenizer"),
        (["encode", "{tmp}/nowhere", "hi"], "does not exist"),
        (["decode", "{tmp}/tok", "1", "99999"], "not in this tokenizer's vocabulary"),
        (["decode", "{tmp}/tok", "1", "x2"], "is not a token id"),
    ],
)
def test_cli_errors_are_one_sentence(tmp_path, args, message):
    (tmp_path / "c.txt").write_text("some text to learn from " * 50)
    train_tokenizer([tmp_path / "c.txt"], 300, tmp_path / "tok", show_progress=False)
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "yunque.cli", "tokenizer", *argv], capture_output=True, text=True)
    assert proc.returncode == 1
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_reads_a_byte_level_bpe_trained_by_tokenizers(tmp_path, corpus):
    """A Hugging Face tokenizer.json with its special tokens first (ids 0, 1) loads, encodes
    like `tokenizers` itself, and saves back to the same tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([corpus[:300000]], trainer=trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>", "special": True}}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.special_tokens == {"<s>": 0, "</s>": 1} and tok.eot_id == 1
    text = corpus[300000:320000] + "</s>"
    assert tok.encode(text, allowed_special="all") == hf.encode(text).ids
    again = Tokenizer.from_pretrained(tok.save_pretrained(tmp_path / "saved"))
    assert again.fingerprint == tok.fingerprint and again.eot_id == 1


def test_saved_tokenizer_carries_the_default_chat_template_for_transformers(tmp_path):
    from transformers import AutoTokenizer

    from yunque.text.chat_template import render_chat
    from yunque.text.special import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer.train_from_iterator(["Hello there, how are you today?"] * 50, 300)
    tok.save_pretrained(tmp_path / "tok")
    assert Tokenizer.from_pretrained(tmp_path / "tok").chat_template == DEFAULT_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == render_chat(messages)
