"""`yunque generate` and `yunque inspect`: use a model directory, and describe one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from yunque.cli.output import console, err_console


commands = typer.Typer()


@commands.command()
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


@commands.command()
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
