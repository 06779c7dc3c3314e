"""`yunque quickstart --chat`: the quickstart's pretrained model, then instruction fine-tuning,
then a chat model in the store. Offline: the instructions are questions about Python's standard
library answered from its own documentation (`yunque.text.doc_questions`).

The run directory gains

    questions.jsonl   the instruction examples, reusable with `yunque finetune --data`
    finetune/         metrics.jsonl, loss.png, model/: the fine-tuned model (`yunque finetune`)

and the store gains `quickstart-chat`. Before and after fine-tuning, on held-out questions, the
report compares the loss on the answers and how many greedy answers end on the end-of-turn
token within `ANSWER_TOKENS`: a pretrained model only continues text; a chat model stops.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from yunque.cli.quickstart import QuickstartOptions, QuickstartReport, Stage
from yunque.fsutil import atomic_dir, write_text_atomic

CHAT_STORE_NAME = "quickstart-chat"
HELD_OUT = 0.05  # share of the questions kept for the comparison
COMPARED, ANSWER_TOKENS, SHOWN = 40, 64, 3  # held-out prompts answered before and after, their budget, answers printed
# Full fine-tuning at a lower peak than pretraining's 3e-3: the model keeps what it read.
FINETUNE_SETTINGS = dict(batch_size=16, lr=1e-3, schedule="wsd", decay_frac=0.4, min_lr_ratio=0.0, warmup_steps=20, weight_decay=0.0)


def make_questions(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Write one question per documented name of the corpus to run_dir/questions.jsonl."""
    from yunque.text.corpus import python_doc_pages
    from yunque.text.doc_questions import doc_questions

    records = doc_questions(python_doc_pages())
    write_text_atomic(report.questions_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    report.chat["questions"] = len(records)


def _compare(sft: Any, model: Any) -> dict[str, Any]:
    """Held-out loss on the answers, the share of answers that stop, and the first few answers."""
    import torch

    from yunque.train.distributed import Placement

    loss = sft.evaluate(model, Placement(0, 0, 1, torch.device("cpu")), contextlib.nullcontext())["val_loss"]
    return {"val_loss": loss, "ended": sft.stop_share(model, COMPARED, ANSWER_TOKENS),
            "answers": [sft.answer(model, e, ANSWER_TOKENS)[0] for e in sft.held[:SHOWN]]}


def finetune_model(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Fine-tune the pretrained model on the questions for `finetune_seconds` into run_dir/finetune."""
    from yunque.model.hf import config_from_hf
    from yunque.model.hfdir import read_config
    from yunque.model.transformer import Transformer
    from yunque.store.chat import model_chat_settings
    from yunque.store.modelfile import Modelfile
    from yunque.train.config import TrainConfig
    from yunque.train.loop import train
    from yunque.train.sft import Sft

    base = report.model_dir
    with atomic_dir(report.finetune_dir, overwrite=True) as tmp:
        context = config_from_hf(read_config(base)).max_seq_len  # from config.json: no weights loaded for it
        cfg = TrainConfig(out=str(tmp), max_steps=None, time_budget=options.finetune_seconds, context=context, eval_every=0,
                          eval_seconds=options.finetune_seconds / 3, checkpoint_every=0, keep_last=1, sample_tokens=48, **FINETUNE_SETTINGS)
        sft = Sft(cfg, base, model_chat_settings(base, Modelfile(from_=str(base))), report.questions_file, val_fraction=HELD_OUT)
        before = _compare(sft, Transformer.from_pretrained(base))
        result = train(cfg, progress=options.train_progress, objective=sft)
        if result.interrupted:  # keep the previous run's fine-tuned model
            raise KeyboardInterrupt
        after = _compare(sft, Transformer.from_pretrained(result.model_dir))
        report.chat.update(train=len(sft.train_set), held_out=len(sft.val_set), dropped=sft.dropped + sft.val_dropped, steps=result.step,
                           questions_shown=[e.messages[0]["content"] for e in sft.held[:SHOWN]], before=before, after=after)


def save_chat_to_store(report: QuickstartReport, options: QuickstartOptions) -> None:
    """Add the fine-tuned model to the store, so `yunque run quickstart-chat` chats with it."""
    from yunque.store.entries import import_model

    report.chat_model_name = str(import_model(report.finetune_dir / "model", CHAT_STORE_NAME, force=True).name)


CHAT_STAGES: list[Stage] = [
    ("questions", "Asking questions of Python's documentation", make_questions),
    ("finetune", "Fine-tuning the model to answer them", finetune_model),
    ("chat-store", "Adding the chat model to the store", save_chat_to_store),
]


def render_chat(report: QuickstartReport, console: Any) -> None:
    """Print the before/after comparison, a few held-out answers, and how to chat."""
    from rich.panel import Panel
    from rich.table import Table

    chat = report.chat
    before, after = chat["before"], chat["after"]
    table = Table(title=f"instruction fine-tuning: {chat['steps']:,} steps on {chat['train']:,} questions, compared on {chat['held_out']:,} held out",
                  title_justify="left", show_edge=False, header_style="bold")
    for column in ("model", "loss on the answers (nats/token)", f"answers ending on end-of-turn within {ANSWER_TOKENS} tokens"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("pretrained (quickstart)", f"{before['val_loss']:.3f}", f"{before['ended']:.0%}")
    table.add_row(f"fine-tuned ({report.chat_model_name})", f"{after['val_loss']:.3f}", f"[bold green]{after['ended']:.0%}[/]")
    console.print(table)
    for question, old, new in zip(chat["questions_shown"], before["answers"], after["answers"]):
        console.print(Panel(f"[dim]pretrained:[/] {old.strip()}\n[bold]fine-tuned:[/] {new.strip()}", title=question, title_align="left", border_style="cyan"))
    console.print(Panel(f"Chat with it: yunque run {report.chat_model_name}\nIt answers in the shape it learnt (a sentence or two about a "
                        "standard-library name) and often gets the facts wrong: a model this small mostly learns the form.",
                        title="next", title_align="left", border_style="green"))
