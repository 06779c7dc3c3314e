"""Supervised fine-tuning data: instruction examples as conversations, rendered with the model's
chat template, with a loss mask over what the assistant says.

Two record shapes are read, from `.json` (a list of records) or `.jsonl` (one per line):
Alpaca's `{"instruction", "input" (optional), "output"}`, and the OpenAI chat shape
`{"messages": [{"role", "content"}, ...]}`. A record missing a field is refused with its file
and line.

The mask is found on the text, so it holds for any template: each assistant turn's span is
what rendering the conversation up to that turn adds to rendering it up to the turn before
(with the generation prompt), that is its content and the template's end-of-turn marker;
the whole conversation is tokenized once, and a token is a target when it starts inside a
span. System and user tokens, and the template's own markers, are context only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yunque.errors import YunqueError
from yunque.text.chat_template import ChatSettings

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One conversation to learn from, and where it came from (file:line)."""

    messages: list[dict[str, str]]
    where: str


@dataclass
class Rendered:
    """A rendered example: its token ids, and for each token whether it is a loss target."""

    ids: list[int]
    targets: list[bool]
    where: str


def _messages(record: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise YunqueError(f"{where}: expected an object with \"messages\", or \"instruction\" and \"output\"; got {type(record).__name__}.")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            raise YunqueError(f"{where}: \"messages\" must be a list of {{\"role\": system|user|assistant, \"content\": text}}.")
        if not any(m["role"] == "assistant" for m in messages):
            raise YunqueError(f"{where}: the conversation has no assistant message to learn from.")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
    if missing:
        raise YunqueError(f"{where}: the record lacks {' and '.join(repr(k) for k in missing)} (Alpaca records need instruction and output; chat records need messages).")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise YunqueError(f"{where}: \"input\" must be text.")
    user = record["instruction"] + (f"\n\n{extra}" if extra else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def read_examples(path: str | Path) -> list[Example]:
    """Every example of one `.json` or `.jsonl` file, in order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YunqueError(f"Dataset {path} does not exist; give a .json or .jsonl file of examples.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YunqueError(f"Cannot read dataset {path} ({e}).") from None
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as e:
                    raise YunqueError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise YunqueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        if not isinstance(data, list):
            raise YunqueError(f"{path}: expected a JSON list of examples.")
        records = [(r, f"{path} record {i + 1}") for i, r in enumerate(data)]
    else:
        raise YunqueError(f"Dataset {path} is neither .json nor .jsonl.")
    if not records:
        raise YunqueError(f"Dataset {path} holds no examples.")
    return [Example(_messages(r, where), where) for r, where in records]


def assistant_spans(settings: ChatSettings, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it."""
    full = settings.render(messages, add_generation_prompt=False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = settings.render(messages[:k], add_generation_prompt=True) if k else ""
        through = settings.render(messages[: k + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise YunqueError("This chat template does not render a conversation as the turns before it plus the new one, so the assistant's tokens cannot be told apart; fine-tune with another TEMPLATE.")
        spans.append((len(before), len(through)))
    return full, spans


def render(settings: ChatSettings, tokenizer: Any, example: Example) -> Rendered:
    """`example` as token ids under `settings`' template, with the assistant's tokens as targets."""
    text, spans = assistant_spans(settings, example.messages)
    ids, starts = tokenizer.encode_with_offsets(text, allowed_special="all")
    return Rendered(ids, [any(a <= s < b for a, b in spans) for s in starts], example.where)


def render_all(settings: ChatSettings, tokenizer: Any, examples: list[Example], context: int) -> tuple[list[Rendered], int]:
    """Every example that fits `context` tokens, and how many did not (dropped, never cut)."""
    kept = [r for r in (render(settings, tokenizer, e) for e in examples) if len(r.ids) <= context]
    if not kept:
        raise YunqueError(f"Every one of the {len(examples)} examples is longer than the context of {context} tokens; use shorter examples or a model with a longer context.")
    return kept, len(examples) - len(kept)
