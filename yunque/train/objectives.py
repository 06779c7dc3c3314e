"""What a run trains toward. An `Objective` says what a batch is, its loss, and what evaluation
measures and reports; the loop in yunque.train.loop is the same for all of them.

`NextToken` (pretraining on token shards made by `yunque data prepare`) is the first;
`yunque.train.sft.Sft` (instruction fine-tuning) the second. Later objectives (DPO,
classification heads, masked LM) implement the same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from yunque.errors import YunqueError
from yunque.model.config import ModelConfig, preset
from yunque.train.config import TrainConfig
from yunque.train.distributed import Placement


class Objective(Protocol):
    """The loop's contract with what it trains: data, batches, loss, evaluation."""

    tokenizer: Any  # saved beside each checkpoint and the final model
    fingerprint: str  # identifies the data's tokenizer; a resume must see the same one

    def model_config(self) -> ModelConfig:
        """The model to train, as the run's config and the data decide it."""

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The model at step 0 (fresh weights, or a pretrained model to fine-tune) on `device`."""

    def batch(self, step: int, index: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Global micro-batch `index` of `step`, on `device`; the same (step, index) always gives the same batch."""

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The scalar loss to minimise on `batch`."""

    def evaluate(self, model: torch.nn.Module, place: Placement, autocast: Any) -> dict[str, Any]:
        """Held-out figures for metrics.jsonl (every rank calls it; rank 0's record is the one logged)."""

    def report(self, record: dict[str, Any]) -> str:
        """A one-line summary of an evaluation record for the console."""


def batch_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator for global micro-batch `index` of `step`: a hash of the three, so any process
    can draw any batch without replaying the ones before it."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1))
    return g


def model_config(cfg: TrainConfig, vocab_size: int, eot_id: int | None = None) -> ModelConfig:
    """The preset with the run's overrides; the vocabulary (and end-of-text id) come from the data's tokenizer."""
    if cfg.model.get("vocab_size", vocab_size) != vocab_size:
        raise YunqueError(
            f"The model's vocab_size ({cfg.model['vocab_size']}) does not match the data's tokenizer ({vocab_size}); "
            "drop vocab_size from the model settings or prepare the data with the model's tokenizer."
        )
    return preset(cfg.preset, **{"max_seq_len": cfg.context, "bos_token_id": eot_id, "eos_token_id": eot_id, **cfg.model, "vocab_size": vocab_size})


def open_shards(path: str | Path):
    """The token shards at `path`, with a one-sentence error if they are missing."""
    from yunque.text.shards import TokenShards

    if not path:
        raise YunqueError("No training data given; pass --data DIR (a directory made by `yunque data prepare`).")
    return TokenShards(path)


def shards_tokenizer(shards):
    """The tokenizer the shards were encoded with (its directory is recorded in their metadata)."""
    from yunque.text.tokenizer import Tokenizer

    path = Path(shards.meta["tokenizer"]["path"])
    if not path.is_dir():
        raise YunqueError(f"The tokenizer the data in {shards.dir} was made with ({path}) is gone; restore it or prepare the data again.")
    tokenizer = Tokenizer.from_pretrained(path)
    if tokenizer.fingerprint != shards.meta["tokenizer"]["fingerprint"]:
        raise YunqueError(f"The tokenizer at {path} has changed since the data in {shards.dir} was made; prepare the data again.")
    return tokenizer


@torch.no_grad()
def evaluate(model: torch.nn.Module, shards, cfg: TrainConfig, device: torch.device, autocast: Any, world: int = 1, rank: int = 0) -> tuple[float, float, int]:
    """(mean val loss in nats/token, val bits per byte, tokens scored) over the val split.

    Bits per byte = nats over the text tokens ÷ (ln 2 × their UTF-8 bytes), as the loader
    defines it (end-of-text separators carry no bytes and are left out). Over the whole split
    the byte count is exact; with `eval_tokens` the split's bytes are scaled by the share of
    tokens scored. Under torchrun the batches are shared out between ranks and the sums all-reduced.
    """
    from yunque.text.shards import bits_per_byte

    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nats, targets, text nats, text targets
    seen = 0
    for i, (x, y, mask) in enumerate(shards.iter_eval("val", cfg.batch_size, cfg.context)):
        if cfg.eval_tokens is not None and seen >= cfg.eval_tokens:
            break
        seen += y.numel()
        if i % world != rank:
            continue
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        with autocast:
            logits = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").double()
        sums += torch.stack([nats.sum(), nats.new_tensor(y.numel()), nats[mask.flatten()].sum(), mask.sum().double()])
    if world > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    n_bytes = shards.bytes("val") * min(1.0, seen / (shards.tokens("val") - 1))
    return float(sums[0] / sums[1]), bits_per_byte(float(sums[2]), n_bytes), int(sums[1])


def sample(model: torch.nn.Module, tokenizer, n_tokens: int, seed: int, temperature: float = 0.8, top_k: int = 40) -> str:
    """A short text the model writes after an end-of-text token (yunque.infer.generate, seeded; the
    training RNG is left as it was)."""
    from yunque.infer.generate import generate_ids

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        stream = generate_ids(
            model, [tokenizer.eot_id or 0], max_new_tokens=n_tokens, temperature=temperature, top_k=top_k, seed=seed, stop_token_ids=()
        )
        ids = list(stream)
    model.train(was_training)
    return tokenizer.decode(ids)


class NextToken:
    """Pretraining: predict each next token of the token shards at `cfg.data`; evaluation reports
    val loss, val bits per byte and (on rank 0) a short sample."""

    def __init__(self, cfg: TrainConfig) -> None:
        # Only metadata is read here, so bad input fails before anything is allocated.
        self.cfg = cfg
        self.shards = open_shards(cfg.data)
        self.vocab_size = int(self.shards.meta["vocab_size"])
        self.fingerprint = str(self.shards.meta["tokenizer"]["fingerprint"])
        self.tokenizer = shards_tokenizer(self.shards)
        for split in ("train", "val"):
            if self.shards.tokens(split) <= self.cfg.context:
                raise YunqueError(
                    f"The {split} split of {self.cfg.data} has {self.shards.tokens(split)} tokens, not more than the context of "
                    f"{self.cfg.context}; use a shorter --context or more data."
                )

    def model_config(self) -> ModelConfig:
        return model_config(self.cfg, self.vocab_size, self.shards.eot_id)

    def build_model(self, device: torch.device) -> torch.nn.Module:
        from yunque.model.transformer import Transformer

        return Transformer(self.model_config()).to(device)

    def batch(self, step: int, index: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        x, y = self.shards.get_batch("train", cfg.batch_size, cfg.context, batch_generator(cfg.seed, step, index))
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, loss = model(*batch)
        return loss

    def evaluate(self, model: torch.nn.Module, place: Placement, autocast: Any) -> dict[str, Any]:
        val_loss, bpb, n = evaluate(model, self.shards, self.cfg, place.device, autocast, place.world, place.rank)
        record: dict[str, Any] = {"val_loss": val_loss, "val_bpb": bpb, "val_tokens": n}
        if place.lead and self.cfg.sample_tokens:
            record["sample"] = sample(model, self.tokenizer, self.cfg.sample_tokens, self.cfg.seed)
        return record

    def report(self, record: dict[str, Any]) -> str:
        return f"val loss {record['val_loss']:.4f}, {record['val_bpb']:.4f} bits/byte"
