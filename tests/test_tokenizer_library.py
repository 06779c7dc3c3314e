"""tokenizer.json files that are not plain byte-level BPE (BPE with byte fallback, metaspace,
Unigram, WordPiece) load through the tokenizers library and agree with transformers'
AutoTokenizer on held-out text: ids, decoded text, and streamed text that never splits a character.

Each tokenizer is built here in the layout of a real family (Llama-2/Mistral v0.1, Mistral v0.3
/ Gemma-style metaspace, T5-style Unigram, BERT's WordPiece), trained on the first part of
Don Quijote and tested on a later part, plus characters it never saw (byte fallback).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from yunque.text.hf_tokenizer import LibraryTokenizer
from yunque.text.tokenizer import Tokenizer

UNSEEN = " ¿Qué tal? 東京 🙂 naïve — «fin»\n\tend"
SPECIALS = ["<unk>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def quijote(shared_data) -> tuple[str, str]:
    text = (shared_data / "quijote.txt").read_text(encoding="utf-8")
    return text[20_000:220_000], text[400_000:404_000] + UNSEEN


def _byte_fallback_bpe(train: str, metaspace_pre_tokenizer: bool):
    """Llama-2 / Mistral v0.1 layout (a normalizer writes ▁ for spaces) or Mistral v0.3 / Gemma's
    (a Metaspace pre-tokenizer): BPE over ▁-words whose unknown characters fall back to <0xNN> bytes."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    def dressed(tok):
        if metaspace_pre_tokenizer:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
            tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()])
        else:
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        return tok

    learner = HF(models.BPE())  # learns the merges over ▁-words (fast); the layout is set below
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner.train_from_iterator([train], trainers.BpeTrainer(vocab_size=900, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {name: i for i, name in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = dressed(HF(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)))
    tok.add_special_tokens(SPECIALS)
    return tok


def _unigram(train: str):
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HF(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator([train], trainers.UnigramTrainer(vocab_size=800, special_tokens=SPECIALS, unk_token="<unk>", show_progress=False))
    return tok


def _wordpiece(train: str):
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = HF(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([train], trainers.WordPieceTrainer(vocab_size=900, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    return tok


KINDS = {
    "bpe-byte-fallback": (lambda t: _byte_fallback_bpe(t, False), {"eos_token": "</s>", "bos_token": "<s>", "clean_up_tokenization_spaces": False}),
    "bpe-metaspace": (lambda t: _byte_fallback_bpe(t, True), {"eos_token": "</s>", "bos_token": "<s>", "clean_up_tokenization_spaces": False}),
    "unigram": (_unigram, {"eos_token": "</s>", "clean_up_tokenization_spaces": False}),
    "wordpiece": (_wordpiece, {"sep_token": "[SEP]", "clean_up_tokenization_spaces": True}),
}


@pytest.fixture(scope="module", params=list(KINDS))
def built(request, quijote, tmp_path_factory) -> tuple[str, Path]:
    build, config = KINDS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    build(quijote[0]).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    return request.param, directory


def test_ids_and_text_equal_transformers_on_held_out_text(built, quijote):
    from transformers import AutoTokenizer

    kind, directory = built
    held_out = quijote[1]
    tok = Tokenizer.from_pretrained(directory)
    auto = AutoTokenizer.from_pretrained(directory)
    assert isinstance(tok, LibraryTokenizer)
    ids = tok.encode(held_out)
    assert ids == auto.encode(held_out, add_special_tokens=False)
    assert tok.decode(ids) == auto.decode(ids)
    assert tok.vocab_size == len(auto) and tok.encode_batch([held_out, "otra"]) == [ids, tok.encode("otra")]
    if kind != "wordpiece":  # lower-cased and re-spaced by BERT's normalizer, as transformers does too
        assert tok.decode(ids) == held_out or "<unk>" in tok.decode(ids)
    if kind.startswith("bpe"):
        assert tok.decode(ids) == held_out  # byte fallback spells every unseen character exactly
        assert tok.eot_id == tok.special_tokens["</s>"] == auto.eos_token_id


def test_streamed_text_never_splits_a_character_and_adds_up(built, quijote):
    _, directory = built
    tok = Tokenizer.from_pretrained(directory)
    ids = tok.encode(quijote[1][-600:])
    decoder = tok.stream_decoder()
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_special_token_text_is_ordinary_unless_allowed(built):
    """As transformers' `split_special_tokens=True`: the text is not split out as its added token
    (a Unigram model may still spell it with the same-named piece of its own vocabulary)."""
    from transformers import AutoTokenizer

    kind, directory = built
    tok, auto = Tokenizer.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    name = "[SEP]" if kind == "wordpiece" else "</s>"
    text = f"a {name} b"
    assert tok.encode(text, allowed_special="all").count(tok.special_tokens[name]) == 1
    assert tok.encode(text) == auto.encode(text, add_special_tokens=False, split_special_tokens=True)
    if kind != "unigram":
        assert tok.special_tokens[name] not in tok.encode(text)


def test_a_model_with_a_library_tokenizer_generates_text_that_decodes(built, tmp_path):
    from yunque.infer.generate import generate
    from yunque.model.config import preset
    from yunque.model.transformer import Transformer

    _, directory = built
    tok = Tokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    model = Transformer(preset("cpu-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, n_kv_head=2, d_ff=64, max_seq_len=64))
    stream = generate(model, tok, "En un lugar", max_new_tokens=24, temperature=1.0, seed=1, stop_token_ids=[])
    text = "".join(stream)
    assert text == tok.decode(stream.result.token_ids) and "\ufffd" not in text
    tok.save_pretrained(tmp_path / "copy")
    assert Tokenizer.from_pretrained(tmp_path / "copy").fingerprint == tok.fingerprint


def test_a_broken_tokenizer_json_is_one_sentence(tmp_path):
    from yunque.errors import YunqueError

    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Mystery"}}))
    with pytest.raises(YunqueError, match="tokenizers library can read"):
        Tokenizer.from_pretrained(tmp_path)
