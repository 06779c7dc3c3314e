"""Files: atomic writes (a reader sees the old content or the new, never half of one), and
reading a JSON object with a one-sentence error.

Everything yunque writes that a later step trusts (tokenizers, shards, checkpoints,
the model store) goes through these helpers: write into a temporary sibling, fsync,
then rename over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from yunque.errors import YunqueError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_text_files(directory: str | os.PathLike, files: dict[str, str]) -> Path:
    """Write text files into `directory`: each atomically into an existing directory, or the
    whole new directory at once. Returns the directory."""
    directory = Path(directory)
    if directory.exists():
        for name, text in files.items():
            write_text_atomic(directory / name, text)
    else:
        with atomic_dir(directory) as tmp:
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
    return directory


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it becomes `path`.

    With `overwrite`, an existing `path` is replaced (the old one is removed only
    after the new one is complete). Without it, an existing non-empty `path` is an error
    the caller should have reported before doing any work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            if not overwrite and any(path.iterdir()):
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`, or a one-sentence YunqueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise YunqueError(f"{path} is missing; the model directory is incomplete.") from None
    except OSError as e:
        raise YunqueError(f"{path} cannot be read ({e.strerror or e}); check that it is a readable file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise YunqueError(f"{path} is not valid JSON ({e}); fix or replace the file.") from None
    if not isinstance(data, dict):
        raise YunqueError(f"{path} must hold a JSON object; fix or replace the file.")
    return data
