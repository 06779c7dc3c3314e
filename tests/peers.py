"""Peer libraries that interop tests compare against (transformers, peft, ...).

`require("peft")` imports one; where it is missing the test module skips with the reason,
unless YUNQUE_REQUIRE_PEERS=1 (as in CI, where `make test` installed them), which makes the
missing peer a failure instead of a silent skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(name: str) -> ModuleType:
    if os.environ.get("YUNQUE_REQUIRE_PEERS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"the peer library {name} is not installed (pip install -e '.[dev]'); YUNQUE_REQUIRE_PEERS=1 makes this a failure")
