"""GPT-2 compatibility: yunque on GPT-2's encoder.json + vocab.bpe gives the ids of tiktoken and
of transformers' GPT2Tokenizer, on every line of two books and on arbitrary Unicode."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yunque import Tokenizer

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gpt2(shared_data) -> Tokenizer:
    return Tokenizer.from_pretrained(shared_data / "gpt2")


@pytest.fixture(scope="module")
def tiktoken_gpt2(shared_data):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(str(shared_data / "gpt2" / "vocab.bpe"), str(shared_data / "gpt2" / "encoder.json"))
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf_gpt2(shared_data, tmp_path_factory):
    from transformers import GPT2Tokenizer

    tmp = tmp_path_factory.mktemp("gpt2_hf")
    shutil.copy(shared_data / "gpt2" / "encoder.json", tmp / "vocab.json")
    shutil.copy(shared_data / "gpt2" / "vocab.bpe", tmp / "merges.txt")
    return GPT2Tokenizer.from_pretrained(tmp)


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    return [
        line
        for name in ("tinyshakespeare.txt", "quijote.txt")
        for line in (shared_data / name).read_text(encoding="utf-8").splitlines(keepends=True)
    ]


def test_gpt2_layout(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {"<|endoftext|>": 50256} and gpt2.eot_id == 50256
    assert gpt2.token_to_id("<|user|>") is None  # no chat tokens in GPT-2
    assert gpt2.encode("Hello world") == [15496, 995]


def test_gpt2_matches_tiktoken_on_every_line(gpt2, tiktoken_gpt2, lines):
    assert gpt2.encode_batch(lines) == tiktoken_gpt2.encode_ordinary_batch(lines)
    assert [gpt2.encode(line) for line in lines[:2000]] == [tiktoken_gpt2.encode_ordinary(line) for line in lines[:2000]]


@pytest.mark.slow
def test_gpt2_matches_transformers_on_every_line(gpt2, hf_gpt2, lines):
    want = hf_gpt2(lines, add_special_tokens=False)["input_ids"]
    assert gpt2.encode_batch(lines) == want


@HYPO
@given(text=TEXT)
def test_gpt2_matches_peers_on_any_unicode(gpt2, tiktoken_gpt2, hf_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    # transformers always turns "<|endoftext|>" in the text into the special id.
    assert hf_gpt2.encode(text, add_special_tokens=False) == gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


def test_gpt2_round_trips_through_hugging_face_files(gpt2, hf_gpt2, tmp_path, lines):
    # A directory transformers wrote (tokenizer.json) reads back as the same tokenizer...
    hf_gpt2.save_pretrained(tmp_path / "hf")
    from_hf = Tokenizer.from_pretrained(tmp_path / "hf")
    assert from_hf.fingerprint == gpt2.fingerprint
    # ...and what yunque writes reads back the same in yunque and in transformers.
    gpt2.save_pretrained(tmp_path / "ours")
    assert Tokenizer.from_pretrained(tmp_path / "ours").fingerprint == gpt2.fingerprint
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tmp_path / "ours")
    sample = lines[:500]
    assert auto(sample, add_special_tokens=False)["input_ids"] == gpt2.encode_batch(sample)
    assert auto.eos_token_id == 50256
