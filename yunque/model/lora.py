"""LoRA adapters on yunque's fused products, saved and loaded in PEFT's format.

LoRA trains, beside a frozen weight W, two small matrices per adapted module: y = W x +
(alpha / r) B A dropout(x), A (r, in) and B (out, r), B starting at zero so training starts
from the base model. PEFT names modules as Hugging Face does (q_proj, k_proj, v_proj,
o_proj, gate_proj, up_proj, down_proj; GPT-2's c_attn, c_proj, c_fc) and matches a target by
module-name suffix. yunque fuses q/k/v and gate/up into single products, so an adapter on
q_proj acts on the first rows of the fused qkv: each PEFT module is one slice of one yunque
product (`yunque.model.hf.linear_sites`, from the same table that loads checkpoints). An
adapter directory is PEFT's own: `adapter_config.json` and `adapter_model.safetensors` with
PEFT's tensor names, so `PeftModel.from_pretrained` loads what yunque trains and yunque loads
what PEFT saves.

An adapter may also train a few rows of the embedding (PEFT's `trainable_token_indices`): the
template markers a base model never saw, such as the end-of-turn token that makes a chat model
stop, have untrained rows that frozen weights would keep so. A tied LM head shares those rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import Tensor, nn

from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir, read_json
from yunque.model.hf import family_of, hf_module_name, linear_sites
from yunque.model.hfdir import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS

CONFIG_FILE, WEIGHTS_FILE = ADAPTER_CONFIG, ADAPTER_WEIGHTS
DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's default for Llama-family models
_FAMILY_TARGETS = {"gpt2": ("c_attn",)}  # PEFT's default for GPT-2


def default_targets(config: Any) -> tuple[str, ...]:
    """The modules PEFT adapts by default for this model's family."""
    return _FAMILY_TARGETS.get(family_of(config), DEFAULT_TARGETS)


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale (alpha / r), dropout on the adapter's input, and the PEFT module names adapted."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base_model: str = ""  # the base it adapts, as the adapter's config records it
    # Token rows that train too: (module, token ids) pairs; module "" is the input embedding.
    tokens: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise YunqueError(f"LoRA needs a rank of at least 1, a positive alpha, a dropout in [0, 1) and targets; got r={self.r}, alpha={self.alpha}, dropout={self.dropout}, targets={list(self.targets)}.")

    @property
    def description(self) -> str:
        """What a resumed run must match: rank, targets and trained token rows."""
        rows = "".join(f" tokens {m or 'embedding'}={','.join(map(str, ids))}" for m, ids in self.tokens)
        return f"lora r={self.r} targets={','.join(sorted(self.targets))}{rows}"


class LoraLinear(nn.Module):
    """A frozen linear layer plus one LoRA pair per slice of its output rows."""

    def __init__(self, base: nn.Module, slices: list[tuple[str, int, int]], settings: LoraSettings) -> None:
        super().__init__()
        self.base, self.settings = base, settings
        slices = sorted(slices, key=lambda s: s[1])  # by first row, as `_b` lays them out
        self.hf_names = [name for name, _, _ in slices]
        self.rows = [(start, stop) for _, start, stop in slices]
        ref = next(base.parameters(), None)
        # float32 whatever the base's dtype (as PEFT's autocast_adapter_dtype): a bf16 base saves
        # memory, and the trained weights and their optimizer state keep full precision.
        kind = dict(dtype=torch.float32, device=ref.device if ref is not None else None)
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(settings.r, base.in_features, **kind)) for _ in slices)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(stop - start, settings.r, **kind)) for _, start, stop in slices)
        for a in self.lora_A:  # PEFT's initialisation: A as nn.Linear's default, B zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scaling = settings.alpha / settings.r
        self.dropout = nn.Dropout(settings.dropout) if settings.dropout else nn.Identity()
        self.in_features, self.out_features = base.in_features, base.out_features

    def _a(self) -> Tensor:
        """Every slice's A stacked, (slices x r, in): one product projects the input for all of them."""
        return torch.cat(list(self.lora_A)) if len(self.lora_A) > 1 else self.lora_A[0]

    def _b(self) -> Tensor:
        """Every slice's B placed block-diagonally in (out, slices x r): slice i's rows read only its
        own r columns, and rows of no slice are zero."""
        r, n = self.settings.r, len(self.lora_B)
        blocks, at = [], 0
        kind = dict(dtype=self.lora_B[0].dtype, device=self.lora_B[0].device)
        for slot, ((start, stop), b) in enumerate(zip(self.rows, self.lora_B)):
            if start > at:
                blocks.append(torch.zeros(start - at, n * r, **kind))
            blocks.append(torch.cat([torch.zeros(stop - start, slot * r, **kind), b, torch.zeros(stop - start, (n - 1 - slot) * r, **kind)], dim=1)
                          if n > 1 else b)
            at = stop
        if at < self.out_features:
            blocks.append(torch.zeros(self.out_features - at, n * r, **kind))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def forward(self, x: Tensor) -> Tensor:
        # Scaled at rank r, where it costs nothing, and added to the base's output by one fused
        # product: no per-slice in-place writes for autograd to copy around.
        y = self.base(x)
        low = F.linear(self.dropout(x).to(self.lora_A[0].dtype), self._a()) * self.scaling
        out = torch.addmm(y.reshape(-1, y.shape[-1]), low.reshape(-1, low.shape[-1]).to(y.dtype), self._b().t().to(y.dtype))
        return out.view(y.shape)

    def delta(self) -> Tensor:
        """The weight change this adapter makes, (out, in), zero in rows it does not adapt."""
        return (self._b() @ self._a()) * self.scaling


class TokenRows(nn.Module):
    """A frozen embedding or LM head whose rows for a few token ids train: a parameter holds those
    rows' values (initially the base's) and replaces them, as PEFT's trainable tokens do. A head
    tied to a `TokenRows` embedding reads the embedding's rows."""

    def __init__(self, base: nn.Module, hf_name: str, ids: tuple[int, ...], tied: TokenRows | None = None) -> None:
        super().__init__()
        self.base, self.hf_name, self.token_ids = base, hf_name, ids
        self.is_head = not isinstance(base, nn.Embedding)
        self._tied = [tied] if tied else []  # in a list, so the shared parameter is the embedding's alone
        device = base.weight.device
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=device), persistent=False)
        slot = torch.full((base.weight.shape[0],), -1, dtype=torch.long, device=device)
        slot[self.ids] = torch.arange(len(ids), device=device)
        self.register_buffer("slot", slot, persistent=False)  # token id -> its row in `rows`, or -1
        if tied is None:
            self.values = nn.Parameter(base.weight.detach()[self.ids].float())  # float32, as the adapters

    @property
    def rows(self) -> Tensor:
        return self._tied[0].values if self._tied else self.values

    @property
    def weight(self) -> Tensor:
        return self.base.weight  # what the model reads for the dtype and device

    def forward(self, x: Tensor) -> Tensor:
        if self.is_head:
            y = self.base(x)
            return y.index_copy(-1, self.ids, (x @ self.rows.t().to(x.dtype)).to(y.dtype))
        slot = self.slot[x]
        return torch.where((slot >= 0)[..., None], self.rows[slot.clamp(min=0)].to(self.base.weight.dtype), self.base(x))


def _matches(hf_name: str, target: str) -> bool:
    return hf_name == target or hf_name.endswith("." + target)


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze `model` and give it LoRA adapters on every module `settings.targets` names; returns it."""
    if adapters(model):
        raise YunqueError("This model already has LoRA adapters; merge them (yunque merge) before adding others.")
    linear = {name: m.out_features for name, m in model.named_modules() if name.startswith("blocks.") and hasattr(m, "in_features")}
    sites = linear_sites(model.config, linear)
    unknown = [t for t in settings.targets if not any(_matches(s.hf_name, t) for s in sites)]
    if unknown:
        names = sorted({s.hf_name.rsplit(".", 1)[-1] for s in sites})
        raise YunqueError(f"No module of this {family_of(model.config)} model is called {', '.join(unknown)}; LoRA targets here are {', '.join(names)}.")
    for p in model.parameters():
        p.requires_grad_(False)
    chosen: dict[str, list[tuple[str, int, int]]] = {}
    for s in sites:
        if any(_matches(s.hf_name, t) for t in settings.targets):
            chosen.setdefault(s.module, []).append((s.hf_name, s.start, s.stop))
    for module, slices in chosen.items():
        parent, _, child = module.rpartition(".")
        holder = model.get_submodule(parent)
        setattr(holder, child, LoraLinear(getattr(holder, child), slices, settings))
    _add_token_rows(model, settings.tokens)
    return model


def _add_token_rows(model: nn.Module, tokens: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
    """Wrap the embedding and LM head named in `tokens` as `TokenRows` (a tied head follows the embedding)."""
    config = model.config
    names = {module: hf_module_name(config, module) for module in ("tok_emb", "lm_head")}
    wrapped: dict[str, TokenRows] = {}
    for key, ids in tokens:
        module = "tok_emb" if key == "" else next((m for m, hf in names.items() if _matches(hf, key)), None)
        if module is None:
            raise YunqueError(f"Trainable token rows go in {' or '.join(n.rsplit('.', 1)[-1] for n in names.values())}, not {key}.")
        outside = [i for i in ids if not 0 <= i < config.vocab_size]
        if outside or not ids:
            raise YunqueError(f"Trainable token ids must lie in this model's vocabulary of {config.vocab_size}; got {list(ids)[:8]}.")
        if config.tie_embeddings and module == "lm_head":
            raise YunqueError("This model's LM head is its embedding; name trainable token rows for the embedding only.")
        wrapped[module] = TokenRows(getattr(model, module), names[module], tuple(ids))
    for module, rows in wrapped.items():
        setattr(model, module, rows)
    if config.tie_embeddings and "tok_emb" in wrapped:
        model.lm_head = TokenRows(model.lm_head, names["lm_head"], wrapped["tok_emb"].token_ids, tied=wrapped["tok_emb"])


def adapters(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def token_rows(model: nn.Module) -> list[TokenRows]:
    """The modules whose token rows train, each once (not a tied head)."""
    return [m for m in model.modules() if isinstance(m, TokenRows) and not m._tied]


def _token_rows_name(hf_name: str) -> str:
    return f"base_model.model.{hf_name}.token_adapter.trainable_tokens_delta"


def _peft_name(hf_name: str, part: str) -> str:
    return f"base_model.model.{hf_name}.{part}.weight"


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors under PEFT's names."""
    state = {}
    for m in adapters(model):
        for name, a, b in zip(m.hf_names, m.lora_A, m.lora_B):
            state[_peft_name(name, "lora_A")] = a.detach().contiguous()
            state[_peft_name(name, "lora_B")] = b.detach().contiguous()
    for m in token_rows(model):
        state[_token_rows_name(m.hf_name)] = m.values.detach().contiguous()
    return state


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write `model`'s adapters as a PEFT adapter directory (atomically); returns its path."""
    if not adapters(model):
        raise YunqueError("This model has no LoRA adapters to save.")
    with atomic_dir(path, overwrite=True) as tmp:
        write_adapter_files(model, tmp)
    return Path(path)


def write_adapter_files(model: nn.Module, directory: Path) -> None:
    """PEFT's two files for `model`'s adapters, into an existing directory (a checkpoint's, say)."""
    s = adapters(model)[0].settings
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": s.base_model,
        "r": s.r, "lora_alpha": s.alpha, "lora_dropout": s.dropout, "target_modules": sorted(s.targets),
        "bias": "none", "fan_in_fan_out": family_of(model.config) == "gpt2",  # GPT-2 stores Conv1D weights (in, out)
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "trainable_token_indices": _token_config(model),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state(model), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def _token_config(model: nn.Module) -> list[int] | dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices`: a list for the input embedding alone, else module -> ids."""
    rows = token_rows(model)
    if len(rows) == 1 and not rows[0].is_head:
        return list(rows[0].token_ids)
    return {m.hf_name.rsplit(".", 1)[-1]: list(m.token_ids) for m in rows} or None


def _tokens_from_config(value: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not value:
        return ()
    if isinstance(value, dict):
        return tuple((str(k), tuple(int(i) for i in v)) for k, v in value.items())
    return (("", tuple(int(i) for i in value)),)


def read_settings(path: str | Path) -> LoraSettings:
    """The LoRA settings of a PEFT adapter directory, refusing what yunque's adapters cannot express."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise YunqueError(f"{path} is not a LoRA adapter directory: it has no {CONFIG_FILE}.")
    config = read_json(path / CONFIG_FILE)
    if config.get("peft_type") != "LORA":
        raise YunqueError(f"{path} holds a {config.get('peft_type')} adapter; only LoRA adapters are supported.")
    unsupported = [k for k in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        unsupported.append("target_modules as a regular expression")
    if unsupported:
        raise YunqueError(f"The adapter in {path} uses {', '.join(unsupported)}, which yunque's LoRA does not support.")
    return LoraSettings(int(config["r"]), float(config["lora_alpha"]), float(config.get("lora_dropout", 0.0)), tuple(targets),
                        str(config.get("base_model_name_or_path") or ""), _tokens_from_config(config.get("trainable_token_indices")))


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Give `model` the adapters of a PEFT adapter directory; an adapter made for another base
    (other shapes or module names) is refused, saying which tensor differs."""
    add_lora(model, read_settings(path))
    return copy_adapter_weights(model, path)


def _verify(path: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    """Refuse an adapter whose tensors are not exactly those this model's adapters need."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise YunqueError(f"The adapter in {path} was made for another base model: it {'lacks ' + missing[0] if missing else 'has ' + extra[0]} among {len(expected)} tensors this model expects.")
    for name, want in expected.items():
        if found[name] != want:
            raise YunqueError(f"The adapter in {path} was made for another base model: {name} is {found[name]}, this model needs {want}.")


def _adapter_file(path: Path) -> Path:
    if not (path / WEIGHTS_FILE).is_file():
        raise YunqueError(f"{path} has no {WEIGHTS_FILE}; pickled adapters (adapter_model.bin) are not loaded.")
    return path / WEIGHTS_FILE


def _peft_key(name: str) -> str:
    return name.replace(".default.", ".")  # some PEFT versions keep the adapter's name in the key


def copy_adapter_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Copy the tensors of the adapter directory `path` into `model`'s adapters (same settings)."""
    path = Path(path)
    try:
        tensors = {_peft_key(k): v for k, v in load_file(str(_adapter_file(path))).items()}
    except (SafetensorError, OSError) as e:
        raise YunqueError(f"{path / WEIGHTS_FILE} is not a readable safetensors file ({e}).") from None
    _verify(path, {k: tuple(v.shape) for k, v in adapter_state(model).items()}, {k: tuple(v.shape) for k, v in tensors.items()})
    with torch.no_grad():
        for m in adapters(model):
            for name, a, b in zip(m.hf_names, m.lora_A, m.lora_B):
                a.copy_(tensors[_peft_name(name, "lora_A")])
                b.copy_(tensors[_peft_name(name, "lora_B")])
        for m in token_rows(model):
            m.values.copy_(tensors[_token_rows_name(m.hf_name)])
    return model


def check_adapter(model_dir: str | Path, adapter: str | Path) -> LoraSettings:
    """Refuse an adapter that cannot apply to the model in `model_dir`, reading only config.json and
    the adapter's headers (the model is built on the meta device); returns its settings."""
    from safetensors import safe_open

    from yunque.model.hfdir import read_config
    from yunque.model.hf import config_from_hf
    from yunque.model.transformer import Transformer

    adapter = Path(adapter)
    settings = read_settings(adapter)
    with torch.device("meta"):
        model = add_lora(Transformer(config_from_hf(read_config(model_dir))), settings)
    try:
        with safe_open(str(_adapter_file(adapter)), framework="pt") as f:
            found = {_peft_key(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise YunqueError(f"{adapter / WEIGHTS_FILE} is not a readable safetensors file ({e}).") from None
    _verify(adapter, {k: tuple(v.shape) for k, v in adapter_state(model).items()}, found)
    return settings


def apply_entry_adapter(model: nn.Module, model_dir: str | Path) -> nn.Module:
    """Merge the adapter a store entry carries (`ADAPTER_DIR`), if it has one, into `model`."""
    adapter = Path(model_dir) / ADAPTER_DIR
    return merge_lora(load_adapter(model, adapter)) if (adapter / CONFIG_FILE).is_file() else model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and drop it: a plain model with the adapted outputs."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]:
        if not isinstance(getattr(m.base, "weight", None), Tensor):
            raise YunqueError("An adapter on int8 weights cannot be merged; merge it into the float base model instead.")
        with torch.no_grad():
            m.base.weight += m.delta().to(m.base.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, m.base)
    with torch.no_grad():
        for m in token_rows(model):  # a tied head's weight is the embedding's: written once
            m.base.weight.index_copy_(0, m.ids, m.values.to(m.base.weight.dtype))
    for name in ("tok_emb", "lm_head"):
        if isinstance(getattr(model, name), TokenRows):
            setattr(model, name, getattr(model, name).base)
    return model


_STORED = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_NOT_CARRIED = {"config.json", "generation_config.json", "model.safetensors.index.json", "modelfile.json"}


def merge_to_directory(base: str | Path, adapter: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write base + adapter as a plain model directory `out` (atomically): the merged weights in the
    base's stored dtype, and the base's other files (tokenizer, chat template) as they are."""
    import shutil

    from yunque.model.device import stored_dtype
    from yunque.model.hfdir import weight_files
    from yunque.model.transformer import Transformer

    base, out = Path(base), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise YunqueError(f"{out} is not an empty directory; pass --force to replace it or choose another.")
    weights = {p.name for p in weight_files(base)}
    model = merge_lora(load_adapter(Transformer.from_pretrained(base), adapter))
    with atomic_dir(out, overwrite=True) as tmp:
        for f in base.iterdir():
            if f.is_file() and f.name not in weights and f.name not in _NOT_CARRIED and f.suffix != ".safetensors":
                shutil.copy2(f, tmp / f.name)
        model.save_pretrained(tmp, dtype=_STORED.get(stored_dtype(base) or "F32", torch.float32))
    return out
