"""The `yunque` command line: a thin Typer layer, each command calling one library function."""

from __future__ import annotations

import sys
from pathlib import Path

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


def _read_stdin_if_dash(values: list[str]) -> list[str]:
    return sys.stdin.read().split() if values == ["-"] else values


@tokenizer_app.command("train")
def tokenizer_train(
    files: list[str] = typer.Argument(..., help="Text to learn from: .txt/.md/.jsonl files, directories of them, or 'python-docs'."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Total vocabulary size, including 256 bytes and 16 special tokens."),
    out: Path = typer.Option(..., "--out", help="Directory to write tokenizer.json and tokenizer_config.json into."),
    force: bool = typer.Option(False, "--force", help="Replace a different tokenizer already in --out."),
) -> None:
    """Train a byte-level BPE tokenizer (GPT-4 split pattern, chat special tokens) on your own text."""
    from yunque.tokenizer import train_tokenizer

    summary = train_tokenizer(files, vocab_size, out, force=force)
    tok = summary.tokenizer
    pieces = " | ".join(tok.token_bytes(i).decode("utf-8", errors="replace") for i in summary.sample_ids)
    console.print(f"[bold green]trained[/] {out}: vocab size {tok.vocab_size:,} in {summary.seconds:.1f} s, "
                  f"{summary.bytes_per_token:.2f} bytes/token, fingerprint {tok.fingerprint}", highlight=False, soft_wrap=True)
    console.print(f"sample: {summary.sample!r}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"tokens: {pieces}", highlight=False, markup=False, soft_wrap=True)


@tokenizer_app.command("encode")
def tokenizer_encode(
    directory: Path = typer.Argument(..., help="Tokenizer directory (yunque, Hugging Face or GPT-2 files)."),
    text: str = typer.Argument(..., help="Text to encode, or '-' to read standard input."),
    allow_special: bool = typer.Option(False, "--allow-special", help="Turn special-token text like <|endoftext|> into its id."),
) -> None:
    """Print the token ids of TEXT, separated by spaces."""
    from yunque.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(directory)
    if text == "-":
        text = sys.stdin.read()
    typer.echo(" ".join(map(str, tok.encode(text, allowed_special="all" if allow_special else ()))))


@tokenizer_app.command("decode")
def tokenizer_decode(
    directory: Path = typer.Argument(..., help="Tokenizer directory (yunque, Hugging Face or GPT-2 files)."),
    ids: list[str] = typer.Argument(..., help="Token ids, or '-' to read them from standard input."),
) -> None:
    """Print the text of token IDS."""
    from yunque.tokenizer import Tokenizer, parse_ids

    tok = Tokenizer.from_pretrained(directory)
    typer.echo(tok.decode(parse_ids(_read_stdin_if_dash(ids))))


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
