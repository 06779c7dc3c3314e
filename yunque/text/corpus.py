"""Reading corpora: files and directories of text become a stream of clean documents.

A document is the unit that the data step separates with `<|endoftext|>`:
- a `.txt` or `.md` file is one document;
- each line of a `.jsonl` file is one document (its string field "text");
- the input name `python-docs` (when no such path exists) is the built-in corpus of
  `python_docs()`: the documentation every Python installation carries.

Every document is normalised the same way: a leading byte-order mark is dropped and
CRLF / lone CR line endings become LF. Documents that are empty or only whitespace are
skipped. With `strip_gutenberg`, Project Gutenberg's header and licence are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from yunque.errors import YunqueError

BUILTIN_CORPUS = "python-docs"
SUFFIXES = (".txt", ".md", ".jsonl")
_COLLECT_TIMEOUT_S = 300
log = logging.getLogger(__name__)

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK", re.I | re.M)


def normalise(text: str) -> str:
    """Drop a leading byte-order mark and turn CRLF and lone CR line endings into LF."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep only the book: drop everything up to and including the `*** START OF ... ***`
    line and everything from the `*** END OF ...` line on. Text without the markers is
    returned unchanged, so mixed directories can be stripped safely."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n" if (start or end) else text


def _decode(data: bytes, path: Path, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YunqueError(
            f"{path} is not UTF-8 text (first bad byte at offset {offset + e.start}); convert it to UTF-8 or leave it out."
        ) from None


def _expand(paths: Sequence[str | os.PathLike]) -> list[Path | str]:
    """Resolve inputs to an ordered list of files (and the built-in corpus name), checking all first."""
    if not paths:
        raise YunqueError("No input given; pass text files, directories, or 'python-docs' for the built-in corpus.")
    found: list[Path | str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            if str(raw) == BUILTIN_CORPUS:
                found.append(BUILTIN_CORPUS)
                continue
            raise YunqueError(f"Input {path} does not exist; check the path (or use 'python-docs' for the built-in corpus).")
        if path.is_dir():
            # Hidden entries (.git, editors' backups, yunque's own temporary directories) are not corpus.
            files = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                raise YunqueError(f"Directory {path} holds no .txt, .md or .jsonl files; point at a directory of text.")
            found.extend(files)
        elif path.suffix.lower() in SUFFIXES:
            found.append(path)
        else:
            raise YunqueError(f"Input {path} is not a .txt, .md or .jsonl file; convert it to plain UTF-8 text first.")
    return found


def _read_jsonl(path: Path) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, offset)
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise YunqueError(f"{path} line {lineno} is not valid JSON; each line must be an object with a \"text\" string.") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise YunqueError(f"{path} line {lineno} has no string field \"text\"; each line must be an object with a \"text\" string.")
            yield record["text"]


def _raw_documents(source: Path | str) -> Iterator[str]:
    if source == BUILTIN_CORPUS:
        yield from python_docs()
    elif source.suffix.lower() == ".jsonl":
        yield from _read_jsonl(source)
    else:
        yield _decode(source.read_bytes(), source)


def iter_documents(paths: Sequence[str | os.PathLike], strip_gutenberg: bool = False) -> Iterator[str]:
    """Yield the normalised documents of `paths` (files, directories, or 'python-docs') in order.

    Directories are walked recursively in sorted order, taking .txt, .md and .jsonl files
    and skipping others and hidden ones. All paths are checked before the first document is yielded.
    """
    sources = _expand(paths)
    count = 0
    for source in sources:
        for text in _raw_documents(source):
            text = normalise(text)
            if strip_gutenberg:
                text = strip_gutenberg_boilerplate(text)
            if text.strip():
                count += 1
                yield text
    if count == 0:
        names = ", ".join(str(p) for p in paths)
        raise YunqueError(f"No text found in {names}; the inputs are empty or hold only whitespace.")


@lru_cache(maxsize=1)
def _python_docs_pages() -> tuple[tuple[str, str], ...]:
    script = Path(__file__).with_name("_stdlib_docs.py")
    # A bare environment: no display to open windows on, nothing of the user's variables
    # to leak into the corpus, and a fixed hash seed so that nothing depends on the run.
    env = {"PATH": os.defpath, "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="yunque-pydocs-") as tmp:
        out = Path(tmp) / "pages.json"
        reason = "it did not finish in time"
        try:
            subprocess.run(
                [sys.executable, "-I", str(script), str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=tmp,
                env=env,
                timeout=_COLLECT_TIMEOUT_S,
                check=True,
            )
        except subprocess.TimeoutExpired:
            out.unlink(missing_ok=True)
        except subprocess.CalledProcessError as e:
            lines = e.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit code {e.returncode}"
            out.unlink(missing_ok=True)
        if not out.exists():
            raise YunqueError(
                f"Could not collect the built-in 'python-docs' corpus from this Python ({reason}); pass your own text files instead."
            )
        pages = json.loads(out.read_text(encoding="utf-8"))
    size = sum(len(text.encode("utf-8")) for _, text in pages)
    modules = sum(title.startswith("module ") for title, _ in pages)
    log.info("python-docs: %d pages (%d help topics, %d modules), %.2f MB", len(pages), len(pages) - modules, modules, size / 1e6)
    return tuple((title, text) for title, text in pages)


def python_doc_pages() -> list[tuple[str, str]]:
    """The built-in corpus as (title, text) pages: "topic NAME" and "module NAME" (see `python_docs`)."""
    return list(_python_docs_pages())


def python_docs() -> list[str]:
    """The built-in offline corpus: Python's own documentation, one document per page.

    It holds the `help()` topics of `pydoc_data` (the language reference) and, per
    importable standard-library module, its docstring plus those of its public classes,
    functions and methods (see `yunque/_stdlib_docs.py`). The modules are imported in an
    isolated child process with a timeout, so nothing they do reaches the caller. The
    order is fixed; the content depends only on the Python version (about 2.4 MB on 3.11).
    """
    return [text for _, text in _python_docs_pages()]
