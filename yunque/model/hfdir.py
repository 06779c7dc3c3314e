"""Reading Hugging Face model directories: config.json, the weight files and their headers.

One implementation for the store (which must not load torch) and the loader in `yunque.model.hf`,
so both accept and refuse the same directories with the same messages. Nothing here
imports torch: the safetensors headers are read as the JSON they are.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from yunque.errors import YunqueError
from yunque.fsutil import read_json

# Files that may run code when loaded; yunque never reads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
INDEX_FILE = "model.safetensors.index.json"
# A LoRA adapter in PEFT's layout, and where a store entry keeps one: a subdirectory, because with
# peft installed transformers loads an adapter_config.json at a model directory's top as an adapter.
ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_DIR = "adapter_config.json", "adapter_model.safetensors", "adapter"


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The config.json of a model directory, after checking that the directory is one."""
    path = Path(model_dir)
    if path.is_file():
        raise YunqueError(f"{path} is a file, not a model directory; give the directory that holds config.json and the safetensors weights.")
    if not path.is_dir():
        raise YunqueError(f"Model directory {path} does not exist; give a directory with config.json and safetensors weights.")
    if not (path / "config.json").is_file():
        raise YunqueError(f"{path} has no config.json; a Hugging Face model directory needs config.json and safetensors weights.")
    return read_json(path / "config.json")


def weight_files(model_dir: str | Path) -> list[Path]:
    """The model's safetensors files, by name: model.safetensors, or the shards its index names.

    Other *.safetensors files in the directory (adapters, say) are not the model's weights.
    """
    path = Path(model_dir)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise YunqueError(f"{index} has no weight_map naming the shard files; re-export the model.")
        names = sorted(set(weight_map.values()))
        nested = [n for n in names if Path(n).name != n]
        if nested:
            raise YunqueError(f"{index} names shard {nested[0]!r}, which is not a file directly in the model directory; re-export the model.")
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise YunqueError(f"{path} is missing weight shard(s) {', '.join(missing)} named by {INDEX_FILE}; copy or download the whole model directory again.")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
    if pickles:
        raise YunqueError(f"{path} holds only pickle weights ({', '.join(pickles[:3])}), which yunque never loads; convert them to safetensors first.")
    raise YunqueError(f"{path} has no safetensors weights (model.safetensors or {INDEX_FILE}); export the model in safetensors format first.")


def _header(file: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors header (8-byte little-endian length, then JSON).

    The data the header describes must end where the file does, as safetensors itself
    requires, so a truncated download is caught here rather than at load time.
    """
    with open(file, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except (struct.error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            header = None
    if isinstance(header, dict):
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        if all(_is_tensor_entry(t) for t in tensors.values()):
            end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
            if 8 + n + end == file.stat().st_size:
                return tensors
    raise YunqueError(f"{file} is not a valid safetensors file (damaged or truncated); download or export the weights again.")


def _is_tensor_entry(info: Any) -> bool:
    return (
        isinstance(info, dict)
        and isinstance(info.get("dtype"), str)
        and all(isinstance(info.get(k), list) and all(isinstance(d, int) for d in info[k]) for k in ("shape", "data_offsets"))
        and len(info["data_offsets"]) == 2
    )


def dtype_counts(model_dir: str | Path) -> dict[str, int]:
    """Parameters stored per dtype ("F32", "BF16", ...) over the model's weight files, from the headers alone."""
    counts: dict[str, int] = {}
    for file in weight_files(model_dir):
        for info in _header(file).values():
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts


def header_stats(model_dir: str | Path) -> tuple[int, str]:
    """(parameter count, dtypes joined by "/") from the safetensors headers alone; no weights are loaded."""
    counts = dtype_counts(model_dir)
    return sum(counts.values()), "/".join(sorted(counts))
