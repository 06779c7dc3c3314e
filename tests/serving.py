"""Helpers for tests (and benchmarks/serve.py) that need a live `yunque serve` and a model to serve.

`make_tiny_model` writes a random-initialised yunque Transformer and a tokenizer trained on a
few KB of text into a directory (seconds on a CPU); `LiveServer` runs `yunque serve` as a
subprocess on a free loopback port with its own store, and stops it afterwards.
"""

from __future__ import annotations

import codecs
import inspect
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def training_text() -> str:
    """A few KB of English that every Python carries: the Zen of Python and the standard library's docstrings."""
    import this  # noqa: F401  (importing prints the Zen; its text is kept rot13-encoded in `this.s`)
    import json
    import pathlib

    zen = codecs.decode(sys.modules["this"].s, "rot13")
    docs = [inspect.getdoc(obj) or "" for mod in (json, pathlib, inspect) for _, obj in inspect.getmembers(mod) if callable(obj)]
    return (zen + "\n\n" + "\n\n".join(docs))[:40_000]


def make_tiny_model(directory: Path, *, d_model: int = 64, n_layer: int = 2, max_seq_len: int = 256, vocab_size: int = 512, seed: int = 0) -> Path:
    """A tiny random model with a trained tokenizer, in HF layout, ready for `yunque import`."""
    import contextlib
    import io

    import torch

    from yunque.model.config import preset
    from yunque.model.transformer import Transformer
    from yunque.text.tokenizer import Tokenizer

    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints
        text = training_text()
    tokenizer = Tokenizer.train_from_iterator([text], vocab_size, show_progress=False)
    torch.manual_seed(seed)
    config = preset("cpu-tiny", vocab_size=tokenizer.vocab_size, d_model=d_model, n_layer=n_layer, n_head=4, n_kv_head=2, d_ff=2 * d_model, max_seq_len=max_seq_len)
    Transformer(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class LiveServer:
    """`yunque serve` in a subprocess on a free port; `url` is its OLLAMA_HOST-style base URL."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.env = {**os.environ, "YUNQUE_HOME": str(home), "YUNQUE_HOST": f"127.0.0.1:{self.port}", **(env or {})}
        self.args = args
        self.log = log or home / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "LiveServer":
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "yunque.cli", "serve", *self.args], env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"yunque serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):
                    return self
            except urllib.error.HTTPError:  # an answer (401 from a key-protected server) means it is up
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"yunque serve did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log_file.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_tiny(tmp_path_factory, name: str = "tiny", max_seq_len: int = 2048, env: dict[str, str] | None = None) -> LiveServer:
    """A started `LiveServer` whose fresh store holds a tiny model called `name`."""
    from yunque.store import entries as store

    home = tmp_path_factory.mktemp("serve_home")
    src = make_tiny_model(tmp_path_factory.mktemp("tiny") / name, max_seq_len=max_seq_len)
    old = os.environ.get("YUNQUE_HOME")
    os.environ["YUNQUE_HOME"] = str(home)  # the store reads its root from the environment
    try:
        store.import_model(src, name)
    finally:
        if old is None:
            del os.environ["YUNQUE_HOME"]
        else:
            os.environ["YUNQUE_HOME"] = old
    return LiveServer(home, env=env).start()
