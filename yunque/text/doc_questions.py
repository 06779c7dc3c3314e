"""Instruction examples made offline from Python's own documentation: "What does `os.path.join`
do?" answered by the first paragraph of its docstring.

The pages come from the built-in corpus (`yunque.text.corpus`): each module page lists its
docstring, then `def name(signature)` / `class name(signature)` entries and indented
`Class.method(signature)` entries, each followed by its docstring indented one level more.
One question is asked per documented name, worded by a seeded choice among a few phrasings,
so a model learns to answer questions rather than one sentence pattern. A docstring whose
first paragraph only repeats the signature (common in C modules) answers with its next one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

MIN_ANSWER, MAX_ANSWER = 24, 320  # characters: a sentence or two, which a small model can learn
ALIASES = {"posixpath": "os.path"}  # the names people use for what the docs list under another module
# An entry's first line: `def name(sig)` or `class name(sig)`, or `    Class.method(sig)` for a method.
_TOP = re.compile(r"^(?P<kind>def|class) (?P<name>[A-Za-z]\w*)(?P<sig>\(.*\))?$")
_METHOD = re.compile(r"^ {4}(?P<name>[A-Za-z]\w*\.[A-Za-z]\w*)(?P<sig>\(.*\))?$")
_SIGNATURE_LIKE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$|->")
_PHRASINGS = {
    "def": ("What does `{}` do?", "What is `{}` for?", "Explain `{}`.", "Tell me what `{}` does."),
    "class": ("What is `{}`?", "What is the `{}` class for?", "Explain the class `{}`."),
    "module": ("What is the `{}` module for?", "What does the `{}` module do?", "Explain the `{}` module."),
}


@dataclass(frozen=True)
class DocEntry:
    """One documented name: `os.path.join`, its kind (def, class, module), signature and docstring."""

    name: str
    kind: str
    signature: str
    doc: str


def _entries(module: str, page: str) -> Iterable[DocEntry]:
    """The documented names of one module page, in page order: the module, then its entries."""
    public = ALIASES.get(module, module)
    prefix = "" if module == "builtins" else public + "."  # `len`, not `builtins.len`
    name, kind, signature, depth = public, "module", "", 0
    doc: list[str] = []
    for line in page.split("\n")[2:]:
        m = _TOP.match(line) or _METHOD.match(line)
        if m:
            yield DocEntry(name, kind, signature, "\n".join(doc).strip())
            name, signature, doc = prefix + m["name"], m["sig"] or "", []
            kind, depth = ("class", 4) if m.re is _TOP and m["kind"] == "class" else ("def", 4 if m.re is _TOP else 8)
        else:
            doc.append(line[depth:])
    yield DocEntry(name, kind, signature, "\n".join(doc).strip())


def summary(doc: str) -> str:
    """The docstring's first paragraph that says something (not a repeated signature), on one line."""
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(paragraph.split())
        if text and not _SIGNATURE_LIKE.search(text.split(". ")[0]):
            return text
    return ""


def doc_entries(pages: Iterable[tuple[str, str]]) -> list[DocEntry]:
    """Every documented name of the corpus's module pages ([title, text] pairs as collected)."""
    return [e for title, page in pages if title.startswith("module ") for e in _entries(title.removeprefix("module "), page)]


def doc_questions(pages: Iterable[tuple[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Alpaca records ({"instruction", "output"}), one per documented name with a short summary."""
    records = []
    for entry in doc_entries(pages):
        answer = summary(entry.doc)
        if not MIN_ANSWER <= len(answer) <= MAX_ANSWER:
            continue
        if entry.signature:
            answer += f" {'Create one with' if entry.kind == 'class' else 'Call it as'} `{entry.name}{entry.signature}`."
        phrasing = random.Random(f"{seed}:{entry.name}").choice(_PHRASINGS[entry.kind])
        records.append({"instruction": phrasing.format(entry.name), "output": answer})
    return records
