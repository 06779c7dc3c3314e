"""JSON-constrained decoding: the byte automaton against json.loads, and generation under it."""

import json

import pytest
from test_engine import model, tok  # noqa: F401  (fixtures: a tiny model and its tokenizer)
import torch

from yunque.infer import constrain
from yunque.infer.generate import generate
from yunque.errors import YunqueError

VALID = [
    '{}', '{"a": 1}', '{"a": [1, -2.5e+3, 0, 0.25, 1E5]}', '{"k": "v\\n\\"q\\" \\u00e9 \\u4e2d", "n": null}',
    '{"t": true, "f": false, "o": {"x": [[], {}, [{}]]}}', '{"s": "héllo 中文"}', '{\n  "a" :\t-0\n}',
]
INVALID = [
    '[1]', '"x"', '1', '{"a" 1}', '{"a": 01}', '{"a": 1,}', '{a: 1}', '{"a": tru}', '{"a": 1]',
    '{"a": "\x01"}', '{"a": "\\x"}', '{"a": -}', '{"a": 1.}', '{"a": 1e}', '{"a": [1 2]}', '{}}', '{} x',
    '{"a": "\\u12g4"}', '{"a": .5}', '{"a": +1}',
]


def run(text: str):
    return constrain.feed(constrain.START, text.encode())


@pytest.mark.parametrize("text", VALID)
def test_valid_objects_are_accepted_and_complete(text):
    json.loads(text)
    state = run(text)
    assert state is not None and constrain.is_complete(state)
    for cut in range(len(text.encode())):  # every prefix is a live prefix, not yet complete
        prefix = constrain.feed(constrain.START, text.encode()[:cut])
        assert prefix is not None and not constrain.is_complete(prefix)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_texts_are_refused_or_never_complete(text):
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    assert not isinstance(parsed, dict)  # not one JSON object
    state = run(text)
    assert state is None or not constrain.is_complete(state)


def test_leading_and_runaway_whitespace_are_refused():
    assert run(" {}") is None
    assert run('{"a":' + " " * constrain.MAX_BLANKS + "1}") is not None
    assert run('{"a":' + " " * (constrain.MAX_BLANKS + 1)) is None
    assert run('{"a": "' + " " * 100 + '"}') is not None  # inside a string, blanks are text


def test_a_number_ends_at_the_byte_after_it():
    state = run('{"a": 12')
    assert state is not None and not constrain.is_complete(state)
    assert constrain.is_complete(constrain.feed(state, b"}"))


def test_masked_decoding_reaches_an_object_that_parses(tok):
    c = constrain.JsonConstraint(tok)
    g = torch.Generator().manual_seed(0)
    closing = [tok.token_to_id(ch) for ch in '}]"']
    eot = tok.eot_id
    out = []
    for i in range(2000):
        logits = torch.randn(tok.vocab_size, generator=g)
        logits[eot] = 100.0  # special tokens are never allowed, however likely
        if i > 40:
            logits[closing] += 10.0
        token = int(c.mask(logits).argmax())
        assert token != eot
        c.advance(token)
        out.append(token)
        if c.complete:
            break
    assert c.complete and isinstance(json.loads(tok.decode(out)), dict)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_under_the_constraint_always_parses(model, tok, temperature):
    for seed in range(4):
        stream = generate(model, tok, "Answer in JSON:", temperature=temperature, seed=seed, max_new_tokens=80, json_object=True, top_k=40)
        text = "".join(stream)
        if stream.result.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:  # ran out of tokens: still a valid prefix
            assert stream.result.finish_reason == "length" and run(text) is not None


def test_json_output_needs_a_tokenizer(model):
    from yunque.infer.generate import generate_ids

    with pytest.raises(YunqueError, match="tokenizer"):
        generate_ids(model, [1, 2, 3], json_object=True)
