"""A small client for a running yunque (or Ollama) server, for the CLI verbs `run`, `ps` and `stop`.

Standard library only (`urllib`), so the CLI needs nothing beyond yunque's own dependencies.
Errors become `YunqueError`s: a server that is not running, or the server's own message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Iterator

from yunque.errors import YunqueError
from yunque.server.settings import base_url, env_host


class Client:
    """Talks to the server at `url` (default: `YUNQUE_HOST`), sending `YUNQUE_API_KEY` when set."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = (url or base_url(*env_host())).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("YUNQUE_API_KEY")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            if isinstance(message, dict):
                message = message.get("message", e.reason)
            raise YunqueError(f"The server at {self.url} answered {e.code}: {message}.") from None
        except (urllib.error.URLError, OSError) as e:
            raise YunqueError(f"No yunque server answers at {self.url} ({getattr(e, 'reason', e)}); start one with `yunque serve`.") from None

    def is_running(self) -> bool:
        """Whether a server answers at `url` (quickly: used to choose between it and loading in-process)."""
        try:
            with self._request("GET", "/api/version", timeout=1.0):
                return True
        except YunqueError:
            return False

    def ps(self) -> list[dict[str, Any]]:
        with self._request("GET", "/api/ps") as r:
            return json.loads(r.read())["models"]

    def stop(self, name: str) -> None:
        """Unload `name` (Ollama's way: a generate request without a prompt and keep_alive 0)."""
        with self._request("POST", "/api/generate", {"model": name, "keep_alive": 0}) as r:
            r.read()

    def chat(self, model: str, messages: list[dict[str, str]], options: dict[str, Any] | None = None) -> Iterator[str]:
        """Stream the assistant's answer to `messages`, piece by piece."""
        body = {"model": model, "messages": messages, "stream": True, "options": options or {}}
        with self._request("POST", "/api/chat", body) as r:
            for line in r:
                if not line.strip():
                    continue
                event = json.loads(line)
                if "error" in event:
                    raise YunqueError(f"The server stopped generating: {event['error']}.")
                piece = event.get("message", {}).get("content", "")
                if piece:
                    yield piece
