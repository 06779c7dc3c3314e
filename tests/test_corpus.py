"""Corpus reading: normalisation, formats, directories, Gutenberg stripping, bad input."""

from __future__ import annotations

import json

import pytest

from yunque.text.corpus import _python_docs_pages, iter_documents, normalise, python_docs, strip_gutenberg_boilerplate
from yunque.errors import YunqueError


def test_normalise_bom_and_line_endings(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffuno\r\ndos\rtres\n".encode())
    assert list(iter_documents([f])) == ["uno\ndos\ntres\n"]
    assert normalise("a\r\n\r\nb\r") == "a\n\nb\n"


def test_jsonl_one_document_per_line(tmp_path):
    f = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "first\r\ndoc", "id": 1}), "", json.dumps({"text": "second"})]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert list(iter_documents([f])) == ["first\ndoc", "second"]


def test_directories_recursive_sorted_and_filtered(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("zeta")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "c.jsonl").write_text('{"text": "gamma"}\n')
    (tmp_path / "image.png").write_bytes(b"\x89PNG\xff\xfe")  # skipped inside a directory
    (tmp_path / "empty.txt").write_text("  \n")  # whitespace-only documents are skipped
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.txt").write_text("hidden")  # hidden entries are skipped
    assert list(iter_documents([tmp_path])) == ["alpha", "zeta", "gamma"]


def test_gutenberg_stripping_on_quijote(shared_data):
    raw = list(iter_documents([shared_data / "quijote.txt"]))
    assert len(raw) == 1 and "\r" not in raw[0] and not raw[0].startswith("\ufeff")
    (book,) = iter_documents([shared_data / "quijote.txt"], strip_gutenberg=True)
    assert "PROJECT GUTENBERG" not in book.upper()
    assert book.startswith("El ingenioso hidalgo don Quijote de la Mancha")
    assert "En un lugar de la Mancha" in book
    # The book is almost all of the file: only the 673-char header and the licence go.
    assert 2_000_000 < len(book) < len(raw[0]) - 18_000


def test_gutenberg_stripping_leaves_other_text_alone():
    assert strip_gutenberg_boilerplate("just a text\n") == "just a text\n"
    text = "header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence"
    assert strip_gutenberg_boilerplate(text) == "body\n"


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("missing.txt", None, "does not exist"),
        ("x.pdf", b"%PDF", "is not a .txt, .md or .jsonl file"),
        ("e.txt", b"", "No text found"),
        ("e.txt", b" \r\n", "No text found"),
        ("bad.txt", b"ok\n\xe9t\xe9", "is not UTF-8 text (first bad byte at offset 3)"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', "is not UTF-8 text (first bad byte at offset 24)"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": 3}\n', "line 2 has no string field"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', "line 2 is not valid JSON"),
    ],
)
def test_bad_input_is_one_clear_sentence(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(YunqueError) as info:
        list(iter_documents([path]))
    message = str(info.value)
    assert fragment in message and name in message
    assert ". " not in message and message.endswith(".")


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(YunqueError, match="holds no .txt, .md or .jsonl files"):
        list(iter_documents([tmp_path]))


def test_paths_are_checked_before_any_document(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    docs = iter_documents([tmp_path / "a.txt", tmp_path / "missing.txt"])
    with pytest.raises(YunqueError, match="does not exist"):
        next(docs)


def test_python_docs_builtin_corpus(monkeypatch):
    docs = python_docs()
    # Collected again with a different environment and directory: the same text, and none
    # of the user's variables (cgi's signatures print os.environ as a default value).
    monkeypatch.setenv("YUNQUE_CANARY", "canary-8d1f")
    monkeypatch.chdir("/")
    _python_docs_pages.cache_clear()
    assert python_docs() == docs
    size = sum(len(d.encode()) for d in docs)
    assert len(docs) > 300 and size > 1_000_000
    joined = "\n".join(docs)
    assert "canary-8d1f" not in joined and " at 0x" not in joined
    assert "module json\n" in joined and "JSON (JavaScript Object Notation)" in joined
    assert "The \"if\" statement" in joined  # a pydoc_data topic
    assert list(iter_documents(["python-docs"])) == [d for d in docs if d.strip()]
