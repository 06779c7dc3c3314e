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
