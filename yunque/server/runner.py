"""One loaded model: weights on a device, its tokenizer, and the scheduler that batches its requests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from yunque.store import entries as store
from yunque.server.errors import APIError


@dataclass
class Runner:
    """What loading a model produces; the model manager owns one per loaded model."""

    model: Any
    tokenizer: Any
    scheduler: Any
    context_length: int
    size: int  # bytes of parameters and buffers
    device: str
    default_context: int | None = None  # the context of requests that set no num_ctx; None: the model's

    async def embed(self, texts: list[str], truncate: bool = True) -> tuple[list[list[float]], int]:
        """Unit-length embeddings of `texts` and the number of tokens read; runs beside the scheduler in a worker thread.

        A text longer than the context is cut to its first tokens when `truncate`, else refused.
        """
        from yunque.infer.embeddings import embed_ids, encode_texts

        if not texts or any(not t for t in texts):
            raise APIError(400, "input must be a non-empty string or a list of non-empty strings", param="input")

        def work() -> tuple[list[list[float]], int]:
            ids = encode_texts(self.tokenizer, texts, self.context_length, truncate=truncate)  # once: embedded and counted
            return embed_ids(self.model, ids).tolist(), sum(len(t) for t in ids)

        return await asyncio.to_thread(work)


def load_runner(entry: store.ModelEntry, max_batch: int = 32, max_queue: int = 256, kv_budget: Any = None,
                default_context: int | None = None) -> Runner:
    """Load a store entry on the device and in the dtype `yunque.model.device` picks (CUDA in bf16
    when present; on a CPU, bf16 checkpoints stay bf16 where it is native, else float32) and start its scheduler."""
    from yunque.model.device import available_memory, device_kind, inference_dtype, stored_dtype
    from yunque.model.lora import apply_entry_adapter
    from yunque.model.transformer import Transformer
    from yunque.infer.engine import Engine
    from yunque.text.tokenizer import Tokenizer

    # The tokenizer first: a model it cannot serve fails in milliseconds, not after its weights load.
    # (engine.load reads them the other way round, so it is not reused here.)
    tokenizer = Tokenizer.from_pretrained(entry.path)
    device = device_kind()
    dtype = inference_dtype(device, stored_dtype(entry.path))
    weights = int(entry.details.get("parameter_count") or 0) * dtype.itemsize
    check_fits(str(entry.name), weights, available_memory(device), kv_budget.total - kv_budget.used if kv_budget else 0)
    model = apply_entry_adapter(Transformer.from_pretrained(entry.path, dtype=dtype, device=device), entry.path).eval()  # Modelfile ADAPTER
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    scheduler = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, kv_budget=kv_budget)
    return Runner(model, tokenizer, scheduler, model.config.max_seq_len, size, device, default_context)


def check_fits(name: str, weights: int, available: int | None, kv_to_come: int = 0) -> None:
    """Refuse, with the numbers, a model whose weights would not fit in the memory free now beside
    the KV cache the budget may still hand out (`kv_to_come`); the alternative is the operating
    system killing the server mid-load or mid-answer."""
    from yunque.infer.budget import human_bytes

    if available is None or weights <= available - kv_to_come:
        return
    kv = f" beside the {human_bytes(kv_to_come)} of KV cache the budget may still use" if kv_to_come else ""
    raise APIError(
        507,
        f"{name} needs about {human_bytes(weights)} for its weights but {human_bytes(available)} of memory is free{kv}; "
        "unload other models (yunque stop), free memory, lower --kv-budget, or use a smaller model",
    )
