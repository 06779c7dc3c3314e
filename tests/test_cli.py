"""The `yunque` entry point: how user mistakes are printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from yunque.cli.app import main


def test_error_text_in_square_brackets_is_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("sys.argv", ["yunque", "train", "--model", "n_layer=abc", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1
    assert "Invalid [model] table: n_layer must be an integer, got 'abc'." in err


def test_tokenizer_train_prints_no_progress_lines_when_piped(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("hello world, this is text\n" * 200)
    done = subprocess.run(
        [sys.executable, "-m", "yunque", "tokenizer", "train", str(text), "--vocab-size", "300", "--out", str(tmp_path / "tok")],
        capture_output=True, text=True, check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("trained ") and all(line.strip() for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "{file}"], "is a file, not a model directory"),
        (["tokenizer", "encode", "{file}", "hello"], "is a file, not a tokenizer directory"),
    ],
)
def test_a_file_given_for_a_directory_is_named_as_a_file(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "file.txt"
    file.write_text("just text\n")
    monkeypatch.setattr("sys.argv", ["yunque", *(a.format(file=file) for a in args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1 and f"{file} {message}" in err


def test_every_train_config_field_is_a_train_flag_that_reaches_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import typer.main

    import yunque.train.loop
    from yunque.cli.app import app
    from yunque.train.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    flags = {opt for p in command.params for opt in [*p.opts, *getattr(p, "secondary_opts", [])]}
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)} <= flags
    assert {"--config", "--resume", "--no-compile"} <= flags

    seen = {}

    def capture(cfg, resume=False):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(yunque.train.loop, "train", capture)
    monkeypatch.setattr("sys.argv", ["yunque", "train", "--out", str(tmp_path), "--beta2", "0.99", "--no-compile", "--schedule", "wsd",
                                     "--model", "n_layer=3", "--time-budget", "5"])
    with pytest.raises(SystemExit):
        main()
    cfg = seen["cfg"]
    assert (cfg.beta2, cfg.compile, cfg.schedule, cfg.model, cfg.time_budget, cfg.max_steps) == (0.99, False, "wsd", {"n_layer": 3}, 5.0, None)
    assert cfg.lr == TrainConfig().lr  # flags not given leave the defaults
