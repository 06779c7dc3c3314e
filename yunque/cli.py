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


@app.command()
def generate(
    model_dir: Path = typer.Argument(..., help="Model directory (config.json, model.safetensors, tokenizer.json)."),
    prompt: str = typer.Argument(..., help="Text to continue, or '-' to read it from standard input."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most new tokens to generate."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="Sampling temperature; 0 means greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: the smallest set of tokens with this much probability (1: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens less likely than min_p times the most likely one (0: off)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Penalise tokens already seen (1: off)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for reproducible sampling."),
    stop: list[str] = typer.Option([], "--stop", help="Stop before this text (repeatable; \\n and \\t mean newline and tab); it is not printed."),
    truncate: bool = typer.Option(False, "--truncate", help="Keep the end of a prompt longer than the context instead of failing."),
    int8: bool = typer.Option(False, "--int8", help="Quantize the weights to int8 (faster decoding on CPU)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print token counts and tokens per second to stderr."),
) -> None:
    """Continue PROMPT with a model, streaming the text as it is generated."""
    from yunque.engine import generate as generate_text
    from yunque.engine import load
    from yunque.sampling import SamplingParams

    params = SamplingParams(  # checked before the model is loaded: cheap mistakes fail fast
        max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed, truncate=truncate,
        stop=tuple(x.replace("\\n", "\n").replace("\\t", "\t") for x in stop),  # shells pass "\n" literally
    )
    text = sys.stdin.read() if prompt == "-" else prompt
    model, tokenizer = load(model_dir, int8=int8)
    stream = generate_text(model, tokenizer, text, params)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if verbose:
        r = stream.result
        err_console.print(
            f"{r.prompt_tokens} prompt tokens in {r.prompt_seconds:.2f} s, {r.generated_tokens} generated in "
            f"{r.generation_seconds:.2f} s ({r.tokens_per_second:.1f} tokens/s), finish reason: {r.finish_reason}"
            + (" (prompt truncated)" if r.prompt_truncated else ""),
            highlight=False,
        )


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
