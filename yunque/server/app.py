"""The FastAPI application: Ollama routes, OpenAI routes, the web chat, auth and error mapping.

`create_app` builds it around a `ModelManager`; `serve` runs it under uvicorn. Routes are
thin: they parse a request, ask `prepare`/`store` for the work, and `answer` writes the reply.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from yunque.errors import YunqueError
from yunque.infer.budget import KVBudget
from yunque.server import ollama_api, openai_api
from yunque.server.errors import APIError, error_response, install_error_handlers
from yunque.server.guard import Guard, Policy, policy_from_env
from yunque.server.manager import ModelManager
from yunque.server.runner import load_runner
from yunque.server.settings import DEFAULT_KEEP_ALIVE, require_key_for

STATIC = Path(__file__).parent / "static"
# The web chat's page, script and style are public (they hold no data); what they call is not.
_PUBLIC_PREFIX = "/ui"


class JSONBodies:
    """Read every API request body as JSON, whatever Content-Type the client sent.

    Ollama does, and `curl -d '{...}'` (form-encoded by default) is how its docs call it.
    """

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"].startswith(("/api/", "/v1/")):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def create_app(manager: ModelManager | None = None, api_key: str | None = None, policy: Policy | None = None) -> FastAPI:
    """The server application. With `api_key`, every route but the web chat's static files needs
    `Authorization: Bearer <key>`; `policy` (default: a loopback server's) says which origins,
    hosts and body sizes are let in (yunque.server.guard)."""
    manager = manager or ModelManager(load_runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="yunque", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.manager = manager
    install_error_handlers(app)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next):  # type: ignore[no-untyped-def]
            path = request.url.path
            given = request.headers.get("authorization", "").encode()
            if not path.startswith(_PUBLIC_PREFIX) and not hmac.compare_digest(given, expected):
                return error_response(request, APIError(401, "missing or wrong API key; send `Authorization: Bearer <YUNQUE_API_KEY>`"))
            return await call_next(request)

    app.add_middleware(JSONBodies)
    app.include_router(ollama_api.router)
    app.include_router(openai_api.router)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse("/ui/")

    app.mount("/ui/", StaticFiles(directory=STATIC, html=True), name="ui")
    app.add_middleware(Guard, policy=policy or Policy())  # added last, so it runs first
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` and listening, or one YunqueError sentence saying why it cannot be."""
    # As uvicorn binds: IPv6 for an address with a colon, else IPv4 (a host name resolves to it).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # still refuses a port another socket listens on
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise YunqueError(f"port {port} on {host} is in use (another server, perhaps yunque serve, listens there); stop it or pass --port with a free port.") from None
        raise YunqueError(f"Cannot listen on {host}:{port} ({e.strerror}); pass another --host or --port.") from None
    return sock


def serve(
    host: str,
    port: int,
    api_key: str | None = None,
    keep_alive: float = DEFAULT_KEEP_ALIVE,
    max_loaded: int = 3,
    max_batch: int = 32,
    max_queue: int = 256,
    on_listening: Callable[[], None] | None = None,
    kv_budget: int | None = None,
    default_context: int | None = None,
) -> None:
    """Run the server until interrupted; refuses a non-loopback address without an API key.

    Each loaded model decodes up to `max_batch` requests together and queues `max_queue` more;
    beyond that, requests get a 503. All models share `kv_budget` bytes of KV cache (None: no
    limit): a request starts when the positions it may fill fit, and waits otherwise. Requests
    that set no num_ctx get `default_context` tokens of context (None: the model's). The port is bound before anything else (a busy one is a
    YunqueError), then `on_listening` is called and uvicorn serves on that very socket.
    """
    import uvicorn

    require_key_for(host, api_key)
    policy = policy_from_env(host)  # a bad YUNQUE_MAX_BODY fails before the port is taken
    sock = listen(host, port)
    try:
        logging.basicConfig(level=os.environ.get("YUNQUE_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        budget = KVBudget(kv_budget) if kv_budget else None
        loader = functools.partial(load_runner, max_batch=max_batch, max_queue=max_queue, kv_budget=budget, default_context=default_context)
        manager = ModelManager(loader, default_keep_alive=keep_alive, max_loaded=max_loaded)
        app = create_app(manager, api_key, policy)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        if on_listening:
            on_listening()
        server.run(sockets=[sock])
    finally:
        sock.close()
