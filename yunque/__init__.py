"""yunque: from raw text to a language model of your own, served locally.

The public names are imported lazily so that `yunque --help` and the tokenizer
commands start without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "YunqueError": "yunque.errors",
    "ModelConfig": "yunque.model.config",
    "Tokenizer": "yunque.text.tokenizer",
    "Transformer": "yunque.model.transformer",
    "load": "yunque.infer.generate",
    "generate": "yunque.infer.generate",
    "generate_ids": "yunque.infer.generate",
    "generate_batch": "yunque.infer.generate",
    "GenerationResult": "yunque.infer.batch",
    "SamplingParams": "yunque.infer.sampling",
    "Engine": "yunque.infer.engine",
    "embed": "yunque.infer.embeddings",
    "quantize_int8": "yunque.model.quantize",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'yunque' has no attribute {name!r}")
