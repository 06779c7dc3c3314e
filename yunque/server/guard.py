"""Who may reach the server: the checks that keep the web pages a user has open out of it.

A server on 127.0.0.1 is reachable by every page the user's browser shows. Browsers send
`Origin` on every cross-site POST, whatever its content type, so a request whose Origin is
not on the allow-list gets 403 before any route runs (Ollama's answer to the same CVEs).
The list holds loopback origins (any scheme http/https, any port), the request's own origin
on a non-loopback bind (the web chat served from there) and `YUNQUE_ORIGINS` patterns.
curl and the SDKs send no Origin and are unaffected. On a loopback bind a `Host` that is
not a loopback name gets 403 too: that is how a DNS-rebinding page shows itself. Bodies are
limited to `YUNQUE_MAX_BODY` bytes (413). CORS preflights from allowed origins are answered.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yunque.server.errors import APIError, error_response
from yunque.server.settings import is_loopback, parse_size

DEFAULT_MAX_BODY = 32 * 1000**2  # 32MB, as the docs state it
_ALLOWED_METHODS = "GET, POST, DELETE, HEAD, OPTIONS"


def _hostname(authority: str) -> str:
    """The host name of a `Host` header value or an origin's authority, without port or brackets."""
    return (urlsplit("//" + authority).hostname or "").lower()


@dataclass(frozen=True)
class Policy:
    """The allow-lists and the body limit of one server."""

    loopback_bind: bool = True
    origins: tuple[str, ...] = ()  # extra origin patterns (fnmatch), from YUNQUE_ORIGINS
    hosts: tuple[str, ...] = ()  # extra Host names, from YUNQUE_HOSTS (on a public bind: the only ones)
    max_body: int = DEFAULT_MAX_BODY

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return True  # HTTP/1.0 without Host: nothing to rebind
        name = _hostname(host)
        if is_loopback(name) or name in self.hosts:
            return True
        return not self.loopback_bind and not self.hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and is_loopback(parts.hostname or ""):
            return True
        if not self.loopback_bind and host and parts.netloc.lower() == host.lower():
            return True  # same origin: the web chat served from this public address
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.origins)


def policy_from_env(bind_host: str, env: dict[str, str] | None = None) -> Policy:
    """The policy for a server bound to `bind_host`, extended by YUNQUE_ORIGINS / YUNQUE_HOSTS
    (comma-separated) and limited by YUNQUE_MAX_BODY."""
    env = os.environ if env is None else env

    def listed(name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())

    max_body = parse_size(env["YUNQUE_MAX_BODY"]) if env.get("YUNQUE_MAX_BODY") else DEFAULT_MAX_BODY
    return Policy(is_loopback(bind_host), listed("YUNQUE_ORIGINS"), tuple(h.lower() for h in listed("YUNQUE_HOSTS")), max_body)


class Guard:
    """ASGI middleware enforcing a `Policy` before anything else runs (it is the outermost layer)."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host, origin = request.headers.get("host"), request.headers.get("origin")
        if not self.policy.host_allowed(host):
            await self._refuse(request, send, 403, f"the Host {host!r} is not this server's; use http://127.0.0.1 or add the name to YUNQUE_HOSTS")
            return
        if origin is not None and not self.policy.origin_allowed(origin, host):
            await self._refuse(request, send, 403, f"requests from the web page at {origin} are not allowed; add it to YUNQUE_ORIGINS to allow them")
            return
        if request.method == "OPTIONS" and origin is not None and "access-control-request-method" in request.headers:
            await self._preflight(request, send, origin)
            return
        declared = request.headers.get("content-length", "")
        body = None if declared.isdigit() and int(declared) > self.policy.max_body else await self._read_body(receive)
        if body is None:
            await self._refuse(request, send, 413, f"the request body is larger than {self.policy.max_body:,} bytes (YUNQUE_MAX_BODY)")
            return
        await self.app(scope, _replay(body, receive), _with_cors(send, origin))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body, or None once it passes the limit (routes read it all anyway)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.policy.max_body:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _preflight(self, request: Request, send: Send, origin: str) -> None:
        headers = {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": _ALLOWED_METHODS,
            "access-control-allow-headers": request.headers.get("access-control-request-headers", ""),
            "access-control-max-age": "600",
            "vary": "Origin",
        }
        await send({"type": "http.response.start", "status": 204, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _refuse(request: Request, send: Send, status: int, message: str) -> None:
        response = error_response(request, APIError(status, message))
        await response(request.scope, _no_receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the connection's own messages
    (so a disconnect still reaches the routes that watch for one)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _with_cors(send: Send, origin: str | None) -> Send:
    """Tell the browser an allowed cross-origin page may read the answer."""
    if origin is None:
        return send

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = [*message.get("headers", []), (b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
