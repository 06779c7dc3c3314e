"""Instruction data for fine-tuning: records read with clear errors, conversations rendered with the
model's template, and the loss mask over the assistant's tokens, shown token by token."""

import json
import shutil

import pytest

import peers
from serving import training_text
from yunque.errors import YunqueError
from yunque.store.chat import model_chat_settings
from yunque.store.modelfile import Modelfile
from yunque.text.tokenizer import Tokenizer
from yunque.train.sft_data import Example, read_examples, render, render_all

CHAT = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"}, {"role": "assistant", "content": "Berlin."}]


def _targets(tokenizer, rendered):
    return "".join(tokenizer.decode([t]) for t, on in zip(rendered.ids, rendered.targets) if on)


def test_a_yunque_model_learns_only_what_the_assistant_says(tmp_path):
    tok = Tokenizer.train_from_iterator([training_text()], 400, show_progress=False)
    tok.save_pretrained(tmp_path)
    settings = model_chat_settings(tmp_path, Modelfile(from_=str(tmp_path)))
    r = render(settings, tok, Example(CHAT, "test"))
    assert tok.decode(r.ids) == settings.render(CHAT, add_generation_prompt=False)
    # Token by token: the turn markers and user text are context; each answer and its end-of-turn marker are targets.
    shown = [(tok.decode([t]), on) for t, on in zip(r.ids, r.targets)]
    assert ("<|user|>", False) in shown and ("<|assistant|>", False) in shown and ("<|end|>", True) in shown
    assert _targets(tok, r) == "Paris.<|end|>\nBerlin.<|end|>\n"


def test_an_imported_models_jinja_template_masks_the_same_way_and_tokenizes_as_transformers(tmp_path, shared_data):
    transformers = peers.require("transformers")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared_data / "configs" / "SmolLM2-135M-Instruct" / name, tmp_path / name)
    tok = Tokenizer.from_pretrained(tmp_path)
    settings = model_chat_settings(tmp_path, Modelfile(from_=str(tmp_path)))
    assert settings.source == "model" and "im_start" in settings.template
    r = render(settings, tok, Example(CHAT, "test"))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert r.ids == list(theirs)
    assert _targets(tok, r) == "Paris.<|im_end|>\nBerlin.<|im_end|>\n"
    assert "You are a helpful AI assistant" in tok.decode(r.ids)  # the template's default system prompt: context


def test_alpaca_and_chat_records_and_their_mistakes(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Hi", "output": "Hello"}]))
    first, second = read_examples(alpaca)
    assert first.messages == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert second.messages[0]["content"] == "Hi"
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": CHAT}) + "\n\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(YunqueError, match=r"c.jsonl:3: the record lacks 'output'"):
        read_examples(chat)
    cases = {
        "bad.jsonl": ("{not json\n", r"bad.jsonl:1: not valid JSON"),
        "user.jsonl": (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant message"),
        "role.jsonl": (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "system\\|user\\|assistant"),
        "empty.json": ("[]", "holds no examples"),
        "data.csv": ("a,b", "neither .json nor .jsonl"),
    }
    for name, (text, error) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(YunqueError, match=error):
            read_examples(tmp_path / name)
    with pytest.raises(YunqueError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")


def test_examples_over_the_context_are_dropped_and_counted_never_cut(tmp_path):
    tok = Tokenizer.train_from_iterator([training_text()], 400, show_progress=False)
    tok.save_pretrained(tmp_path)
    settings = model_chat_settings(tmp_path, Modelfile(from_=str(tmp_path)))
    short = Example(CHAT[:2], "short")
    long = Example([{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}], "long")
    kept, dropped = render_all(settings, tok, [short, long, short], context=64)
    assert [r.where for r in kept] == ["short", "short"] and dropped == 1
    with pytest.raises(YunqueError, match="longer than the context of 4 tokens"):
        render_all(settings, tok, [short], context=4)


def test_token_offsets_point_at_the_character_each_token_starts_in():
    tok = Tokenizer.train_from_iterator([training_text() + " ¿Qué tal? 你好"], 400, show_progress=False)
    text = "¿Qué tal? 你好 <|end|> ok"
    ids, starts = tok.encode_with_offsets(text, allowed_special="all")
    assert ids == tok.encode(text, allowed_special="all") and starts[0] == 0 and starts == sorted(starts)
    pieces = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    assert "".join(pieces) == text and "<|end|>" in pieces
    whole = [(tok.decode([t]), p) for t, p in zip(ids, pieces) if "\ufffd" not in tok.decode([t]) and p]
    assert all(d == p for d, p in whole)  # a token that is whole characters starts where they do
