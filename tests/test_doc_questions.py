"""Instruction examples from Python's own documentation: one question per documented name,
answered by the first paragraph of its docstring that says something."""

from yunque.text.corpus import python_doc_pages
from yunque.text.doc_questions import doc_entries, doc_questions, summary

PAGE = """module shapes

Drawing shapes.

More about shapes.

def area(shape, /)
    area(shape, /) -> float

    Return the area of a shape.

class Circle(radius)
    A round shape of the given radius.

    Circle.grow(self, factor=2)
        Make the circle larger by factor.
"""


def test_a_module_page_gives_its_module_functions_classes_and_methods():
    entries = doc_entries([("topic if", "The if statement."), ("module shapes", PAGE)])
    assert [(e.name, e.kind, e.signature) for e in entries] == [
        ("shapes", "module", ""), ("shapes.area", "def", "(shape, /)"), ("shapes.Circle", "class", "(radius)"),
        ("shapes.Circle.grow", "def", "(self, factor=2)"),
    ]
    assert [summary(e.doc) for e in entries] == [
        "Drawing shapes.", "Return the area of a shape.",  # the repeated signature is skipped
        "A round shape of the given radius.", "Make the circle larger by factor.",
    ]


def test_the_builtin_corpus_asks_about_the_standard_library():
    records = doc_questions(python_doc_pages())
    assert len(records) > 3000 and all(set(r) == {"instruction", "output"} for r in records)
    by_name = {r["instruction"].split("`")[1]: r for r in records}
    join = by_name["os.path.join"]  # posixpath, under the name people use
    assert join["output"].startswith("Join two or more pathname components") and join["output"].endswith("`os.path.join(a, *p)`.")
    assert "len" in by_name and "builtins.len" not in by_name
    assert "json" in by_name and "module" in by_name["json"]["instruction"]
    assert not any(r["output"].startswith("execl(") for r in records)
    assert doc_questions(python_doc_pages()) == records  # the same questions every time
