"""The `yunque` command line: a thin Typer layer, each command calling one library function."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from yunque.cli import quickstart as quickstart_defaults  # torch-free at import: only its defaults are read here
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


@app.command("serve")
def serve_cmd(
    host: str = typer.Option(None, "--host", help="Address to bind; default from YUNQUE_HOST, else 127.0.0.1. Anything but loopback needs YUNQUE_API_KEY."),
    port: int = typer.Option(None, "--port", help="Port to listen on; default from YUNQUE_HOST, else 11434 (Ollama's)."),
    keep_alive: str = typer.Option("5m", "--keep-alive", help="How long a model stays loaded after its last request (e.g. 30s, 5m, 1h; -1 forever)."),
    max_loaded: int = typer.Option(3, "--max-loaded", min=1, help="Most models kept loaded at once; the least recently used idle one is unloaded first."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Requests one model decodes together (continuous batching)."),
    max_queue: int = typer.Option(256, "--max-queue", min=0, help="Requests waiting for a batch slot before the server answers 503."),
) -> None:
    """Serve the store's models over Ollama's /api and OpenAI's /v1 APIs, with a web chat at /ui."""
    from yunque.server.app import serve
    from yunque.server.settings import base_url, env_host, parse_keep_alive

    env_hostname, env_port = env_host()
    host, port = host or env_hostname, port or env_port
    seconds = parse_keep_alive(keep_alive)

    def announce() -> None:
        err_console.print(f"yunque serving on {base_url(host, port)} (web chat at {base_url(host, port)}/ui)", highlight=False)

    serve(
        host, port, api_key=os.environ.get("YUNQUE_API_KEY") or None, keep_alive=seconds, max_loaded=max_loaded,
        max_batch=max_batch, max_queue=max_queue, on_listening=announce,
    )


@app.command("run")
def run_cmd(
    name: str = typer.Argument(..., help="Model name in the store, e.g. mymodel or mymodel:latest."),
    prompt: str = typer.Argument(None, help="Answer this prompt and exit; without it, chat interactively."),
) -> None:
    """Chat with a model: through the running server if there is one, else loading it in this process."""
    from yunque.cli.repl import run_model

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    run_model(name, prompt, note=lambda text: err_console.print(f"[dim]{text}[/]", highlight=False))


@app.command("ps")
def ps_cmd() -> None:
    """List the models the running server has loaded."""
    from rich.table import Table

    from yunque.cli.client import Client

    table = Table("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", box=None)
    for m in Client().ps():
        table.add_row(m["name"], m["digest"][:12], f"{m['size'] / 1e6:.1f} MB", "GPU" if m.get("size_vram") else "CPU", str(m.get("context_length", "")), m["expires_at"][:19].replace("T", " "))
    console.print(table)


@app.command("stop")
def stop_cmd(name: str = typer.Argument(..., help="Model to unload from the running server.")) -> None:
    """Unload a model from the running server (it finishes the requests it is serving first)."""
    from yunque.cli.client import Client

    Client().stop(name)
    console.print(f"stopped {name}", highlight=False)


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


@app.command("train")
def train_command(
    data: Optional[Path] = typer.Option(None, "--data", help="Token shard directory made by `yunque data prepare`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory: metrics.jsonl, checkpoints/, model/, loss.png."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of training settings (model overrides in its `model` table); flags override it."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset, e.g. cpu-tiny, cpu-small, llama-tiny, gpt2."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps to train for."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Seconds of training, then evaluate and save (the schedule decays to fit)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per process per micro-step."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-steps per optimizer step (global batch = batch × accum × processes)."),
    context: Optional[int] = typer.Option(None, "--context", help="Tokens per training sequence."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine, wsd (warmup-stable-decay) or constant."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warmup steps (default: 100, or a tenth of a shorter run)."),
    decay_steps: Optional[int] = typer.Option(None, "--decay-steps", help="Schedule length in steps (default: --max-steps)."),
    min_lr_ratio: Optional[float] = typer.Option(None, "--min-lr-ratio", help="The schedule ends at lr × this (0 decays to zero)."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this (0: no clipping)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay of matrices and embeddings."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (0: only at the end)."),
    eval_seconds: Optional[float] = typer.Option(None, "--eval-seconds", help="Also evaluate after every N seconds of training (0: off)."),
    eval_tokens: Optional[int] = typer.Option(None, "--eval-tokens", help="Cap on validation tokens per evaluation (default: the whole split)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps (0: only at the end)."),
    keep_last: Optional[int] = typer.Option(None, "--keep-last", help="Checkpoints to keep."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Append train metrics every N steps."),
    sample_tokens: Optional[int] = typer.Option(None, "--sample-tokens", help="Tokens of sample text at each evaluation (0: none)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest complete checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for initialisation and batch sampling."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or bfloat16 autocast (default: bf16 on CUDA and on CPUs with native bf16, else fp32)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (default: on CUDA only)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch."),
    model: Optional[list[str]] = typer.Option(None, "--model", help="Model override FIELD=VALUE (repeatable), e.g. --model n_layer=6."),
) -> None:
    """Pretrain a model on token shards; under `torchrun` it trains data parallel."""
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items() if k not in ("config", "resume")}
    from yunque.train.loop import parse_overrides, resolve_config, train

    flags["model"] = parse_overrides(model) if model else None
    cfg = resolve_config(config, resume=resume, **flags)
    result = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if result.interrupted:
        console.print(f"[yellow]interrupted[/] at step {result.step}; checkpoint saved, continue with `yunque train --out {cfg.out} --resume`.")
        raise typer.Exit(130)
    console.print(
        f"[bold green]done[/]: {result.step} steps, {result.tokens:,} tokens, val loss {result.val_loss:.4f}, "
        f"[bold]{result.val_bpb:.4f} bits/byte[/]; model in {result.model_dir}",
        highlight=False,
    )
    if result.sample:
        console.print(f"sample: {result.sample!r}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def inspect(
    model_dir: str = typer.Argument(..., help="A Hugging Face model directory (config.json + *.safetensors)."),
    json_output: bool = typer.Option(False, "--json", help="Print the description as JSON instead of a table."),
) -> None:
    """Describe a model directory: family, parameters, FLOPs per token, context, vocabulary, dtype and size."""
    from rich.table import Table

    from yunque.model.accounting import describe

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


@app.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(quickstart_defaults.DEFAULT_RUN_DIR, "--out", help="Run directory for everything the quickstart makes."),
    vocab_size: int = typer.Option(quickstart_defaults.DEFAULT_VOCAB_SIZE, "--vocab-size", help="Tokenizer vocabulary size."),
    train_seconds: float = typer.Option(quickstart_defaults.DEFAULT_TRAIN_SECONDS, "--train-seconds", help="Seconds to train the model for."),
) -> None:
    """Run the pipeline on the built-in corpus (Python's own documentation), offline: tokenizer, shards, a small model."""
    from yunque.cli.quickstart import quickstart, render

    with console.status("starting") as status:

        def on_stage(name: str, what: str) -> None:
            if name == "train":  # the trainer shows its own progress bar
                status.stop()
                console.print(f"{what} for {train_seconds:.0f} s...")
            else:
                status.update(f"{what}...")

        report = quickstart(out, vocab_size, train_seconds, progress=False, train_progress=True, on_stage=on_stage)
    render(report, console)



@app.command()
def generate(
    model_dir: Path = typer.Argument(..., help="Model directory (config.json, model.safetensors, tokenizer.json)."),
    prompt: str = typer.Argument(..., help="Text to continue, or '-' to read it from standard input."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", min=1, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="Sampling temperature; 0 means greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: the smallest set of tokens with this much probability (1: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens less likely than min_p times the most likely one (0: off)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Penalise tokens already seen (1: off)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for reproducible sampling."),
    stop: list[str] = typer.Option([], "--stop", help="Stop before this text (repeatable; \\n and \\t mean newline and tab); it is not printed."),
    truncate: bool = typer.Option(False, "--truncate", help="Keep the end of a prompt longer than the context instead of failing."),
    json_object: bool = typer.Option(False, "--json", help="Constrain the output to one JSON object (it ends when the object closes)."),
    int8: bool = typer.Option(False, "--int8", help="Quantize the weights to int8 (faster decoding on CPU)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print token counts and tokens per second to stderr."),
) -> None:
    """Continue PROMPT with a model, streaming the text as it is generated."""
    from yunque.infer.generate import generate as generate_text
    from yunque.infer.generate import load
    from yunque.infer.sampling import SamplingParams

    params = SamplingParams(  # checked before the model is loaded: cheap mistakes fail fast
        max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed, truncate=truncate, json_object=json_object,
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


# ---- Ollama-style model store verbs (library: yunque.store) ----


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
    force: bool = typer.Option(False, "--force", help="Replace an existing model of that name (its settings are lost)."),
) -> None:
    """Copy a Hugging Face model directory into the local model store under NAME."""
    from yunque.store.entries import import_model

    entry = import_model(src, name, force=force)
    console.print(f"imported {entry.name} (id {entry.short_id}, {_size(entry.size)})", highlight=False)


@app.command()
def create(
    name: str = typer.Argument(..., help="Store name for the new model."),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="The Modelfile; FROM paths in it are relative to its folder."),
) -> None:
    """Create a model from a Modelfile (FROM a store model or a directory, plus PARAMETER, SYSTEM, TEMPLATE ...)."""
    from yunque.store.entries import create as create_model

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise YunqueError(f"Cannot read the Modelfile {file} ({e.strerror if isinstance(e, OSError) else e}); pass its path with -f.") from None
    entry = create_model(name, text, base_dir=file.resolve().parent)
    console.print(f"created {entry.name} (id {entry.short_id})", highlight=False)


@app.command("list")
def list_cmd() -> None:
    """List the models in the local store (NAME, ID, SIZE, MODIFIED)."""
    from yunque.store.entries import list_models

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
    from yunque.store.entries import chat_settings
    from yunque.store.modelfile import render_modelfile
    from yunque.store.entries import resolve

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
    from yunque.store.entries import delete, require

    # every name is checked before anything is removed; `pirate` and `pirate:latest` are one entry
    found = list(dict.fromkeys(require(n) for n in names))
    for name in found:
        delete(str(name))
        console.print(f"deleted {name}", highlight=False)


@app.command()
def export(
    name: str = typer.Argument(..., help="Store name of the model to export."),
    directory: Path = typer.Argument(..., help="Directory to write the Hugging Face model into."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty directory."),
) -> None:
    """Copy a store model out as a plain Hugging Face directory (config.json, *.safetensors, tokenizer files)."""
    from yunque.store.entries import export_model

    out = export_model(name, directory, force=force)
    console.print(f"exported {name} to {out}", highlight=False, soft_wrap=True)


@app.command()
def cp(src: str = typer.Argument(..., help="Existing store name."), dst: str = typer.Argument(..., help="New store name.")) -> None:
    """Copy a model to a new name (shares the weight files, no extra space)."""
    from yunque.store.entries import copy

    entry = copy(src, dst)
    console.print(f"copied {src} to {entry.name}", highlight=False)

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
