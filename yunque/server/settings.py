"""Where the server listens, who may call it, and how long models stay loaded.

`YUNQUE_HOST` is `host`, `host:port`, `:port` or a URL (`http://0.0.0.0:8080`), as
`OLLAMA_HOST` is; the default is 127.0.0.1:11434, Ollama's own address, so existing
clients find yunque without settings. A server bound to anything but loopback answers
only callers that send `Authorization: Bearer $YUNQUE_API_KEY`, and refuses to start
without a key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from urllib.parse import urlsplit

from yunque.errors import YunqueError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 300.0  # seconds: Ollama's 5m
DEFAULT_CONTEXT = 4096  # tokens of context for requests that set no num_ctx, as Ollama's default


def context_length(value: int | None) -> int:
    """The default context of requests: `--context-length`, else YUNQUE_CONTEXT_LENGTH (or
    OLLAMA_CONTEXT_LENGTH), else 4096; a request's num_ctx raises it up to the model's own."""
    text = value if value is not None else os.environ.get("YUNQUE_CONTEXT_LENGTH") or os.environ.get("OLLAMA_CONTEXT_LENGTH")
    if text is None:
        return DEFAULT_CONTEXT
    try:
        tokens = int(text)
    except ValueError:
        tokens = 0
    if tokens < 1:
        raise YunqueError(f"The context length {text!r} is not a positive number of tokens; pass e.g. --context-length 8192.")
    return tokens


def parse_host(value: str | None) -> tuple[str, int]:
    """(host, port) from a `YUNQUE_HOST`-style value; missing parts take the defaults."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise YunqueError(f"Cannot read the address {value!r}; use host, host:port or http://host:port, e.g. 0.0.0.0:8080.") from None
    return parts.hostname or DEFAULT_HOST, port or DEFAULT_PORT


def env_host() -> tuple[str, int]:
    """The address from `YUNQUE_HOST` (falling back to `OLLAMA_HOST`, then the default)."""
    return parse_host(os.environ.get("YUNQUE_HOST") or os.environ.get("OLLAMA_HOST"))


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses to reach a server bound to (host, port)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """A loopback address or name: 127.0.0.0/8, ::1, localhost and its subdomains."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key_for(host: str, api_key: str | None) -> None:
    """Refuse to expose the server beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise YunqueError(
            f"Binding to {host} exposes the server to other machines; set YUNQUE_API_KEY to a secret "
            "(clients send it as `Authorization: Bearer <key>`), or bind to 127.0.0.1."
        )


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)", re.IGNORECASE)


def parse_size(value: str) -> int:
    """Bytes from `1048576`, `32MB`, `512k` or `1GiB` (k/M/G/T are powers of 1000, Ki/Mi/Gi of 1024)."""
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise YunqueError(f"Cannot read the size {value!r}; write bytes with an optional unit, e.g. 32MB or 512KiB.")
    number, unit = float(match[1]), match[2].lower().rstrip("b")
    scale = 1 if not unit else (1024 if unit.endswith("i") else 1000) ** ("kmgt".index(unit[0]) + 1)
    return int(number * scale)


def default_kv_budget() -> int | None:
    """Half the memory available now on the device models load onto, or None where it cannot be read."""
    from yunque.model.device import available_memory, device_kind

    available = available_memory(device_kind())
    return available // 2 if available else None


def kv_budget(value: str | None) -> int | None:
    """Bytes of KV cache the server may hold: `--kv-budget` / YUNQUE_KV_BUDGET, else the default."""
    text = value or os.environ.get("YUNQUE_KV_BUDGET")
    return parse_size(text) if text else default_kv_budget()


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object, default: float = DEFAULT_KEEP_ALIVE) -> float:
    """Seconds to keep a model loaded after a request: Ollama's `keep_alive`.

    A number is seconds, a string is a Go duration (`"5m"`, `"1h30m"`, `"0"`); negative means
    forever (returned as `math.inf`), 0 means unload as soon as the request is done.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise YunqueError("keep_alive must be a number of seconds or a duration like '5m', not true/false.")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pieces = _DURATION.findall(text)
            if not pieces or "".join(n + u for n, u in pieces) != text:
                raise YunqueError(f"keep_alive {value!r} is not a duration; use seconds or e.g. '30s', '5m', '1h', or -1 to keep the model loaded.") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in pieces)
    else:
        raise YunqueError("keep_alive must be a number of seconds or a duration like '5m'.")
    if math.isnan(seconds):
        raise YunqueError("keep_alive must be a number of seconds or a duration like '5m'.")
    return math.inf if seconds < 0 else seconds
