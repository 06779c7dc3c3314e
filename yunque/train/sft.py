"""Supervised fine-tuning as an `Objective`: a pretrained model learns the assistant's turns of
instruction examples (yunque.train.sft_data renders them and marks the targets).

A batch is `batch_size` examples drawn by the run's seeded generator, right-padded to the
longest; the loss is the mean over the assistant's tokens only (system, user, template
markers and padding are -100). Evaluation reports the held-out examples' loss and bits per
byte over the assistant's tokens, and (on rank 0) the model's answers to the first held-out
prompts. The training loop, checkpoints and exact resume are pretraining's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from yunque.errors import YunqueError
from yunque.model.config import ModelConfig
from yunque.model.hf import config_from_hf
from yunque.model.lora import LoraSettings, add_lora, apply_entry_adapter
from yunque.model.hfdir import read_config
from yunque.text.chat_template import ChatSettings
from yunque.train.config import TrainConfig
from yunque.train.distributed import Placement
from yunque.train.objectives import batch_generator
from yunque.train.sft_data import Example, Rendered, read_examples, render_all

IGNORE = -100
_BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SAMPLE_PROMPTS = 2


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded choice of about `fraction` of the examples, at least one."""
    if len(examples) < 2:
        raise YunqueError("Fine-tuning needs at least two examples (one is held out for evaluation), or a --val-data file.")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def _padded(rows: list[Rendered], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (-100 where nothing is learnt) of `rows`, right-padded to the longest."""
    width = max(len(r.ids) for r in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids, on = torch.tensor(r.ids), torch.tensor(r.targets)
        x[i, : len(ids) - 1] = ids[:-1]
        y[i, : len(ids) - 1] = torch.where(on[1:], ids[1:], IGNORE)
    return x.to(device), y.to(device)


class Sft:
    """Fine-tune the model in `base` (an HF directory with its tokenizer) on `data` under `chat`:
    all its weights, or with `lora` only LoRA adapters on a frozen base."""

    def __init__(self, cfg: TrainConfig, base: str | Path, chat: ChatSettings, data: str | Path, val_data: str | Path | None = None,
                 val_fraction: float = 0.05, lora: LoraSettings | None = None, lora_tokens: str = "auto", base_dtype: str = "float32") -> None:
        """`lora_tokens`: which token rows train beside LoRA's adapters: "auto" (the special tokens
        the rendered examples use, such as the template's markers), "none", or a comma list of tokens.
        `base_dtype` "bfloat16" keeps a LoRA run's frozen base in bf16 (QLoRA-style: half the
        weights' memory; the adapters stay float32)."""
        from yunque.text.tokenizer import Tokenizer

        self.cfg, self.base, self.chat = cfg, Path(base), chat
        if base_dtype not in _BASE_DTYPES or (base_dtype != "float32" and lora is None):
            raise YunqueError(f"--base-dtype is float32 or, for --method lora, bfloat16; got {base_dtype} with {'lora' if lora else 'full'} fine-tuning.")
        self.base_dtype = _BASE_DTYPES[base_dtype]
        self.config = config_from_hf(read_config(self.base))
        if cfg.context > self.config.max_seq_len:
            raise YunqueError(f"--context {cfg.context} is longer than the model's context of {self.config.max_seq_len}.")
        self.tokenizer = Tokenizer.from_pretrained(self.base)
        examples = read_examples(data)
        train, held = (examples, read_examples(val_data)) if val_data else split_examples(examples, val_fraction, cfg.seed)
        self.train_set, self.dropped = render_all(chat, self.tokenizer, train, cfg.context)
        self.val_set, self.val_dropped = render_all(chat, self.tokenizer, held, cfg.context)
        self.held = held
        self.lora = self._resolve_lora(lora, lora_tokens) if lora else None
        # A resume must see the same tokenizer and the same adapters (or none).
        self.fingerprint = self.tokenizer.fingerprint + (f" {self.lora.description} base {base_dtype}" if self.lora else "")

    def _resolve_lora(self, lora: LoraSettings, tokens: str) -> LoraSettings:
        """`lora` for this base, with its token rows, checked on a model without memory (before any weights load)."""
        from yunque.model.transformer import Transformer

        ids = self._token_ids(tokens)
        rows = (("", ids),) + ((("lm_head", ids),) if not self.config.tie_embeddings else ()) if ids else ()
        lora = dataclasses.replace(lora, base_model=lora.base_model or str(self.base), tokens=rows)
        with torch.device("meta"):
            add_lora(Transformer(self.config), lora)
        return lora

    def _token_ids(self, tokens: str) -> tuple[int, ...]:
        if tokens == "none":
            return ()
        special = self.tokenizer.special_tokens
        if tokens == "auto":
            used = {i for r in self.train_set for i in r.ids}
            return tuple(sorted(i for i in special.values() if i in used))
        names = [t.strip() for t in tokens.split(",") if t.strip()]
        unknown = [t for t in names if t not in special]
        if unknown or not names:
            raise YunqueError(f"--lora-tokens takes auto, none or special tokens of this tokenizer ({', '.join(sorted(special)[:8])}...); {unknown[0] if unknown else 'none given'} is not one.")
        return tuple(sorted({special[t] for t in names}))

    def model_config(self) -> ModelConfig:
        return self.config

    def build_model(self, device: torch.device) -> torch.nn.Module:
        from yunque.model.transformer import Transformer

        model = apply_entry_adapter(Transformer.from_pretrained(self.base, dtype=self.base_dtype, device=device), self.base)
        return add_lora(model, self.lora) if self.lora else model

    def batch(self, step: int, index: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        picks = torch.randint(len(self.train_set), (self.cfg.batch_size,), generator=batch_generator(self.cfg.seed, step, index))
        return _padded([self.train_set[i] for i in picks.tolist()], device)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, loss = model(*batch, loss_only=True)
        return loss

    @torch.no_grad()
    def _held_out_sums(self, model: torch.nn.Module, place: Placement, autocast: Any) -> torch.Tensor:
        """(nats, target tokens, UTF-8 bytes of the targets) over this rank's share of the held-out examples."""
        sums = torch.zeros(3, dtype=torch.float64, device=place.device)
        rows = self.val_set[place.rank :: place.world]
        for start in range(0, len(rows), self.cfg.batch_size):
            chunk = rows[start : start + self.cfg.batch_size]
            x, y = _padded(chunk, place.device)
            with autocast:
                logits = model(x)
            nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
            targets = y[y != IGNORE].tolist()
            n_bytes = sum(len(self.tokenizer.token_bytes(t)) for t in targets)
            sums += torch.tensor([float(nats), len(targets), n_bytes], dtype=torch.float64, device=place.device)
        if place.world > 1:
            dist.all_reduce(sums)
        return sums

    def evaluate(self, model: torch.nn.Module, place: Placement, autocast: Any) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        sums = self._held_out_sums(model, place, autocast)
        record: dict[str, Any] = {"val_loss": float(sums[0] / sums[1]), "val_bpb": float(sums[0] / (math.log(2) * sums[2])),
                                  "val_tokens": int(sums[1])}
        if place.lead and self.cfg.sample_tokens:
            record["answers"] = [self.answer(model, e)[0] for e in self.held[:SAMPLE_PROMPTS]]
        model.train(was_training)
        return record

    def answer(self, model: torch.nn.Module, example: Example, max_tokens: int | None = None) -> tuple[str, bool]:
        """The model's greedy answer to the example's conversation up to its first assistant turn
        (at most `max_tokens`, default `sample_tokens`), and whether it ended on an end-of-turn token."""
        from yunque.infer.generate import generate_ids

        budget = max_tokens or self.cfg.sample_tokens
        first = next(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        prompt = self.tokenizer.encode(self.chat.render(example.messages[:first]), allowed_special="all")
        stops = [self.tokenizer.token_to_id(s) for s in self.chat.stop] + [self.tokenizer.eot_id]
        stream = generate_ids(model, prompt[-(self.config.max_seq_len - budget):], temperature=0, max_new_tokens=budget,
                              stop_token_ids=[t for t in stops if t is not None])
        ids = list(stream)
        return self.tokenizer.decode(ids), stream.result.finish_reason == "stop"

    def stop_share(self, model: torch.nn.Module, n: int, max_tokens: int) -> float:
        """Share of the first `n` held-out prompts whose greedy answer ends on an end-of-turn
        token within `max_tokens`: what makes a chat model stop instead of rambling on."""
        was_training = model.training
        model.eval()
        ended = sum(self.answer(model, e, max_tokens)[1] for e in self.held[:n])
        model.train(was_training)
        return ended / min(n, len(self.held))

    def report(self, record: dict[str, Any]) -> str:
        return f"val loss on the assistant's tokens {record['val_loss']:.4f}, {record['val_bpb']:.4f} bits/byte"
