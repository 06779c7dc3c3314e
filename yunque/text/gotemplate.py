"""The subset of Go's text/template that Ollama's Modelfile TEMPLATEs use, rendered directly.

Supported: text, `{{ pipeline }}` output, `{{- ... -}}` trimming, comments `{{/* */}}`,
`if / else if / else / end`, `range` (with `$i, $m :=`, and `else`), `with`, variables
(`$x := ...`, `$x = ...`, `$`, `$.Field`), fields `.A.B`, literals (strings, numbers,
true/false/nil), parentheses, pipes `a | f`, and the functions and, or, not, eq, ne, lt,
le, gt, ge, len, index, slice, print, json, currentDate. Anything else (`define`,
`template`, `block`, `printf`, unknown fields) is a `YunqueError` naming the construct, so an
unsupported template fails loudly instead of producing a wrong prompt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from yunque.errors import YunqueError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) |
      (?P<num>-?\d+(?:\.\d+)?) |
      (?P<decl>:=) | (?P<assign>=) | (?P<pipe>\|) | (?P<lp>\() | (?P<rp>\)) | (?P<comma>,) |
      (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*) |
      (?P<field>(?:\.[A-Za-z0-9_]+)+|\.) |
      (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _unsupported(what: str) -> YunqueError:
    return YunqueError(f"The template uses {what}, which yunque's Go-template support does not cover; rewrite it with if/range/with and fields, or use a jinja2 chat template.")


# ---- parsing: text and actions into a tree of nodes ---------------------------------------


@dataclass
class _Block:
    kind: str  # "root", "if", "range", "with"
    expr: list = field(default_factory=list)  # the pipeline tokens (for range: after the declaration)
    decl: list[str] = field(default_factory=list)  # range variables ($i, $m :=)
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)  # else branch (may hold one nested "if" for `else if`)


def _tokens(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise _unsupported(f"the syntax {src[pos:].strip()[:30]!r}")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


def _parse(template: str) -> _Block:
    pieces: list[tuple[str, str]] = []  # ("text", s) or ("action", s)
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    pieces.append(("text", template[pos:]))

    root = _Block("root")
    stack: list[tuple[_Block, list]] = [(root, root.body)]  # the block and the list being filled
    for kind, s in pieces:
        block, target = stack[-1]
        if kind == "text":
            if s:
                target.append(s)
            continue
        if s.startswith("/*"):
            continue
        word = s.split(None, 1)[0] if s else ""
        rest = s[len(word) :].strip()
        if word in ("if", "with"):
            node = _Block(word, _tokens(rest))
            target.append(node)
            stack.append((node, node.body))
        elif word == "range":
            node = _Block("range")
            toks = _tokens(rest)
            if any(t[0] == "decl" for t in toks):
                i = next(k for k, t in enumerate(toks) if t[0] == "decl")
                node.decl = [t[1] for t in toks[:i] if t[0] == "var"]
                toks = toks[i + 1 :]
            node.expr = toks
            target.append(node)
            stack.append((node, node.body))
        elif word == "else":
            if block.kind == "root":
                raise YunqueError("The template has an {{ else }} outside if/range/with; remove it or add the opening action.")
            if rest.startswith("if "):
                nested = _Block("if", _tokens(rest[3:]))
                block.orelse.append(nested)
                stack[-1] = (nested, nested.body)  # one {{ end }} closes the whole else-if chain
            elif rest:
                raise _unsupported(f"{{{{ else {rest.split()[0]} }}}}")
            else:
                stack[-1] = (block, block.orelse)
        elif word == "end":
            if len(stack) == 1:
                raise YunqueError("The template has an {{ end }} with no matching if/range/with; remove it.")
            stack.pop()
        elif word in ("define", "template", "block", "break", "continue"):
            raise _unsupported(f"{{{{ {word} }}}}")
        else:
            target.append(_tokens(s))
    if len(stack) > 1:
        raise YunqueError(f"The template's {{{{ {stack[-1][0].kind} }}}} is never closed; add {{{{ end }}}}.")
    return root


# ---- evaluation -------------------------------------------------------------------------


class _Cut(Exception):
    """Raised at the first `.Response` when rendering the final legacy turn (Ollama cuts the template there)."""


def _truth(v: Any) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, bool) or (hasattr(v, "__len__") and len(v) == 0))


def _go_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return _go_json(v)  # Ollama's tool types print themselves as JSON
    return str(v)


def _go_json(v: Any) -> str:
    """Go's json.Marshal: compact, and HTML-safe (<, >, & and line separators escaped)."""
    text = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def _print(*args: Any) -> str:
    """Go's fmt.Sprint: a space between operands only when neither is a string."""
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_go_str(a))
    return "".join(out)


def _slice(v: Any, *idx: int) -> Any:
    return v[idx[0] : idx[1]] if len(idx) == 2 else v[idx[0] :] if idx else v


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        v = v[k]
    return v


_FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda a: not _truth(a),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "len": len,
    "index": _index,
    "slice": _slice,
    "print": _print,
    "json": _go_json,
    "currentDate": lambda: dt.date.today().isoformat(),
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _Renderer:
    def __init__(self, root_data: dict[str, Any], cut_at_response: bool):
        self.cut = cut_at_response
        self.scopes: list[dict[str, Any]] = [{"$": root_data}]
        self.out: list[str] = []

    def field(self, obj: Any, names: list[str]) -> Any:
        for name in names:
            if name == "Response" and self.cut:
                raise _Cut
            # Data keeps its JSON keys (so `json .` prints them as APIs do); Go's `.ToolCalls`
            # finds `tool_calls`, `.Function` finds `function`.
            key = next((k for k in (name, name[:1].lower() + name[1:], _snake(name)) if isinstance(obj, dict) and k in obj), None)
            if key is None:
                raise _unsupported(f"the field .{name}")
            obj = obj[key]
        return obj

    def var(self, text: str) -> Any:
        name, *path = text.split(".")
        for scope in reversed(self.scopes):
            if name in scope:
                return self.field(scope[name], path)
        raise YunqueError(f"The template uses the variable {name} before defining it; define it with {name} := ... first.")

    def operand(self, toks: list, i: int, dot: Any) -> tuple[Any, int]:
        kind, text = toks[i]
        if kind == "str":
            return json.loads(text), i + 1
        if kind == "raw":
            return text[1:-1], i + 1
        if kind == "num":
            return (float(text) if "." in text else int(text)), i + 1
        if kind == "field":
            return (dot if text == "." else self.field(dot, text[1:].split("."))), i + 1
        if kind == "var":
            return self.var(text), i + 1
        if kind == "lp":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"lp": 1, "rp": -1}.get(toks[j][0], 0)
                j += 1
            if depth:
                raise YunqueError("The template has an unclosed '(' in an action; balance the parentheses.")
            return self.pipeline(toks[i + 1 : j - 1], dot), j
        if kind == "ident" and text in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[text], i + 1
        raise _unsupported(f"{text!r} in an argument position")

    def command(self, toks: list, dot: Any, piped: list) -> Any:
        kind, text = toks[0]
        if kind == "ident" and text not in ("true", "false", "nil"):
            if text in ("and", "or"):
                return self.logic(text, toks[1:], dot, piped)
            if text not in _FUNCS:
                raise _unsupported(f"the function {text!r}")
            args, i = [], 1
            while i < len(toks):
                v, i = self.operand(toks, i, dot)
                args.append(v)
            try:
                return _FUNCS[text](*args, *piped)
            except (TypeError, IndexError, KeyError) as e:
                raise YunqueError(f"The template's call to {text} failed ({e}); check its arguments.") from None
        value, i = self.operand(toks, 0, dot)
        if i != len(toks) or piped:
            raise _unsupported("a value followed by arguments")
        return value

    def logic(self, op: str, toks: list, dot: Any, piped: list) -> Any:
        """Go's and/or: evaluate left to right, stop at the deciding argument and return it."""
        i, value = 0, None
        while i < len(toks):
            value, i = self.operand(toks, i, dot)
            if _truth(value) != (op == "and"):
                return value
        for value in piped:
            if _truth(value) != (op == "and"):
                return value
        return value

    def pipeline(self, toks: list, dot: Any) -> Any:
        commands, current = [], []
        depth = 0
        for t in toks:
            depth += {"lp": 1, "rp": -1}.get(t[0], 0)
            if t[0] == "pipe" and depth == 0:
                commands.append(current)
                current = []
            else:
                current.append(t)
        commands.append(current)
        if not all(commands):
            raise YunqueError("The template has an empty action or pipe stage; remove it.")
        value = self.command(commands[0], dot, [])
        for cmd in commands[1:]:
            value = self.command(cmd, dot, [value])
        return value

    def action(self, toks: list, dot: Any) -> None:
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] in ("decl", "assign"):
            value = self.pipeline(toks[2:], dot)
            name = toks[0][1]
            if toks[1][0] == "decl":
                self.scopes[-1][name] = value
            else:
                scope = next((s for s in reversed(self.scopes) if name in s), None)
                if scope is None:
                    raise YunqueError(f"The template assigns {name} before declaring it; use {name} := ... first.")
                scope[name] = value
            return
        self.out.append(_go_str(self.pipeline(toks, dot)))

    def nodes(self, nodes: list, dot: Any) -> None:
        for node in nodes:
            if isinstance(node, str):
                self.out.append(node)
            elif isinstance(node, list):
                self.action(node, dot)
            else:
                self.block(node, dot)

    def scoped(self, nodes: list, dot: Any, variables: dict[str, Any]) -> None:
        self.scopes.append(dict(variables))
        try:
            self.nodes(nodes, dot)
        finally:
            self.scopes.pop()

    def block(self, node: _Block, dot: Any) -> None:
        value = self.pipeline(node.expr, dot)
        if node.kind == "if":
            self.scoped(node.body if _truth(value) else node.orelse, dot, {})
        elif node.kind == "with":
            self.scoped(node.body, value, {}) if _truth(value) else self.scoped(node.orelse, dot, {})
        elif not _truth(value):
            self.scoped(node.orelse, dot, {})
        else:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                names = node.decl
                variables = {names[0]: key, names[1]: item} if len(names) == 2 else {names[0]: item} if names else {}
                self.scoped(node.body, item, variables)


def render_go_template(template: str, data: dict[str, Any], cut_at_response: bool = False) -> str:
    """Render `template` with `data` (Go-style capitalised fields, or JSON keys they map to).

    With `cut_at_response`, output stops where `.Response` is first reached, as Ollama does
    for the turn the model is about to answer.
    """
    root = _parse(template)
    r = _Renderer(data, cut_at_response)
    with contextlib.suppress(_Cut):
        r.nodes(root.body, data)
    return "".join(r.out)


def uses_messages(template: str) -> bool:
    """Whether the template walks `.Messages` itself (Ollama's modern style) or renders turn by turn."""
    return any(re.search(r"\.Messages\b", m.group(2)) for m in _ACTION.finditer(template))


def looks_like_go(template: str) -> bool:
    """Go templates refer to data with a leading dot or `$`; jinja2 templates use `{%` and bare names."""
    return "{%" not in template and re.search(r"\{\{-?\s*(?:\.|\$|if\s|range\s|with\s|end\b|else\b|/\*|(?:and|or|not|eq|ne|len|json)\s)", template) is not None
