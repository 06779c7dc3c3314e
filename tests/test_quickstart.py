"""The quickstart: every stage runs offline on the built-in corpus and reports honestly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from yunque.cli.app import app
from yunque.text.shards import TokenShards
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer
from yunque.cli.quickstart import quickstart
from yunque.store.entries import get
from yunque.text.tokenizer import Tokenizer

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


def test_a_failed_training_keeps_the_previous_model(tmp_path, monkeypatch):
    import yunque.train.loop
    from yunque.cli.quickstart import QuickstartOptions, QuickstartReport, train_model

    report = QuickstartReport(run_dir=tmp_path)
    (report.model_dir).mkdir(parents=True)
    (report.model_dir / "model.safetensors").write_bytes(b"the previous model")

    def failing_train(cfg, progress=True):
        assert (report.model_dir / "model.safetensors").is_file()  # still there while the new one trains
        assert cfg.out != str(report.train_dir)
        raise YunqueError("training failed")

    monkeypatch.setattr(yunque.train.loop, "train", failing_train)
    with pytest.raises(YunqueError, match="training failed"):
        train_model(report, QuickstartOptions(progress=False))
    assert (report.model_dir / "model.safetensors").read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no temporary left behind


def test_the_next_steps_name_the_vocabulary_size_chosen(tmp_path):
    from rich.console import Console

    from yunque.cli.quickstart import QuickstartReport, render

    split = {"documents": 2, "tokens": 10, "bytes": 40}
    report = QuickstartReport(
        run_dir=tmp_path, vocab_size=1024, model_name="quickstart:latest",
        shards={"dtype": "uint16", "split_by": "document", "splits": {"train": split, "val": split}},
        train={"parameters": 1, "steps": 1, "tokens": 10, "val_loss": 1.0, "val_bpb": 1.0, "sample": "x"},
        seconds={name: 0.0 for name in ("corpus", "tokenizer", "shards", "train", "store")},
    )
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    assert "--vocab-size 1024" in text and "4096" not in text


@pytest.mark.slow
def test_quickstart_chat_fine_tunes_a_chat_model_and_compares_it(tmp_path):
    """--chat: questions from the documentation, SFT of the pretrained model, `quickstart-chat` in
    the store, and a before/after comparison on held-out questions (tiny budgets: the shape, not the figures)."""
    from yunque.store.entries import chat_settings
    from yunque.train.sft_data import read_examples

    torch.set_num_threads(1)
    run = tmp_path / "run"
    try:
        result = CliRunner().invoke(app, ["quickstart", "--out", str(run), "--vocab-size", "1024", "--train-seconds", "2",
                                          "--chat", "--finetune-seconds", "3"])
    finally:
        torch.set_num_threads(THREADS)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "quickstart.json").read_text())
    chat = report["chat"]
    examples = read_examples(run / "questions.jsonl")
    assert chat["questions"] == len(examples) > 3000 and chat["train"] + chat["held_out"] + chat["dropped"] == len(examples)
    assert chat["steps"] >= 1 and (run / "finetune" / "loss.png").is_file()
    for side in ("before", "after"):
        assert chat[side]["val_loss"] > 0 and 0 <= chat[side]["ended"] <= 1 and len(chat[side]["answers"]) == 3
    assert chat["after"]["val_loss"] < chat["before"]["val_loss"]
    assert report["chat_model_name"] == "quickstart-chat:latest" and "yunque run quickstart-chat:latest" in result.output
    assert "end-of-turn" in result.output and "fine-tuned:" in result.output and chat["questions_shown"][0][:20] in result.output
    entry = get("quickstart-chat")
    assert "<|end|>" in chat_settings(entry).stop
    assert Transformer.from_pretrained(entry.path).num_params() == report["train"]["parameters"]
