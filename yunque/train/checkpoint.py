"""Atomic training checkpoints: weights, optimizer, RNG and loop state, with no pickle.

A checkpoint is a directory `OUT/checkpoints/step_NNNNNNN/` that is itself a model
directory in Hugging Face layout (so `Transformer.from_pretrained` and `transformers`
load it), plus what resuming needs:

    config.json, model.safetensors, tokenizer files   the model, as save_pretrained writes it
                                                      (a LoRA run: adapter_config.json and
                                                      adapter_model.safetensors, PEFT's adapter)
    optimizer.safetensors + optimizer.json            AdamW moments and param groups
    rng.safetensors                                   torch CPU (and CUDA) generator states
    trainer_state.json                                step, tokens seen, elapsed time, TrainConfig

The directory is written under a temporary name and renamed into place
(`yunque.fsutil.atomic_dir`), so a kill at any moment leaves either the previous
checkpoints intact or a new complete one; `latest_checkpoint` only ever sees complete ones.
A disk that fails under a finished checkpoint can still truncate or lose its files:
`resumable_checkpoint` checks every file resuming reads and falls back to an older checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir
from yunque.model.hfdir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from yunque.model.lora import adapters, copy_adapter_weights, write_adapter_files

STATE_FILE = "trainer_state.json"
# Every file `load_checkpoint` reads; each must parse (JSON) or have a complete header and length (safetensors).
RESUME_FILES = (STATE_FILE, "optimizer.json", "optimizer.safetensors", "rng.safetensors")
MODEL_FILES = ("config.json", "model.safetensors")
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)  # a LoRA run saves only what trains
_NAME = re.compile(r"^step_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tokenizer: Any = None,
    keep_last: int | None = None,
) -> Path:
    """Write `root/step_NNNNNNN/` atomically, then delete all but the newest `keep_last`."""
    path = Path(root) / checkpoint_name(step)
    with atomic_dir(path, overwrite=True) as tmp:
        if adapters(model):
            write_adapter_files(model, tmp)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file(_rng_state(), tmp / "rng.safetensors")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    if keep_last:
        prune_checkpoints(root, keep_last)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore weights (and optimizer and RNG state) in place; return the trainer state."""
    path = Path(path)
    state = read_state(path)
    load_weights(model, path)
    if optimizer is not None:
        meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta))
    _set_rng_state(load_file(path / "rng.safetensors"))
    return state


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights of checkpoint `path` into `model` in place (no second model is built); a
    LoRA run's checkpoint holds its adapters, copied into the model's."""
    from yunque.model.hf import load_weights_into

    if (Path(path) / ADAPTER_FILES[0]).is_file():
        copy_adapter_weights(model, path)
    else:
        load_weights_into(model, path)


def read_state(path: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory, with a clear error if it is not one."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise YunqueError(f"{path} is not a training checkpoint (no {STATE_FILE}); pass an OUT/checkpoints/step_* directory.")
    return json.loads(file.read_text())


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary and half-deleted ones are dot-named)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why resuming from the checkpoint `path` would fail (a file missing, unparsable or truncated), or None."""
    weights = ADAPTER_FILES if (Path(path) / ADAPTER_FILES[0]).is_file() else MODEL_FILES
    for name in (*RESUME_FILES, *weights):
        file = Path(path) / name
        if not file.is_file():
            return f"{name} is missing"
        try:
            if name.endswith(".json"):
                json.loads(file.read_text())
            else:
                with safe_open(str(file), framework="pt"):  # checks the header and that the data covers the file
                    pass
        except (ValueError, SafetensorError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return f"{name} is unreadable: {e}"
    return None


def resumable_checkpoint(root: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under `root` that resuming can read (None if there is no checkpoint at all),
    and the newer ones skipped, each with its problem. Raises if checkpoints exist but none is usable."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append((ckpt, problem))
    if skipped:
        newest, problem = skipped[0]
        raise YunqueError(
            f"Cannot resume: checkpoint {newest} is damaged ({problem}) and no older checkpoint is usable; "
            f"delete {root} and start the run again without --resume."
        )
    return None, skipped


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints. Each is renamed to a hidden name
    first, so a kill during deletion never leaves a half-deleted directory that looks complete."""
    for old in list_checkpoints(root)[:-keep_last]:
        discard_checkpoint(old)


def remove_leftovers(root: str | Path) -> None:
    """Delete the hidden temporaries a killed run left behind (half-written or half-deleted checkpoints)."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".step_*"):
            shutil.rmtree(p, ignore_errors=True)


def discard_checkpoint(path: str | Path) -> None:
    """Delete one checkpoint: hidden by a rename first, then removed."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _set_rng_state(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
