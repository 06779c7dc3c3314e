import os
import stat

import pytest

from yunque.fsutil import atomic_dir, atomic_file


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_file(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"


def test_atomic_dir_leaves_nothing_on_failure_and_respects_umask(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "x").write_text("1")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    old = os.umask(0o022)
    try:
        with atomic_dir(out) as d:
            with atomic_file(d / "f", "w") as f:
                f.write("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "f").stat().st_mode) == 0o644


def test_atomic_dir_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(out) as d:
            (d / "new").write_text("2")
    with atomic_dir(out, overwrite=True) as d:
        (d / "new").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
