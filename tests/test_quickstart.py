"""The quickstart: every stage runs offline on the built-in corpus and reports honestly."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from yunque.cli import app
from yunque.data import TokenShards
from yunque.errors import YunqueError
from yunque.quickstart import quickstart
from yunque.tokenizer import Tokenizer


def test_quickstart_builds_tokenizer_and_shards(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(run), "--vocab-size", "1024"])
    assert result.exit_code == 0, result.output
    assert "Model training is not available in this version yet" in result.output
    report = json.loads((run / "quickstart.json").read_text())
    tok = Tokenizer.from_pretrained(run / "tokenizer")
    shards = TokenShards(run / "data")
    assert report["vocab_size"] == tok.vocab_size == 1024
    assert report["tokenizer_fingerprint"] == tok.fingerprint == shards.meta["tokenizer"]["fingerprint"]
    assert report["corpus_bytes"] == shards.bytes("train") + shards.bytes("val") > 1_000_000
    assert set(report["seconds"]) == {"corpus", "tokenizer", "shards"}
    # Running it again replaces the run's own outputs with identical ones.
    again = quickstart(run, 1024, progress=False)
    assert again.tokenizer_fingerprint == tok.fingerprint and again.shards["splits"] == shards.meta["splits"]


def test_quickstart_refuses_a_directory_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(YunqueError, match="which a quickstart run does not make"):
        quickstart(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
