"""The `yunque` entry point: how user mistakes are printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from yunque.cli import main


def test_error_text_in_square_brackets_is_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("sys.argv", ["yunque", "train", "--model", "n_layer=abc", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1
    assert "Invalid [model] table: n_layer must be an integer, got 'abc'." in err
