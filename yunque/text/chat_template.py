"""Chat templates: turn a list of messages into the prompt text a model was trained on.

Two template languages are understood:
- jinja2 `chat_template`s as Hugging Face writes them into tokenizer_config.json, rendered
  the way `transformers`' `apply_chat_template(..., tokenize=False)` renders them;
- Ollama's Go-template TEMPLATEs (`{{ .System }}`, `{{ range .Messages }}` ...), through
  `yunque.gotemplate`, with Ollama's turn-by-turn rule for templates without `.Messages`.

Which template a model uses (docs/architecture.md): the Modelfile TEMPLATE, else the model
directory's chat template (chat_template.jinja, then tokenizer_config.json's chat_template),
else `DEFAULT_CHAT_TEMPLATE`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from yunque.errors import YunqueError
from yunque.gotemplate import looks_like_go, render_go_template, uses_messages
from yunque.modelfile import check_parameters
from yunque.store import ModelEntry, resolve

# The chat special tokens of yunque's tokenizer.
SYSTEM, USER, ASSISTANT, TOOL = "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"
END, TOOL_CALL, TOOL_CALL_END, ENDOFTEXT = "<|end|>", "<|tool_call|>", "<|/tool_call|>", "<|endoftext|>"
CHAT_SPECIAL_TOKENS = (SYSTEM, USER, ASSISTANT, TOOL, END, TOOL_CALL, TOOL_CALL_END, ENDOFTEXT)

# yunque's own format: `<|role|>content<|end|>\n` per message, tools listed in the system turn,
# each tool call as `<|tool_call|>{"name": ..., "arguments": ...}<|/tool_call|>`, and
# `<|assistant|>` as the generation prompt. Written for HF's renderer (trim_blocks, lstrip_blocks).
DEFAULT_CHAT_TEMPLATE = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}\n"
    "{%- if system is not none or tools -%}\n"
    "{{ '<|system|>' }}{% if system is not none %}{{ system }}{% endif %}\n"
    "{%- if tools -%}\n"
    "{{ '\\n\\n' if system else '' }}{{ 'You can call these tools; answer with <|tool_call|>{\"name\": ..., \"arguments\": {...}}<|/tool_call|>:' }}\n"
    "{%- for tool in tools %}{{ '\\n' }}{{ (tool['function'] if tool['function'] is defined else tool) | tojson }}{% endfor -%}\n"
    "{%- endif -%}\n"
    "{{ '<|end|>\\n' }}\n"
    "{%- endif -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}\n"
    "{{ raise_exception('Unknown role ' + message['role'] + '; use system, user, assistant or tool.') }}\n"
    "{%- endif -%}\n"
    "{%- if not (loop.first and message['role'] == 'system') -%}\n"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] if message['content'] is string else '' }}\n"
    "{%- for call in message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] -%}\n"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}\n"
    "{{ '<|tool_call|>' }}{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}{{ '<|/tool_call|>' }}\n"
    "{%- endfor -%}\n"
    "{{ '<|end|>\\n' }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}\n"
)


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


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as text or as {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _model_template(model_dir: Path, tok_config: dict[str, Any]) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"  # where recent transformers save it
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: HF uses the one called "default"
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


# generation_config.json names that map onto Ollama parameters.
_GENERATION_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "repetition_penalty": "repeat_penalty"}


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise YunqueError(f"{path} is not valid JSON ({e}); fix or replace the file.") from None
    return data if isinstance(data, dict) else {}


def chat_settings(model: Any) -> ChatSettings:
    """The effective template, system prompt, parameters and stop strings of a store entry, name or directory.

    Parameters: generation_config.json's sampling defaults, overridden by the Modelfile's.
    Stop strings: the Modelfile's `stop`; otherwise `<|end|>` for the default template, or the
    tokenizer's eos token text for a model's own template.
    """
    entry = model if isinstance(model, ModelEntry) else resolve(str(model))
    settings = entry.settings
    tok_config = _read_optional_json(entry.path / "tokenizer_config.json")
    bos, eos = _token_text(tok_config.get("bos_token")), _token_text(tok_config.get("eos_token"))
    model_template = _model_template(entry.path, tok_config)
    if settings.template is not None:
        template, source = settings.template, "modelfile"
    elif model_template is not None and model_template != DEFAULT_CHAT_TEMPLATE:
        # yunque's tokenizer saves the default template; it is still the default (stops at <|end|>).
        template, source = model_template, "model"
    else:
        template, source = DEFAULT_CHAT_TEMPLATE, "default"
    generation = _read_optional_json(entry.path / "generation_config.json")
    defaults = {ours: generation[theirs] for theirs, ours in _GENERATION_KEYS.items() if generation.get(theirs) is not None}
    if generation.get("do_sample") is False:
        defaults["temperature"] = 0.0  # HF's greedy decoding; Ollama says it with temperature 0
    parameters = {**check_parameters(defaults), **settings.parameters}
    stop = list(parameters.pop("stop", []))
    if not stop:
        stop = [END] if source == "default" else [eos] if eos else []
    return ChatSettings(
        template=template,
        kind="go" if looks_like_go(template) else "jinja",
        source=source,
        system=settings.system,
        messages=list(settings.messages),
        parameters=parameters,
        stop=stop,
        bos_token=bos,
        eos_token=eos or (ENDOFTEXT if source == "default" else None),
    )
