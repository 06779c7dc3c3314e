"""yunque's local server: Ollama's `/api/*` and OpenAI's `/v1/*` routes and a web chat at `/ui`.

`create_app(manager, api_key)` builds the FastAPI application and `serve(host, port, ...)`
runs it; `yunque serve` is the command. See docs/architecture.md ("Server"). The names are
imported lazily, so the CLI's client verbs (`ps`, `stop`, `run` against a server) start
without loading PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from yunque.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'yunque.server' has no attribute {name!r}")
