"""Small but real Hugging Face model directories for store and chat tests (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

CHAT_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|tool_call|>", "<|/tool_call|>"]


def make_hf_dir(path: Path, seed: int = 0, shards: int = 1, tokenizer_config: dict | None = None, generation_config: dict | None = None) -> Path:
    """Write config.json, safetensors weights, tokenizer.json (+ optional configs) into `path`."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16}
    (path / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": rng.standard_normal((64, 8), dtype=np.float32), "lm_head.weight": rng.standard_normal((64, 8), dtype=np.float32)}
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
    else:
        weight_map = {}
        for i, (name, t) in enumerate(tensors.items()):
            shard = f"model-{i + 1:05d}-of-{len(tensors):05d}.safetensors"
            save_file({name: t}, str(path / shard))
            weight_map[name] = shard
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    vocab = {tok: i for i, tok in enumerate(CHAT_TOKENS + [chr(c) for c in range(97, 123)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(CHAT_TOKENS)
    tok.save(str(path / "tokenizer.json"))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    return path
