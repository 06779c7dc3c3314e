"""`yunque quickstart`: the pipeline on the built-in corpus, offline, in a couple of minutes.

A run directory collects what each stage makes:

    runs/quickstart/
      tokenizer/        tokenizer.json + tokenizer_config.json (`yunque tokenizer train`)
      data/             train.bin, val.bin, meta.json          (`yunque data prepare`)
      train/            metrics.jsonl, checkpoints/, loss.png,  (`yunque train`)
        model/          the trained model with its tokenizer, in Hugging Face layout
      quickstart.json   the report below, for scripts

and the last stage adds the model to the local store as `quickstart`. Each stage is one
function in `STAGES` that takes the run and fills in its part of the report. `more_stages` run
after them: `yunque.cli.quickstart_chat.CHAT_STAGES` fine-tune the model into `quickstart-chat`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yunque.text.corpus import BUILTIN_CORPUS, python_docs
from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir, write_text_atomic

DEFAULT_RUN_DIR = Path("runs") / "quickstart"
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_TRAIN_SECONDS = 180.0
DEFAULT_FINETUNE_SECONDS = 150.0  # instruction fine-tuning (yunque.cli.quickstart_chat's stages)
STORE_NAME = "quickstart"  # the trained model's name in the local store (replaced by each run)
# What a quickstart run directory may hold; anything else means --out points at someone's files.
RUN_ENTRIES = {"tokenizer", "data", "train", "quickstart.json", "questions.jsonl", "finetune"}
# The model and optimizer settings of the CPU speedrun (benchmarks/cpu_speedrun.py): the best
# bits per byte found for a few minutes of a 2-core CPU.
TRAIN_SETTINGS = dict(
    preset="cpu-tiny",
    model=dict(n_layer=4, d_model=128, n_head=2, n_kv_head=2, d_ff=384),
    batch_size=16,
    context=128,
    lr=3e-3,
    schedule="wsd",
    decay_frac=0.4,
    min_lr_ratio=0.0,
    warmup_steps=50,
    weight_decay=0.1,
    beta2=0.95,
)


@dataclass
class QuickstartOptions:
    """Settings every stage may read; a later stage adds its own fields here."""

    vocab_size: int = DEFAULT_VOCAB_SIZE
    train_seconds: float = DEFAULT_TRAIN_SECONDS
    progress: bool = True
    train_progress: bool = True  # the training progress bar (a live display of its own)
    finetune_seconds: float = DEFAULT_FINETUNE_SECONDS  # instruction fine-tuning, with chat


@dataclass
class QuickstartReport:
    """What a quickstart run made, with the seconds each stage took."""

    run_dir: Path
    corpus: str = BUILTIN_CORPUS
    corpus_documents: int = 0
    corpus_bytes: int = 0
    vocab_size: int = 0
    tokenizer_fingerprint: str = ""
    shards: dict[str, Any] = field(default_factory=dict)  # the shards' meta.json
    train: dict[str, Any] = field(default_factory=dict)  # steps, tokens, parameters, val loss and bpb, sample
    seconds: dict[str, float] = field(default_factory=dict)  # stage name -> wall time
    model_name: str = ""  # the model's name in the local store
    chat: dict[str, Any] = field(default_factory=dict)  # with chat: the fine-tuning's before/after comparison
    chat_model_name: str = ""  # with chat: the fine-tuned model's name in the store

    @property
    def tokenizer_dir(self) -> Path:
        return self.run_dir / "tokenizer"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def model_dir(self) -> Path:
        return self.train_dir / "model"

    @property
    def questions_file(self) -> Path:
        return self.run_dir / "questions.jsonl"

    @property
    def finetune_dir(self) -> Path:
        return self.run_dir / "finetune"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"run_dir": str(self.run_dir)}


def read_corpus(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Collect the built-in corpus (Python's own documentation) and measure it."""
    docs = python_docs()
    report.corpus_documents = len(docs)
    report.corpus_bytes = sum(len(d.encode("utf-8")) for d in docs)


def train_tokenizer_stage(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Train a byte-level BPE tokenizer on the corpus into run_dir/tokenizer."""
    from yunque.text.tokenizer import train_tokenizer

    summary = train_tokenizer(
        [report.corpus], options.vocab_size, report.tokenizer_dir, force=True, show_progress=options.progress
    )
    report.vocab_size = summary.tokenizer.vocab_size
    report.tokenizer_fingerprint = summary.tokenizer.fingerprint


def prepare_shards(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Encode the corpus into train/val token shards in run_dir/data."""
    from yunque.text.shards import prepare

    report.shards = prepare([report.corpus], report.tokenizer_dir, report.data_dir, force=True, progress=options.progress)


def train_model(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Pretrain a small model on the shards for `train_seconds` into run_dir/train (model in train/model)."""
    from yunque.train.config import TrainConfig
    from yunque.model.transformer import Transformer
    from yunque.train.loop import train

    # Train into a temporary sibling that replaces an earlier quickstart's run only once this one
    # has finished: a failed or interrupted re-run keeps the previous model.
    with atomic_dir(report.train_dir, overwrite=True) as tmp:
        cfg = TrainConfig(
            data=str(report.data_dir), out=str(tmp), max_steps=None, time_budget=options.train_seconds,
            eval_every=0, eval_seconds=options.train_seconds / 6, checkpoint_every=0, keep_last=1, sample_tokens=64, **TRAIN_SETTINGS,
        )
        result = train(cfg, progress=options.train_progress)
        if result.interrupted:  # Ctrl-C stopped training before the final model: keep the previous run
            raise KeyboardInterrupt
        report.train = {
            "steps": result.step,
            "tokens": result.tokens,
            "parameters": Transformer.from_pretrained(result.model_dir).num_params(),
            "val_loss": result.val_loss,
            "val_bpb": result.val_bpb,
            "sample": result.sample,
        }


def save_to_store(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Add the trained model to the local store, so `yunque run` and `yunque serve` find it by name."""
    from yunque.store.entries import import_model

    report.model_name = str(import_model(report.model_dir, STORE_NAME, force=True).name)


Stage = tuple[str, str, Callable[[QuickstartReport, QuickstartOptions], None]]
STAGES: list[Stage] = [
    ("corpus", "Collecting Python's own documentation", read_corpus),
    ("tokenizer", "Training a tokenizer", train_tokenizer_stage),
    ("shards", "Encoding token shards", prepare_shards),
    ("train", "Training a small model", train_model),
    ("store", "Adding the model to the store", save_to_store),
]


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise YunqueError(f"{run_dir} is a file; give --out a directory path.")
    if run_dir.is_dir():
        ours = tuple(f".{entry}." for entry in RUN_ENTRIES)  # the temporaries an interrupted run may leave
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES and not p.name.startswith(ours))
        if foreign:
            raise YunqueError(
                f"{run_dir} holds {foreign[0]!r}, which a quickstart run does not make; choose a new or empty --out directory."
            )


def quickstart(
    run_dir: str | os.PathLike = DEFAULT_RUN_DIR,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    train_seconds: float = DEFAULT_TRAIN_SECONDS,
    progress: bool = True,
    train_progress: bool | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    more_stages: list[Stage] | None = None,
    finetune_seconds: float = DEFAULT_FINETUNE_SECONDS,
) -> QuickstartReport:
    """Run every stage, then `more_stages`, into `run_dir` (re-running replaces an earlier
    quickstart's outputs); `finetune_seconds` is the budget of the chat stages' fine-tuning.

    `on_stage(name, description)` is called as each stage starts, for a progress display;
    `train_progress` (default: `progress`) shows the training progress bar.
    """
    from yunque.text.tokenizer import check_vocab_size

    check_vocab_size(vocab_size)
    if train_seconds <= 0 or finetune_seconds <= 0:
        raise YunqueError(f"The training budgets must be positive numbers of seconds, got {train_seconds} and {finetune_seconds}.")
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    options = QuickstartOptions(
        vocab_size=vocab_size, train_seconds=train_seconds, progress=progress, train_progress=progress if train_progress is None else train_progress,
        finetune_seconds=finetune_seconds,
    )
    report = QuickstartReport(run_dir=run_dir)
    for name, description, stage in STAGES + (more_stages or []):
        if on_stage:
            on_stage(name, description)
        start = time.perf_counter()
        stage(report, options)
        report.seconds[name] = round(time.perf_counter() - start, 3)
    write_text_atomic(run_dir / "quickstart.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def render(report: QuickstartReport, console) -> None:
    """Print the report as rich tables, a sample of the model's text, and what to do next."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(title="yunque quickstart", show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_column(justify="right", style="dim")
    table.add_row(
        "corpus", f"{report.corpus}: {report.corpus_documents:,} documents, {report.corpus_bytes / 1e6:.2f} MB", f"{report.seconds['corpus']:.1f} s"
    )
    table.add_row(
        "tokenizer",
        f"byte-level BPE, vocab {report.vocab_size:,}, fingerprint {report.tokenizer_fingerprint} -> {report.tokenizer_dir}",
        f"{report.seconds['tokenizer']:.1f} s",
    )
    meta = report.shards
    table.add_row("shards", f"{meta['dtype']}, split by {meta['split_by']} -> {report.data_dir}", f"{report.seconds['shards']:.1f} s")
    train = report.train
    table.add_row(
        "model",
        f"{train['parameters']:,} parameters, {train['steps']:,} steps on {train['tokens']:,} tokens -> {report.model_dir}",
        f"{report.seconds['train']:.1f} s",
    )
    table.add_row(
        "validation",
        f"loss {train['val_loss']:.3f} nats/token, [bold green]{train['val_bpb']:.3f} bits per byte[/] (random bytes: 8; lower is better)",
        "",
    )
    console.print(table)

    splits = Table(show_edge=False, header_style="bold")
    for column in ("split", "documents", "tokens", "bytes", "bytes/token"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    for split, info in meta["splits"].items():
        splits.add_row(split, f"{info['documents']:,}", f"{info['tokens']:,}", f"{info['bytes']:,}", f"{info['bytes'] / info['tokens']:.2f}")
    console.print(splits)
    console.print(Panel(Text(train["sample"] or ""), title="a sample from the model", title_align="left", border_style="cyan"))
    console.print(
        Panel(
            f"Chat with your model, or serve it (web chat at http://127.0.0.1:11434/ui):\n"
            f"  yunque run {report.model_name}\n  yunque serve\n"
            f"Generate from your model:\n  yunque generate {report.model_dir} \"def \"\n"
            f"Watch it learn: {report.train_dir / 'loss.png'}; train longer, or on your own text:\n"
            f"  yunque tokenizer train FILES --vocab-size {report.vocab_size} --out my-tokenizer\n"
            "  yunque data prepare FILES --tokenizer my-tokenizer --out my-shards\n"
            "  yunque train --data my-shards --out my-run --time-budget 600",
            title="next",
            title_align="left",
            border_style="green",
        )
    )
