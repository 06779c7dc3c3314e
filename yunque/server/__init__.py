"""yunque's local server: Ollama's `/api/*` and OpenAI's `/v1/*` routes and a web chat at `/ui`.

`create_app(manager, api_key)` builds the FastAPI application and `serve(host, port, ...)`
runs it; `yunque serve` is the command. See docs/architecture.md ("Server").
"""

from yunque.server.app import create_app, serve

__all__ = ["create_app", "serve"]
