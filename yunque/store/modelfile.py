"""Ollama's Modelfile format: parse it into a `Modelfile`, and render one back to text.

    FROM <store name or directory>        required; a path is relative to the Modelfile's directory
    PARAMETER <name> <value>              Ollama's sampling names, typed and range-checked; `stop` repeats
    SYSTEM / TEMPLATE / LICENSE <text>    text, on one line or in triple quotes across lines
    MESSAGE <system|user|assistant> <text>
    # a comment                           only whole lines, so `#` inside a value is kept

Instruction names are case-insensitive. Anything wrong is a `YunqueError` naming the line.
Values in triple quotes end at the first `\"\"\"` that closes a line; no escapes are
interpreted, so templates keep their `\\n` and backslashes verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from yunque.errors import YunqueError
from yunque.infer.options import check_parameter

ROLES = ("system", "user", "assistant")


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole parameter dict (e.g. from modelfile.json or an API request)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        try:
            out[name.lower()] = check_parameter(name, value)
        except ValueError as e:
            raise YunqueError(f"Invalid model parameters: {e}.") from None
    return out


@dataclass
class Modelfile:
    """The settings one Modelfile describes; `from_` is the base model as written."""

    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapter: str | None = None  # a LoRA adapter directory as written (in the store: the entry's own adapter/)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_,
            "parameters": self.parameters,
            "system": self.system,
            "template": self.template,
            "messages": self.messages,
            "license": self.license,
            "adapter": self.adapter,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Modelfile":
        return cls(
            from_=d["from"],
            parameters=check_parameters(d.get("parameters") or {}),
            system=d.get("system"),
            template=d.get("template"),
            messages=list(d.get("messages") or []),
            license=list(d.get("license") or []),
            adapter=d.get("adapter"),
        )


_INSTRUCTION = re.compile(r"[ \t]*([A-Za-z]+)(?=[ \t]|$)[ \t]*", re.MULTILINE)
_TRIPLE_END = re.compile(r'"""[ \t]*$', re.MULTILINE)


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _value(text: str, pos: int, lineno: int, what: str) -> tuple[str, int]:
    """Read the value at `pos`: triple-quoted (may span lines), double-quoted, or the rest of the line.

    Returns the value and the position of the end of its last line.
    """
    if text.startswith('"""', pos):
        close = _TRIPLE_END.search(text, pos + 3)
        if close is None:
            raise YunqueError(f'Modelfile line {lineno}: {what} opens a triple-quoted value that is never closed; end it with """ at the end of a line.')
        return text[pos + 3 : close.start()], close.end()
    end = _line_end(text, pos)
    value = text[pos:end].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value, end


def _parameter(mf: Modelfile, text: str, pos: int, lineno: int) -> int:
    m = re.compile(r"(\S+)[ \t]+(?=\S)").match(text, pos)
    if m is None:
        raise YunqueError(f"Modelfile line {lineno}: PARAMETER needs a name and a value, e.g. `PARAMETER temperature 0.7`.")
    raw, end = _value(text, m.end(), lineno, "PARAMETER")
    try:
        value = check_parameter(m.group(1), raw)
    except ValueError as e:
        raise YunqueError(f"Modelfile line {lineno}: {e}.") from None
    key = m.group(1).lower()
    if key == "stop":
        mf.parameters.setdefault("stop", []).extend(value)
    else:
        mf.parameters[key] = value
    return end


def _message(mf: Modelfile, text: str, pos: int, lineno: int) -> int:
    m = re.compile(r"(\S+)[ \t]*").match(text, pos)
    role = m.group(1).lower() if m else ""
    if role not in ROLES:
        raise YunqueError(f"Modelfile line {lineno}: MESSAGE role must be one of {', '.join(ROLES)}, got {role!r}.")
    content, end = _value(text, m.end(), lineno, "MESSAGE")
    mf.messages.append({"role": role, "content": content})
    return end


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; every error is a `YunqueError` that names the line."""
    mf, from_ = Modelfile(from_=""), None
    pos = 0
    line_of = _LineNumbers(text)
    while pos < len(text):
        lineno = line_of(pos)
        line = text[pos : _line_end(text, pos)].strip()
        if not line or line.startswith("#"):
            pos = _line_end(text, pos) + 1
            continue
        m = _INSTRUCTION.match(text, pos)
        word = m.group(1).upper() if m else ""
        if word == "PARAMETER":
            pos = _parameter(mf, text, m.end(), lineno)
        elif word == "MESSAGE":
            pos = _message(mf, text, m.end(), lineno)
        elif word in ("FROM", "SYSTEM", "TEMPLATE", "LICENSE"):
            value, pos = _value(text, m.end(), lineno, word)
            if word == "FROM":
                if from_ is not None:
                    raise YunqueError(f"Modelfile line {lineno}: FROM appears twice; a Modelfile has exactly one base model.")
                if not value.strip():
                    raise YunqueError(f"Modelfile line {lineno}: FROM needs a model name or a directory.")
                from_ = value.strip()
            elif word == "LICENSE":
                mf.license.append(value)
            else:
                setattr(mf, word.lower(), value)
        elif word == "ADAPTER":
            value, pos = _value(text, m.end(), lineno, word)
            if mf.adapter is not None:
                raise YunqueError(f"Modelfile line {lineno}: ADAPTER appears twice; a model takes one LoRA adapter (merge one first with `yunque merge`).")
            if not value.strip():
                raise YunqueError(f"Modelfile line {lineno}: ADAPTER needs the directory of a LoRA adapter.")
            mf.adapter = value.strip()
        else:
            raise YunqueError(f"Modelfile line {lineno}: unknown instruction {line.split()[0][:40]!r}; use FROM, ADAPTER, PARAMETER, SYSTEM, TEMPLATE, MESSAGE or LICENSE.")
        rest = text[pos : _line_end(text, pos)].strip()
        if rest:
            raise YunqueError(f"Modelfile line {line_of(pos)}: unexpected text {rest[:40]!r} after a quoted value.")
        pos = _line_end(text, pos) + 1
    if from_ is None:
        raise YunqueError("The Modelfile has no FROM line; add one naming the base model, e.g. `FROM ./my-model` or `FROM mymodel:latest`.")
    mf.from_ = from_
    return mf


class _LineNumbers:
    """The line number at a position, for positions that only move forward: each call counts
    only the newlines since the last, so numbering a whole file is linear, not quadratic."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _quote(value: str, what: str) -> str:
    if re.search(r'"""[ \t]*(\n|$)', value):
        raise YunqueError(f"Cannot write {what} to a Modelfile: its text contains \"\"\" at the end of a line.")
    return f'"""{value}"""'


def _param_text(key: str, value: Any) -> str:
    text = str(value)
    # Values a bare line would change (outer spaces or quotes, newlines) go in triple quotes.
    if "\n" in text or text != text.strip() or text.startswith('"'):
        return _quote(text, f"PARAMETER {key}")
    return text


def render_modelfile(mf: Modelfile, header: str | None = None) -> str:
    """Modelfile text that `parse_modelfile` turns back into an equal `Modelfile`."""
    lines = [f"# {header}"] if header else []
    lines.append(f"FROM {mf.from_}")
    if mf.adapter is not None:
        lines.append(f"ADAPTER {mf.adapter}")
    if mf.template is not None:
        lines.append(f"TEMPLATE {_quote(mf.template, 'TEMPLATE')}")
    if mf.system is not None:
        lines.append(f"SYSTEM {_quote(mf.system, 'SYSTEM')}")
    for key, value in mf.parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_param_text(key, v)}")
    for msg in mf.messages:
        lines.append(f"MESSAGE {msg['role']} {_quote(msg['content'], 'MESSAGE')}")
    for lic in mf.license:
        lines.append(f"LICENSE {_quote(lic, 'LICENSE')}")
    return "\n".join(lines) + "\n"
