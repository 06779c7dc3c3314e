"""The quickstart: every stage runs offline on the built-in corpus and reports honestly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from yunque.cli import app
from yunque.data import TokenShards
from yunque.errors import YunqueError
from yunque.model import Transformer
from yunque.quickstart import quickstart
from yunque.store import get
from yunque.tokenizer import Tokenizer

THREADS = torch.get_num_threads()


@pytest.mark.slow
def test_quickstart_builds_tokenizer_shards_and_a_model(tmp_path):
    torch.set_num_threads(1)  # steady on a shared 2-core machine; restored below
    run = tmp_path / "run"
    try:
        result = CliRunner().invoke(app, ["quickstart", "--out", str(run), "--vocab-size", "1024", "--train-seconds", "2"])
        again = quickstart(run, 1024, train_seconds=2, progress=False)
    finally:
        torch.set_num_threads(THREADS)
    assert result.exit_code == 0, result.output
    assert "bits per" in result.output and "yunque generate" in result.output and "a sample from the model" in result.output
    report = json.loads((run / "quickstart.json").read_text())
    tok = Tokenizer.from_pretrained(run / "tokenizer")
    shards = TokenShards(run / "data")
    assert report["vocab_size"] == tok.vocab_size == 1024
    assert report["tokenizer_fingerprint"] == tok.fingerprint == shards.meta["tokenizer"]["fingerprint"]
    assert report["corpus_bytes"] == shards.bytes("train") + shards.bytes("val") > 1_000_000
    assert set(report["seconds"]) == {"corpus", "tokenizer", "shards", "train", "store"}
    assert report["model_name"] == "quickstart:latest" and "yunque run quickstart:latest" in result.output
    assert report["train"]["steps"] >= 1 and 0 < report["train"]["val_bpb"] < 8 and report["train"]["sample"]
    model = Transformer.from_pretrained(run / "train" / "model")
    assert model.config.vocab_size == 1024 and model.num_params() == report["train"]["parameters"]
    assert Tokenizer.from_pretrained(run / "train" / "model").fingerprint == tok.fingerprint
    assert get("quickstart").digest and Transformer.from_pretrained(get("quickstart").path).num_params() == report["train"]["parameters"]
    # Running it again replaced the run's own outputs with identical tokenizer and shards (and a new model).
    assert again.tokenizer_fingerprint == tok.fingerprint and again.shards["splits"] == shards.meta["splits"]


def test_quickstart_refuses_a_directory_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(YunqueError, match="which a quickstart run does not make"):
        quickstart(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
