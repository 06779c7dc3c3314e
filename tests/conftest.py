"""Shared fixtures. `shared_data` points at ../shared/data; tests that need it skip with a
reason when it is absent, and fail instead when YUNQUE_REQUIRE_SHARED_DATA=1 (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("YUNQUE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory (tinyshakespeare, quijote, GPT-2 BPE files, ...)."""
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        reason = f"shared data not found at {SHARED_DATA} (clone the project with ../shared beside it)"
        if os.environ.get("YUNQUE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + "; YUNQUE_REQUIRE_SHARED_DATA=1 makes this a failure")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own model store so nothing touches ~/.yunque."""
    monkeypatch.setenv("YUNQUE_HOME", str(tmp_path_factory.mktemp("yunque_home")))
