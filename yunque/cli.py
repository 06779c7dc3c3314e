"""The `yunque` command line: a thin Typer layer, each command calling one library function."""

from __future__ import annotations

import dataclasses
import json
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
    from yunque.data import prepare

    meta = prepare(inputs, tokenizer, out, val_fraction=val_fraction, strip_gutenberg=strip_gutenberg, force=force)
    for split, info in meta["splits"].items():
        console.print(
            f"{split:>5}: {info['documents']:,} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes "
            f"({info['bytes'] / max(info['tokens'], 1):.2f} bytes/token)"
        )
    console.print(f"[green]wrote[/] {out} ({meta['dtype']}, split by {meta['split_by']})")


@app.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Run directory for everything the quickstart makes."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Tokenizer vocabulary size."),
) -> None:
    """Run the pipeline on the built-in corpus (Python's own documentation), offline."""
    from yunque.quickstart import quickstart, render

    with console.status("starting") as status:
        report = quickstart(out, vocab_size, progress=False, on_stage=lambda _, what: status.update(f"{what}..."))
    render(report, console)

# ---- Ollama-style model store verbs (library: yunque.store, yunque.modelfile, yunque.chat) ----


def _size(n: int) -> str:
    """Decimal units, as `ollama list` prints them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ago(iso: str) -> str:
    import datetime as dt

    seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


@app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="A Hugging Face model directory: config.json, *.safetensors and tokenizer files."),
    name: str = typer.Argument(..., help="Store name: model, model:tag or namespace/model:tag."),
) -> None:
    """Copy a Hugging Face model directory into the local model store under NAME."""
    from yunque.store import import_model

    entry = import_model(src, name)
    console.print(f"imported {entry.name} (id {entry.short_id}, {_size(entry.size)})", highlight=False)


@app.command()
def create(
    name: str = typer.Argument(..., help="Store name for the new model."),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="The Modelfile; FROM paths in it are relative to its folder."),
) -> None:
    """Create a model from a Modelfile (FROM a store model or a directory, plus PARAMETER, SYSTEM, TEMPLATE ...)."""
    from yunque.store import create as create_model

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise YunqueError(f"Cannot read the Modelfile {file} ({e.strerror if isinstance(e, OSError) else e}); pass its path with -f.") from None
    entry = create_model(name, text, base_dir=file.resolve().parent)
    console.print(f"created {entry.name} (id {entry.short_id})", highlight=False)


@app.command("list")
def list_cmd() -> None:
    """List the models in the local store (NAME, ID, SIZE, MODIFIED)."""
    from yunque.store import list_models

    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    rows += [(str(e.name), e.short_id, _size(e.size), _ago(e.modified)) for e in list_models()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("    ".join(c.ljust(w) for c, w in zip(r, widths)) + "    " + r[3])


@app.command()
def show(
    name: str = typer.Argument(..., help="A store name, or a model directory."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Print the model's Modelfile."),
    parameters: bool = typer.Option(False, "--parameters", help="Print the effective sampling parameters."),
    template: bool = typer.Option(False, "--template", help="Print the effective chat template."),
    system: bool = typer.Option(False, "--system", help="Print the system prompt."),
    license: bool = typer.Option(False, "--license", help="Print the license."),
) -> None:
    """Show a model's details, or one of its Modelfile, parameters, template, system prompt or license."""
    from yunque.chat import chat_settings
    from yunque.modelfile import render_modelfile
    from yunque.store import resolve

    if sum((modelfile, parameters, template, system, license)) > 1:
        raise YunqueError("Pass at most one of --modelfile, --parameters, --template, --system and --license.")
    entry = resolve(name)
    chat = chat_settings(entry)
    params = [(k, json.dumps(v) if isinstance(v, str) else str(v)) for k, v in chat.parameters.items()]
    params += [("stop", json.dumps(s)) for s in chat.stop]
    if modelfile:
        label = str(entry.name) if entry.name else str(entry.path)
        print(render_modelfile(dataclasses.replace(entry.settings, from_=label), header='Modelfile generated by "yunque show"'), end="")
    elif parameters:
        print("\n".join(f"{k:<20}{v}" for k, v in params))
    elif template:
        print(chat.template)
    elif system:
        print(chat.system or "")
    elif license:
        print("\n\n".join(entry.settings.license))
    else:
        details = entry.details
        info = [
            ("architecture", details.get("family")),
            ("parameters", details.get("parameter_size")),
            ("context length", details.get("context_length")),
            ("embedding length", details.get("embedding_length")),
            ("weights", details.get("quantization_level")),
            ("template", f"{chat.source} ({chat.kind})"),
        ]
        print("  Model")
        print("\n".join(f"    {k:<20}{v}" for k, v in info if v is not None))
        for title, lines in (("Parameters", [f"{k:<20}{v}" for k, v in params]), ("System", (chat.system or "").splitlines()), ("License", "\n\n".join(entry.settings.license).splitlines()[:3])):
            if lines:
                print(f"\n  {title}\n" + "\n".join(f"    {line}" for line in lines))


@app.command()
def rm(names: list[str] = typer.Argument(..., help="Store names to remove.")) -> None:
    """Remove models from the local store (models created FROM them keep working)."""
    from yunque.store import delete, get

    entries = [get(n) for n in names]  # every name is checked before anything is removed
    for entry in entries:
        delete(str(entry.name))
        console.print(f"deleted {entry.name}", highlight=False)


@app.command()
def cp(src: str = typer.Argument(..., help="Existing store name."), dst: str = typer.Argument(..., help="New store name.")) -> None:
    """Copy a model to a new name (shares the weight files, no extra space)."""
    from yunque.store import copy

    entry = copy(src, dst)
    console.print(f"copied {src} to {entry.name}", highlight=False)

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
