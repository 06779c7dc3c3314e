"""`yunque serve`, `run`, `ps` and `stop`: the local server, and talking to it."""

from __future__ import annotations

import os
import sys

import typer

from yunque.cli.output import console, err_console


commands = typer.Typer()


@commands.command("serve")
def serve_cmd(
    host: str = typer.Option(None, "--host", help="Address to bind; default from YUNQUE_HOST, else 127.0.0.1. Anything but loopback needs YUNQUE_API_KEY."),
    port: int = typer.Option(None, "--port", help="Port to listen on; default from YUNQUE_HOST, else 11434 (Ollama's)."),
    keep_alive: str = typer.Option("5m", "--keep-alive", help="How long a model stays loaded after its last request (e.g. 30s, 5m, 1h; -1 forever)."),
    max_loaded: int = typer.Option(3, "--max-loaded", min=1, help="Most models kept loaded at once; the least recently used idle one is unloaded first."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Requests one model decodes together (continuous batching)."),
    max_queue: int = typer.Option(256, "--max-queue", min=0, help="Requests waiting for a batch slot before the server answers 503."),
    context_length: int = typer.Option(None, "--context-length", help="Context of requests that set no num_ctx (default: YUNQUE_CONTEXT_LENGTH, else 4096, as Ollama); num_ctx raises it up to the model's."),
    kv_budget: str = typer.Option(None, "--kv-budget", help="KV cache memory all models may hold, e.g. 8GB (default: YUNQUE_KV_BUDGET, else half the memory available at start)."),
) -> None:
    """Serve the store's models over Ollama's /api and OpenAI's /v1 APIs, with a web chat at /ui."""
    from yunque.server.app import serve
    from yunque.server.settings import base_url, env_host, parse_keep_alive
    from yunque.server.settings import context_length as parse_context_length
    from yunque.server.settings import kv_budget as parse_kv_budget

    env_hostname, env_port = env_host()
    host, port = host or env_hostname, port or env_port
    seconds = parse_keep_alive(keep_alive)
    budget = parse_kv_budget(kv_budget)
    context = parse_context_length(context_length)

    def announce() -> None:
        memory = f", KV budget {budget / 2**30:.1f} GiB" if budget else ""
        err_console.print(f"yunque serving on {base_url(host, port)} (web chat at {base_url(host, port)}/ui){memory}", highlight=False)

    serve(
        host, port, api_key=os.environ.get("YUNQUE_API_KEY") or None, keep_alive=seconds, max_loaded=max_loaded,
        max_batch=max_batch, max_queue=max_queue, on_listening=announce, kv_budget=budget,
        default_context=context,
    )


@commands.command("run")
def run_cmd(
    name: str = typer.Argument(..., help="Model name in the store, e.g. mymodel or mymodel:latest."),
    prompt: str = typer.Argument(None, help="Answer this prompt and exit; without it, chat interactively."),
) -> None:
    """Chat with a model: through the running server if there is one, else loading it in this process."""
    from yunque.cli.repl import run_model

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    run_model(name, prompt, note=lambda text: err_console.print(f"[dim]{text}[/]", highlight=False))


@commands.command("ps")
def ps_cmd() -> None:
    """List the models the running server has loaded."""
    from rich.table import Table

    from yunque.cli.client import Client

    table = Table("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "KV BLOCKS", "UNTIL", box=None)
    for m in Client().ps():
        blocks = f"{m['kv_blocks_used']}/{m['kv_blocks_total']}" if "kv_blocks_used" in m else ""
        table.add_row(m["name"], m["digest"][:12], f"{m['size'] / 1e6:.1f} MB", "GPU" if m.get("size_vram") else "CPU",
                      str(m.get("context_length", "")), blocks, m["expires_at"][:19].replace("T", " "))
    console.print(table)


@commands.command("stop")
def stop_cmd(name: str = typer.Argument(..., help="Model to unload from the running server.")) -> None:
    """Unload a model from the running server (it finishes the requests it is serving first)."""
    from yunque.cli.client import Client

    Client().stop(name)
    console.print(f"stopped {name}", highlight=False)
