"""Collect the documentation every Python carries; run as a script in an isolated child.

`yunque.corpus.python_docs` runs this file with `python -I` in a subprocess, stdin
closed and output discarded, under a timeout, because importing hundreds of standard
library modules is the kind of thing that can print, open windows or block: none of
that may reach (or hang) the caller. The result goes to the JSON file named by argv[1]
as a list of [title, text] pairs in a fixed order:

1. every `pydoc_data.topics.topics` entry (the language reference pages that `help()`
   shows), sorted by topic name;
2. one page per importable standard-library module (packages walked recursively),
   sorted by module name: the module docstring, then each public class and function
   with its signature and docstring, and each public method of those classes.

Docstrings are used as written (no inheritance from base classes) and each distinct
docstring appears once, so re-exports and generated boilerplate do not repeat.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import signal
import sys
import textwrap
import warnings

# Modules that do something when imported (open a browser or a window, print, start
# IDLE) or that are test suites and tooling rather than documentation.
SKIP_TOP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
    "ensurepip", "venv", "lib2to3", "pydoc_data",
}
SKIP_PARTS = {"test", "tests", "idle_test"}
IMPORT_TIMEOUT_S = 10
# A per-import alarm where the platform has one (not Windows); the parent's timeout covers the rest.
_alarm = getattr(signal, "alarm", lambda seconds: 0)


def _timeout(signum, frame):  # noqa: ARG001 - signal handler signature
    raise TimeoutError


def _import(name: str):
    """Import `name` with output swallowed and a time limit; None if it fails."""
    _alarm(IMPORT_TIMEOUT_S)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - any failure (even SystemExit) just skips the module
        return None
    finally:
        _alarm(0)


def _module_names() -> list[str]:
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_TOP:
            continue
        module = _import(top)
        if module is None:
            continue
        names.append(top)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + ".", onerror=lambda _: None):
            parts = info.name.split(".")[1:]
            if any(p.startswith("_") or p in SKIP_PARTS for p in parts):
                continue
            if _import(info.name) is not None:
                names.append(info.name)
    return sorted(names)


def _own_doc(obj) -> str:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


class _Elided:
    def __repr__(self) -> str:
        return "..."


_ELIDED = _Elided()
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def _plain(value) -> bool:
    """A short literal default; anything else (os.environ, sentinels printed with their
    address) would put this machine's state, or run-to-run noise, into the corpus."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value) and len(repr(value)) <= 80
    if isinstance(value, str) and (sys.prefix in value or sys.base_prefix in value):
        return False  # where this Python is installed
    return isinstance(value, _SCALARS) and len(repr(value)) <= 80


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - builtins may carry signatures that cannot be evaluated
        return ""
    params = [
        p.replace(default=_ELIDED) if p.default is not p.empty and not _plain(p.default) else p
        for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params))


def _belongs(obj, module_name: str) -> bool:
    """Defined by this module or by a private implementation module (`_io` for `io`)."""
    owner = getattr(obj, "__module__", None) or ""
    return owner == module_name or owner.startswith("_")


def _module_page(name: str, seen: set[str]) -> str:
    module = sys.modules[name]

    def fresh(doc: str) -> bool:
        if not doc or doc in seen:
            return False
        seen.add(doc)
        return True

    parts = []
    doc = _own_doc(module)
    parts.append(f"module {name}\n\n{doc}" if fresh(doc) else f"module {name}")
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not _belongs(obj, name):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        kind = "class" if inspect.isclass(obj) else "def"
        doc = _own_doc(obj)
        if fresh(doc):
            parts.append(f"{kind} {attr}{_signature(obj)}\n{textwrap.indent(doc, '    ')}")
        if inspect.isclass(obj):
            for meth, member in sorted(vars(obj).items()):
                if meth.startswith("_"):
                    continue
                target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if not (inspect.isfunction(target) or inspect.ismethoddescriptor(target) or isinstance(member, property)):
                    continue
                doc = _own_doc(member)
                if fresh(doc):
                    parts.append(f"    {attr}.{meth}{_signature(target)}\n{textwrap.indent(doc, '        ')}")
    return "\n\n".join(parts) + "\n"


def collect() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    pages = [(f"topic {key}", topics[key]) for key in sorted(topics)]
    seen: set[str] = set()
    for name in _module_names():
        page = _module_page(name, seen)
        if "\n" in page.strip():  # more than a bare title
            pages.append((f"module {name}", page))
    return pages


def main() -> None:
    out_path = sys.argv[1]
    # Whatever a module writes to the real stdout (C code, child processes) is dropped;
    # stderr goes back to the parent, which shows its last line if collection fails.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _timeout)
    pages = collect()
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(pages, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
