"""Accounting: what a model directory holds and costs (parameters, FLOPs per token, bytes on
disk), read from config.json and the safetensors headers without loading a weight."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from yunque.model.hf import FAMILIES, config_from_hf
from yunque.model.hfdir import dtype_counts, read_config, weight_files
from yunque.model.transformer import Transformer


def describe(path: str | Path) -> dict[str, Any]:
    """What a model directory holds, read from config.json and the safetensors headers only."""
    hf = read_config(path)
    config = config_from_hf(hf)
    files = weight_files(path)
    dtypes = dtype_counts(path)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = Transformer(config)
    return {
        "path": str(Path(path).resolve()),
        "family": hf["model_type"],
        "architecture": FAMILIES[hf["model_type"]].architecture,
        "parameters": model.num_params(),
        "active_parameters": model.num_params(active=True),
        "non_embedding_parameters": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(),
        "context": config.max_seq_len,
        "vocab_size": config.vocab_size,
        "layers": config.n_layer,
        "d_model": config.d_model,
        "heads": config.n_head,
        "kv_heads": config.n_kv_head,
        "experts": f"{config.n_experts_per_tok} of {config.n_experts}" if config.is_moe else None,
        "sliding_window": config.sliding_window,
        "tied_embeddings": config.tie_embeddings,
        "dtype": max(dtypes, key=dtypes.get) if dtypes else None,
        "stored_parameters": sum(dtypes.values()),
        "files": [f.name for f in files],
        "size_bytes": sum(os.path.getsize(f) for f in files),
    }
