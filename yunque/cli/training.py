"""`yunque train` and `yunque quickstart`: make a model.

`yunque train` has one flag per `TrainConfig` field, derived from the dataclass (name, type,
help), so a new field is a new flag without touching this module. A flag left out is None,
which `resolve_config` reads as "not given": the TOML file or the resumed run decides.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import typer

from yunque.cli import quickstart as quickstart_defaults  # torch-free at import: only its defaults are read here
from yunque.cli.output import console
from yunque.errors import YunqueError
from yunque.train.config import TrainConfig

commands = typer.Typer()


def _flag_type(hint: Any) -> Any:
    """The command-line type of a TrainConfig field: Optional scalars are their scalar, Literal
    choices are text (TrainConfig names the choices in its error), a dict is repeated FIELD=VALUE."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Literal:
        return str
    if get_origin(hint) is dict:
        return list[str]
    return hint


def _flag(field: dataclasses.Field, hint: Any) -> inspect.Parameter:
    name = "--" + field.name.replace("_", "-")
    kind = _flag_type(hint)
    decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
    option = typer.Option(None, *decls, help=field.metadata["help"], metavar="FIELD=VALUE" if kind == list[str] else None)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


def _train_signature() -> inspect.Signature:
    """`--config` and `--resume`, then a flag for every TrainConfig field."""
    hints = get_type_hints(TrainConfig)
    own = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None, default=typer.Option(
            None, "--config", help="TOML file of training settings (model overrides in its `model` table); flags override it.")),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--resume", help="Continue the run in --out from its latest complete checkpoint.")),
    ]
    return inspect.Signature(own + [_flag(f, hints[f.name]) for f in dataclasses.fields(TrainConfig)])


def train_command(config: Path | None, resume: bool, **flags: Any) -> None:
    """Pretrain a model on token shards; under `torchrun` it trains data parallel."""
    from yunque.train.loop import parse_overrides, resolve_config, train

    flags["model"] = parse_overrides(flags["model"]) if flags.get("model") else None
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


train_command.__signature__ = _train_signature()
commands.command("train")(train_command)

# Fine-tuning starts from a trained model: a lower rate, fewer steps, its own run directory.
FINETUNE_DEFAULTS = dict(out="runs/finetune", lr=1e-4, max_steps=300, warmup_steps=10, eval_every=100, checkpoint_every=100, sample_tokens=48)
_NOT_FOR_FINETUNE = ("data", "preset", "model")  # the data is a dataset file; the model is BASE's


def _finetune_signature() -> inspect.Signature:
    """BASE, the dataset flags, `--config` and `--resume`, then every TrainConfig flag that applies."""
    hints = get_type_hints(TrainConfig)
    P = inspect.Parameter
    own = [
        P("base", P.POSITIONAL_OR_KEYWORD, annotation=str, default=typer.Argument(..., help="Model to fine-tune: a store name or a model directory.")),
        P("data", P.KEYWORD_ONLY, annotation=Path, default=typer.Option(..., "--data", help="Examples: Alpaca JSON/JSONL (instruction, input, output) or chat JSONL (messages).")),
        P("val_data", P.KEYWORD_ONLY, annotation=Path | None, default=typer.Option(None, "--val-data", help="Held-out examples (default: a share of --data).")),
        P("val_fraction", P.KEYWORD_ONLY, annotation=float, default=typer.Option(0.05, "--val-fraction", help="Share of --data held out when there is no --val-data.")),
        P("method", P.KEYWORD_ONLY, annotation=str, default=typer.Option("full", "--method", help="full (every weight) or lora (adapters on a frozen base; RUN/adapter).")),
        P("lora_r", P.KEYWORD_ONLY, annotation=int, default=typer.Option(8, "--lora-r", help="LoRA rank.")),
        P("lora_alpha", P.KEYWORD_ONLY, annotation=float, default=typer.Option(16.0, "--lora-alpha", help="LoRA alpha (the adapters' scale is alpha / r).")),
        P("lora_dropout", P.KEYWORD_ONLY, annotation=float, default=typer.Option(0.05, "--lora-dropout", help="Dropout on the adapters' input.")),
        P("lora_targets", P.KEYWORD_ONLY, annotation=str | None, default=typer.Option(None, "--lora-targets", help="Modules to adapt, PEFT's names, comma-separated (default: q_proj,v_proj; GPT-2: c_attn).")),
        P("base_dtype", P.KEYWORD_ONLY, annotation=str, default=typer.Option("float32", "--base-dtype", help="The frozen base's dtype in a LoRA run: float32, or bfloat16 (QLoRA-style, half the memory).")),
        P("lora_tokens", P.KEYWORD_ONLY, annotation=str, default=typer.Option("auto", "--lora-tokens", help="Token rows that train with the adapters: auto (the special tokens the template writes), none, or a comma list.")),
        *list(_train_signature().parameters.values())[:2],
    ]
    flags = [_flag(f, hints[f.name]) for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_FOR_FINETUNE]
    return inspect.Signature(own + flags)


def finetune_command(base: str, data: Path, val_data: Path | None, val_fraction: float, method: str, lora_r: int, lora_alpha: float,
                     lora_dropout: float, lora_targets: str | None, base_dtype: str, lora_tokens: str, config: Path | None, resume: bool, **flags: Any) -> None:
    """Fine-tune a model on instruction examples, all its weights or LoRA adapters; the loss covers the assistant's answers only."""
    from yunque.model.hf import config_from_hf
    from yunque.model.hfdir import read_config
    from yunque.model.lora import LoraSettings, default_targets
    from yunque.store import entries as store
    from yunque.train.loop import resolve_config, train
    from yunque.train.sft import Sft

    if method not in ("full", "lora"):
        raise YunqueError(f"Unknown --method {method!r}; choose full or lora.")
    entry = store.resolve(base)
    lora = None
    if method == "lora":
        targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets else default_targets(config_from_hf(read_config(entry.path)))
        lora = LoraSettings(lora_r, lora_alpha, lora_dropout, targets, base_model=str(entry.name or entry.path))
    cfg = resolve_config(config, resume=resume, defaults=FINETUNE_DEFAULTS, **flags)
    objective = Sft(cfg, entry.path, store.chat_settings(entry), data, val_data, val_fraction, lora, lora_tokens, base_dtype)
    if objective.dropped or objective.val_dropped:
        console.print(f"[yellow]dropped[/] {objective.dropped + objective.val_dropped} examples longer than the context of {cfg.context} tokens (raise --context to keep them).")
    result = train(cfg, resume=resume, objective=objective)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if result.interrupted:
        console.print(f"[yellow]interrupted[/] at step {result.step}; checkpoint saved, continue with `yunque finetune {base} --data {data} --out {cfg.out} --resume`.")
        raise typer.Exit(130)
    what = "adapter" if lora else "model"
    console.print(f"[bold green]done[/]: {result.step} steps, held-out loss on answers [bold]{result.val_loss:.4f}[/]; {what} in {result.model_dir}", highlight=False)


finetune_command.__signature__ = _finetune_signature()
commands.command("finetune")(finetune_command)


@commands.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(quickstart_defaults.DEFAULT_RUN_DIR, "--out", help="Run directory for everything the quickstart makes."),
    vocab_size: int = typer.Option(quickstart_defaults.DEFAULT_VOCAB_SIZE, "--vocab-size", help="Tokenizer vocabulary size."),
    train_seconds: float = typer.Option(quickstart_defaults.DEFAULT_TRAIN_SECONDS, "--train-seconds", help="Seconds to train the model for."),
    chat: bool = typer.Option(False, "--chat", help="Then fine-tune it to answer questions about Python's standard library: a chat model, quickstart-chat."),
    finetune_seconds: float = typer.Option(quickstart_defaults.DEFAULT_FINETUNE_SECONDS, "--finetune-seconds", help="Seconds of instruction fine-tuning (with --chat)."),
) -> None:
    """Run the pipeline on the built-in corpus (Python's own documentation), offline: tokenizer, shards, a small model (with --chat, a chat model)."""
    from yunque.cli.quickstart import quickstart, render
    from yunque.cli.quickstart_chat import CHAT_STAGES, render_chat

    with console.status("starting") as status:

        def on_stage(name: str, what: str) -> None:
            if name in ("train", "finetune"):  # the trainer shows its own progress bar
                status.stop()
                console.print(f"{what} for {train_seconds if name == 'train' else finetune_seconds:.0f} s...")
            else:
                status.update(f"{what}...")
                status.start()

        report = quickstart(out, vocab_size, train_seconds, progress=False, train_progress=True, on_stage=on_stage,
                            more_stages=CHAT_STAGES if chat else None, finetune_seconds=finetune_seconds)
    render(report, console)
    if chat:
        render_chat(report, console)
