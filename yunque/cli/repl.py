"""`yunque run`: one answer to a prompt, or an interactive chat, Ollama style.

The chat runs against a server when one answers at `YUNQUE_HOST` (the model then stays
warm for the next `run`, and `yunque ps` shows it); otherwise the model is loaded in this
process, with the same templates, options and scheduler the server uses.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Protocol, TextIO

from yunque.infer.options import check_parameter
from yunque.cli.client import Client

HELP = """Available commands:
  /set system <text>             set the system message
  /set parameter <name> <value>  set a sampling option (temperature, top_k, top_p, num_predict, seed, stop, ...)
  /clear                         forget the conversation so far (keeps the system message)
  /bye                           exit
  /?, /help                      this help
End a line with \\ to continue the message on the next line. Ctrl-C stops an answer; Ctrl-D exits."""


class Backend(Protocol):
    def chat(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[str]: ...

    def close(self) -> None: ...


class RemoteBackend:
    """Chat through a running server's /api/chat."""

    def __init__(self, client: Client, name: str) -> None:
        self.client, self.name = client, name

    def chat(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[str]:
        return self.client.chat(self.name, messages, options)

    def close(self) -> None:
        pass


class LocalBackend:
    """Load the model in this process and chat through its own scheduler."""

    def __init__(self, name: str) -> None:
        from yunque.server.manager import lookup
        from yunque.server.runner import load_runner
        from yunque.server.settings import context_length

        self.entry = lookup(name)
        self.runner = load_runner(self.entry, max_batch=1, max_queue=1, default_context=context_length(None))  # as the server would

    def chat(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[str]:
        from yunque.server import answer, prepare

        settings = prepare.settings_for(self.entry)
        ids = prepare.encode(self.runner, settings.render(messages))
        params = prepare.ollama_params(self.runner, settings, prepare.check_options(options), len(ids))
        return answer.stream_sync(self.runner, prepare.Prepared(ids, params))

    def close(self) -> None:
        self.runner.scheduler.shutdown()


def connect(name: str, client: Client | None = None, note: Callable[[str], None] = lambda s: None) -> Backend:
    """A backend for `name`: the running server if there is one, else the model loaded here."""
    client = client or Client()
    if client.is_running():
        return RemoteBackend(client, name)
    note(f"no server at {client.url}; loading {name} in this process")
    return LocalBackend(name)


def _answer(backend: Backend, messages: list[dict[str, str]], options: dict[str, Any], out: TextIO) -> str:
    pieces = []
    stream = backend.chat(messages, options)
    try:
        for piece in stream:
            pieces.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()
    out.write("\n")
    return "".join(pieces)


def _command(line: str, state: dict[str, Any], out: TextIO) -> bool:
    """Handle a /command; False means leave the chat."""
    words = line.split(maxsplit=2)
    cmd = words[0].lower()
    if cmd in ("/bye", "/exit"):
        return False
    if cmd in ("/?", "/help"):
        out.write(HELP + "\n")
    elif cmd == "/clear":
        state["messages"].clear()
        out.write("Cleared the conversation.\n")
    elif cmd == "/set" and len(words) >= 2 and words[1] == "system":
        state["system"] = line.split(maxsplit=2)[2] if len(words) == 3 else ""
        out.write("Set the system message.\n")
    elif cmd == "/set" and len(words) == 3 and words[1] == "parameter":
        name, _, value = words[2].partition(" ")
        try:
            checked = check_parameter(name, value.strip())
        except ValueError as e:
            out.write(f"Could not set it: {e}.\n")
            return True
        state["options"][name.lower()] = checked
        out.write(f"Set parameter '{name.lower()}' to '{value.strip()}'.\n")
    else:
        out.write(f"Unknown command '{line.strip()}'. Type /? for help.\n")
    return True


def chat_loop(backend: Backend, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """The interactive chat: history, streaming answers and Ollama's slash commands."""
    state: dict[str, Any] = {"messages": [], "system": None, "options": {}}
    while True:
        try:
            line = read(">>> ")
            while line.endswith("\\"):
                line = line[:-1] + "\n" + read("... ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\nUse Ctrl-D or /bye to exit.\n")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(line, state, out):
                return
            continue
        state["messages"].append({"role": "user", "content": line})
        system = [{"role": "system", "content": state["system"]}] if state["system"] else []
        reply = _answer(backend, system + state["messages"], state["options"], out)
        state["messages"].append({"role": "assistant", "content": reply})


def run_model(name: str, prompt: str | None = None, out: TextIO = sys.stdout, note: Callable[[str], None] = lambda s: None) -> None:
    """Answer `prompt` once, or chat interactively when there is no prompt."""
    backend = connect(name, note=note)
    try:
        if prompt is not None:
            _answer(backend, [{"role": "user", "content": prompt}], {}, out)
        else:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            chat_loop(backend, out=out)
    finally:
        backend.close()
