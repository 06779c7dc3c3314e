"""Text embeddings from a language model: mean-pooled final hidden states, L2-normalised.

This is what the server's /api/embed and /v1/embeddings return. Texts are right-padded into
batches; attention is causal, so padding after a text never changes its hidden states, and
the mean runs over the text's own positions only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from yunque.errors import YunqueError
from yunque.model.transformer import Transformer


def encode_texts(tokenizer: Any, texts: Sequence[str], context: int, *, truncate: bool = False) -> list[list[int]]:
    """The token ids of each text, checked against the context: a longer text is an error unless
    `truncate`, which keeps its beginning."""
    ids = []
    for i, text in enumerate(texts):
        toks = tokenizer.encode(text)
        if not toks:
            raise YunqueError(f"Text {i} is empty; give each text at least one character to embed.")
        if len(toks) > context:
            if not truncate:
                raise YunqueError(f"Text {i} has {len(toks)} tokens but the context holds {context}; shorten it or pass truncate=True.")
            toks = toks[:context]
        ids.append(toks)
    return ids


def embed_ids(model: Transformer, ids: Sequence[Sequence[int]], *, batch_size: int = 16) -> Tensor:
    """Embeddings (N, d_model) of texts already encoded (`encode_texts`), one unit-length row each."""
    device = model.tok_emb.weight.device
    out = []
    # Sorting by length keeps padding (wasted compute) small within each batch.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[start : start + batch_size]]
        width = max(len(t) for t in chunk)
        batch = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(chunk), width, 1, device=device)
        for row, toks in enumerate(chunk):
            batch[row, : len(toks)] = torch.tensor(toks, device=device)
            mask[row, : len(toks)] = 1.0
        hidden = model.hidden_states(batch).float()
        out.append((hidden * mask).sum(1) / mask.sum(1))
    pooled = torch.cat(out) if out else torch.zeros(0, model.config.d_model, device=device)
    result = torch.empty_like(pooled)
    result[torch.tensor(order, dtype=torch.long, device=device)] = pooled
    return F.normalize(result, dim=-1)


def embed(model: Transformer, tokenizer: Any, texts: Sequence[str], *, truncate: bool = False, batch_size: int = 16) -> Tensor:
    """Embeddings (N, d_model) of `texts`, one unit-length row each.

    A text longer than the context is an error unless `truncate`, which keeps its beginning.
    """
    if isinstance(texts, str):
        texts = [texts]
    return embed_ids(model, encode_texts(tokenizer, texts, model.config.max_seq_len, truncate=truncate), batch_size=batch_size)
