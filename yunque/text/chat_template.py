"""Chat templates: turn a list of messages into the prompt text a model was trained on.

Two template languages are understood:
- jinja2 `chat_template`s as Hugging Face writes them into tokenizer_config.json, rendered
  the way `transformers`' `apply_chat_template(..., tokenize=False)` renders them;
- Ollama's Go-template TEMPLATEs (`{{ .System }}`, `{{ range .Messages }}` ...), through
  `yunque.gotemplate`, with Ollama's turn-by-turn rule for templates without `.Messages`.

Strings in, a string out: which template a model uses is decided by the store
(`yunque.store.entries.chat_settings`), so training can render examples without the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from yunque.errors import YunqueError
from yunque.text.gotemplate import render_go_template, uses_messages
from yunque.text.special import DEFAULT_CHAT_TEMPLATE, ENDOFTEXT

def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # As transformers: jinja's own tojson escapes HTML characters, which chat templates must not.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    """A sandboxed environment configured as transformers' (templates from the Hub are untrusted)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise YunqueError(f"The chat template has a syntax error on line {e.lineno}: {e.message}; fix the template.") from None


def _check_messages(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise YunqueError(f"Each chat message needs a 'role' and 'content', got {m!r}.")


def render_chat(
    messages: list[dict[str, Any]],
    template: str | None = None,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = ENDOFTEXT,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """Render a jinja2 chat template (default: yunque's) as transformers' apply_chat_template does."""
    _check_messages(messages)
    try:
        return _compile(template or DEFAULT_CHAT_TEMPLATE).render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except jinja2.exceptions.SecurityError as e:
        raise YunqueError(f"The chat template tried something unsafe ({e}); use a trusted template.") from None
    except jinja2.TemplateError as e:
        raise YunqueError(f"The chat template refused these messages: {e}") from None


def _collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: merge consecutive messages of one role (tool results excepted); also return all system text."""
    merged: list[dict[str, Any]] = []
    for m in messages:
        msg = {"role": m["role"], "content": m.get("content") or "", "tool_calls": m.get("tool_calls") or [], "images": m.get("images") or [],
               "thinking": m.get("thinking") or "", "tool_name": m.get("tool_name") or ""}
        if merged and merged[-1]["role"] == msg["role"] and msg["role"] != "tool":
            merged[-1]["content"] += "\n\n" + msg["content"]
        else:
            merged.append(msg)
    system = "\n\n".join(m["content"] for m in merged if m["role"] == "system")
    return system, merged


def render_ollama(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """Render an Ollama Go template for a conversation, following Ollama's `template.Execute`.

    Templates that use `.Messages` see the whole conversation at once. Older ones (System /
    Prompt / Response) are rendered once per user turn, and the last rendering stops at
    `.Response`, where the model's answer begins (Go templates always end with the
    generation prompt; Ollama has no switch for it).
    """
    _check_messages(messages)
    system, merged = _collate(messages)
    base = {"Suffix": "", "Think": False, "IsThinkSet": False, "ThinkLevel": "", "Tools": tools or [], "Prompt": "", "Response": ""}
    if uses_messages(template):
        return render_go_template(template, {**base, "System": system, "Messages": merged})
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute() -> None:
        out.append(render_go_template(template, {**base, **turn}))
        turn.update(System="", Prompt="", Response="")

    for m in merged:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                execute()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                execute()
            turn["Prompt"] = m["content"]
        elif m["role"] == "assistant":
            turn["Response"] = m["content"]
    out.append(render_go_template(template, {**base, **turn}, cut_at_response=True))
    return "".join(out)


@dataclass
class ChatSettings:
    """Everything about a model's chat format that generation needs."""

    template: str
    kind: Literal["jinja", "go"]
    source: Literal["modelfile", "model", "default"]
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    bos_token: str | None = None
    eos_token: str | None = None

    def conversation(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Modelfile MESSAGEs first, then `messages`; the SYSTEM prompt leads unless a system message is given (as Ollama)."""
        msgs = [*self.messages, *messages]
        if self.system and not (messages and messages[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` under this model's template and settings."""
        msgs = self.conversation(messages)
        if self.kind == "go":
            return render_ollama(self.template, msgs, tools)
        return render_chat(msgs, self.template, add_generation_prompt, self.bos_token, self.eos_token, tools)
