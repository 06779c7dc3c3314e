"""The `yunque` command line: a thin Typer layer, each command calling one library function.

The verbs live one module per group: tokens (tokenizer, data), training (train, quickstart),
inference (generate, inspect), models (the store: import, create, list, show, rm, export, cp)
and serving (serve, run, ps, stop). Each imports the library lazily, inside its command, so
`yunque --help` loads no torch.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from yunque.cli import inference, models, serving, tokens, training
from yunque.cli.output import err_console
from yunque.errors import YunqueError

app = typer.Typer(
    name="yunque",
    help="Forge a language model of your own: tokenizer, data, training, inference and local serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tokens.tokenizer_app, name="tokenizer")
app.add_typer(tokens.data_app, name="data")
for group in (training, inference, models, serving):
    app.add_typer(group.commands)


def main() -> None:
    """Entry point: user mistakes become one red sentence and exit code 1, never a traceback."""
    try:
        app()
    except YunqueError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
