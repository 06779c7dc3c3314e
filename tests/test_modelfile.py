"""Modelfile parsing (Ollama's format), errors that name the line, and the render/parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yunque.errors import YunqueError
from yunque.store.modelfile import Modelfile, check_parameters, parse_modelfile, render_modelfile

FULL = '''# a pirate on top of a base model
from ./base

parameter Temperature 0.7
PARAMETER top_k 40
PARAMETER stop "<|end|>"
PARAMETER stop <|user|>
PARAMETER num_predict -1
  SYSTEM """You are a pirate.
Answer in one line.
"""
TEMPLATE """{{ if .System }}<|system|>{{ .System }}<|end|>
{{ end }}<|user|>{{ .Prompt }}<|end|>
<|assistant|>{{ .Response }}"""
MESSAGE user Who are you?
MESSAGE Assistant """Arr, a pirate # not a comment"""
LICENSE MIT
LICENSE """second
license"""
'''


def test_parses_every_instruction() -> None:
    mf = parse_modelfile(FULL)
    assert mf.from_ == "./base"
    assert mf.parameters == {"temperature": 0.7, "top_k": 40, "stop": ["<|end|>", "<|user|>"], "num_predict": -1}
    assert isinstance(mf.parameters["top_k"], int) and isinstance(mf.parameters["temperature"], float)
    assert mf.system == "You are a pirate.\nAnswer in one line.\n"
    assert mf.template.startswith("{{ if .System }}") and mf.template.endswith("{{ .Response }}")
    assert mf.messages == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Arr, a pirate # not a comment"}]
    assert mf.license == ["MIT", "second\nlicense"]


def test_round_trip_of_a_full_modelfile() -> None:
    mf = parse_modelfile(FULL)
    text = render_modelfile(mf, header="generated")
    assert text.startswith("# generated\nFROM ./base\n")
    assert parse_modelfile(text) == mf


def test_template_backslashes_are_kept_verbatim() -> None:
    mf = parse_modelfile("FROM x\nTEMPLATE \"\"\"{{ '\\n' }}\\t\"\"\"\n")
    assert mf.template == "{{ '\\n' }}\\t"


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("FROM x\n\nPARAMETER temperature hot\n", 3, "bad value 'hot' for parameter temperature"),
        ("FROM x\nPARAMETER top_p 1.5\n", 2, "between 0.0 and 1.0"),
        ("FROM x\nPARAMETER top_k 2.5\n", 2, "top_k"),
        ("FROM x\nPARAMETER temperature nan\n", 2, "finite"),
        ("FROM x\nPARAMETER temperature 1e-300\n", 2, "0 \\(greedy\\) or at least 0.001"),
        ("FROM x\nPARAMETER repeat_penalty 1e-300\n", 2, "between 0.01 and 100"),
        ("FROM x\nPARAMETER mirostat 1\n", 2, "unknown parameter 'mirostat'"),
        ("FROM x\nPARAMETER temperature\n", 2, "needs a name and a value"),
        ("FROM x\n# ok\nFOO bar\n", 3, "unknown instruction 'FOO'"),
        ("FROM x\nMESSAGE tool hi\n", 2, "role must be one of"),
        ("FROM x\nSYSTEM \"\"\"never\nclosed\n", 2, "never closed"),
        ("FROM x\nFROM y\n", 2, "FROM appears twice"),
        ("FROM\n", 1, "FROM needs"),
        ('FROM x\nSYSTEM """a\nb""" trailing words\n', 2, "never closed"),
    ],
)
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(YunqueError, match=f"line {line}: .*{message}"):
        parse_modelfile(text)


def test_missing_from_is_an_error() -> None:
    with pytest.raises(YunqueError, match="no FROM line"):
        parse_modelfile("# only a comment\nSYSTEM hello\n")


def test_check_parameters_types_and_refuses_unknown() -> None:
    assert check_parameters({"TEMPERATURE": "0.5", "seed": 3, "stop": "x"}) == {"temperature": 0.5, "seed": 3, "stop": ["x"]}
    with pytest.raises(YunqueError, match="unknown parameter"):
        check_parameters({"nope": 1})
    with pytest.raises(YunqueError, match="num_ctx"):
        check_parameters({"num_ctx": 0})


def test_text_that_cannot_be_written_is_refused() -> None:
    with pytest.raises(YunqueError, match="SYSTEM"):
        render_modelfile(Modelfile(from_="x", system='ends a line with """\nthen more'))


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(system=_text, template=st.none() | _text, stops=st.lists(_text.filter(lambda s: s != ""), max_size=3), content=_text, temp=st.just(0.0) | st.floats(0.001, 5))
def test_round_trip_property(system: str, template: str | None, stops: list[str], content: str, temp: float) -> None:
    params = {"temperature": temp, **({"stop": stops} if stops else {})}
    mf = Modelfile(from_="base:latest", parameters=params, system=system, template=template, messages=[{"role": "user", "content": content}])
    try:
        text = render_modelfile(mf)
    except YunqueError:
        return  # a value holding `"""` at a line end has no Modelfile spelling; refusing it is the contract
    assert parse_modelfile(text) == mf
