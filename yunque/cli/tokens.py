"""`yunque tokenizer ...` and `yunque data prepare`: tokenizers, and text into token shards."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from yunque.cli.output import console


tokenizer_app = typer.Typer(help="Train a byte-level BPE tokenizer, or encode and decode text with one.", no_args_is_help=True)
data_app = typer.Typer(help="Turn text corpora into token shards for training.", no_args_is_help=True)


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
    from yunque.text.tokenizer import train_tokenizer

    # tokenizers' progress bar writes to stdout; show it only to a person watching a terminal
    summary = train_tokenizer(files, vocab_size, out, force=force, show_progress=sys.stderr.isatty())
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
    from yunque.text.tokenizer import Tokenizer

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
    from yunque.text.tokenizer import Tokenizer, parse_ids

    tok = Tokenizer.from_pretrained(directory)
    typer.echo(tok.decode(parse_ids(_read_stdin_if_dash(ids))))


@data_app.command("prepare")
def data_prepare(
    inputs: list[str] = typer.Argument(..., metavar="INPUTS...", help="Text files (.txt, .md, .jsonl with a \"text\" field), directories of them, or 'python-docs'."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory (from `yunque tokenizer train`)."),
    out: Path = typer.Option(..., "--out", help="Directory to write train.bin, val.bin and meta.json into."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the text held out for validation."),
    strip_gutenberg: bool = typer.Option(False, "--strip-gutenberg", help="Drop Project Gutenberg headers and licences."),
    force: bool = typer.Option(False, "--force", help="Replace shards already in --out."),
) -> None:
    """Encode text corpora into token shards (train.bin, val.bin, meta.json) for training."""
    from yunque.text.shards import prepare

    meta = prepare(inputs, tokenizer, out, val_fraction=val_fraction, strip_gutenberg=strip_gutenberg, force=force)
    for split, info in meta["splits"].items():
        console.print(
            f"{split:>5}: {info['documents']:,} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes "
            f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)"
        )
    console.print(f"[green]wrote[/] {out} ({meta['dtype']}, split by {meta['split_by']})")
