"""The `yunque` command line: a thin Typer layer, each command calling one library function."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from yunque.errors import YunqueError

app = typer.Typer(
    name="yunque",
    help="Forge a language model of your own: tokenizer, data, training, inference and local serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tokenizer_app = typer.Typer(help="Train a byte-level BPE tokenizer, or encode and decode text with one.", no_args_is_help=True)
data_app = typer.Typer(help="Turn text corpora into token shards for training.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


@app.command()
def inspect(
    model_dir: str = typer.Argument(..., help="A Hugging Face model directory (config.json + *.safetensors)."),
    json_output: bool = typer.Option(False, "--json", help="Print the description as JSON instead of a table."),
) -> None:
    """Describe a model directory: family, parameters, FLOPs per token, context, vocabulary, dtype and size."""
    import json

    from rich.table import Table

    from yunque.hf import describe

    info = describe(model_dir)
    if json_output:
        console.print_json(json.dumps(info))
        return
    table = Table(title=info["path"], show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    params = f"{info['parameters']:,}"
    if info["experts"]:
        params += f" ({info['active_parameters']:,} active per token, experts {info['experts']})"
    rows = [
        ("family", f"{info['family']} ({info['architecture']})"),
        ("parameters", params),
        ("non-embedding", f"{info['non_embedding_parameters']:,}"),
        ("FLOPs per token", f"{info['flops_per_token'] / 1e6:,.1f} M (training, at full context)"),
        ("context", f"{info['context']:,} tokens" + (f", sliding window {info['sliding_window']:,}" if info["sliding_window"] else "")),
        ("vocabulary", f"{info['vocab_size']:,}" + (" (tied embeddings)" if info["tied_embeddings"] else "")),
        ("shape", f"{info['layers']} layers, d_model {info['d_model']}, {info['heads']} heads, {info['kv_heads']} kv heads"),
        ("dtype", str(info["dtype"])),
        ("on disk", f"{info['size_bytes'] / 2**20:,.1f} MiB in {len(info['files'])} file(s)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def main() -> None:
    """Entry point: user mistakes become one red sentence and exit code 1, never a traceback."""
    try:
        app()
    except YunqueError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
