"""Hugging Face checkpoints in and out: config.json + safetensors for every supported family.

Everything family-specific is data in this file:
- `FAMILIES[model_type]`: how config.json fields map to `ModelConfig` and back, which
  fixed values the family implies, and the class name `transformers` instantiates;
- `TENSORS[layout]`: for each yunque parameter, the Hugging Face tensor(s) it comes
  from and the operation that joins them (GPT-2's Conv1D weights are transposed; q/k/v
  and gate/up projections are concatenated into yunque's fused ones; Mixtral experts
  are stacked).
Weights are read and written with `safetensors` only (no pickle), and yunque never
imports `transformers`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from yunque.model.config import ModelConfig
from yunque.errors import YunqueError
from yunque.fsutil import atomic_file, write_text_atomic
from yunque.model.hfdir import weight_files

# ----------------------------------------------------------------------------- tensors
# Operations that turn the HF tensors of one yunque parameter into it (load) and back (save).
# load(tensors) -> Tensor; save(tensor, config) -> list of tensors in the order of the sources.
_OPS: dict[str, tuple[Callable[[list[Tensor]], Tensor], Callable[[Tensor, ModelConfig], list[Tensor]]]] = {
    "copy": (lambda ts: ts[0], lambda t, c: [t]),
    "conv1d": (lambda ts: ts[0].t(), lambda t, c: [t.t()]),  # GPT-2 stores Linear weights as (in, out)
    "qkv": (lambda ts: torch.cat(ts), lambda t, c: list(t.split([c.n_head * c.head_dim] + [c.n_kv_head * c.head_dim] * 2))),
    "gate_up": (lambda ts: torch.cat(ts), lambda t, c: list(t.chunk(2))),
}

# yunque parameter pattern -> (HF tensor patterns, op). {i} is the layer, {e} the expert:
# a source with {e} is read for every expert and the results are stacked along a new dim 0.
_LLAMA_TENSORS: dict[str, tuple[list[str], str]] = {
    "tok_emb.weight": (["model.embed_tokens.weight"], "copy"),
    "blocks.{i}.norm1.weight": (["model.layers.{i}.input_layernorm.weight"], "copy"),
    "blocks.{i}.attn.qkv.weight": ([f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"], "qkv"),
    "blocks.{i}.attn.qkv.bias": ([f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"], "qkv"),
    "blocks.{i}.attn.out.weight": (["model.layers.{i}.self_attn.o_proj.weight"], "copy"),
    "blocks.{i}.attn.out.bias": (["model.layers.{i}.self_attn.o_proj.bias"], "copy"),
    "blocks.{i}.norm2.weight": (["model.layers.{i}.post_attention_layernorm.weight"], "copy"),
    "blocks.{i}.mlp.fc.weight": (["model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"], "gate_up"),
    "blocks.{i}.mlp.fc.bias": (["model.layers.{i}.mlp.gate_proj.bias", "model.layers.{i}.mlp.up_proj.bias"], "gate_up"),
    "blocks.{i}.mlp.proj.weight": (["model.layers.{i}.mlp.down_proj.weight"], "copy"),
    "blocks.{i}.mlp.proj.bias": (["model.layers.{i}.mlp.down_proj.bias"], "copy"),
    "blocks.{i}.mlp.router.weight": (["model.layers.{i}.block_sparse_moe.gate.weight"], "copy"),
    "blocks.{i}.mlp.w_in": (["model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight"], "gate_up"),
    "blocks.{i}.mlp.w_out": (["model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight"], "copy"),
    "norm_f.weight": (["model.norm.weight"], "copy"),
    "lm_head.weight": (["lm_head.weight"], "copy"),
}
_GPT2_TENSORS: dict[str, tuple[list[str], str]] = {
    "tok_emb.weight": (["transformer.wte.weight"], "copy"),
    "pos_emb.weight": (["transformer.wpe.weight"], "copy"),
    "blocks.{i}.norm1.weight": (["transformer.h.{i}.ln_1.weight"], "copy"),
    "blocks.{i}.norm1.bias": (["transformer.h.{i}.ln_1.bias"], "copy"),
    "blocks.{i}.attn.qkv.weight": (["transformer.h.{i}.attn.c_attn.weight"], "conv1d"),
    "blocks.{i}.attn.qkv.bias": (["transformer.h.{i}.attn.c_attn.bias"], "copy"),
    "blocks.{i}.attn.out.weight": (["transformer.h.{i}.attn.c_proj.weight"], "conv1d"),
    "blocks.{i}.attn.out.bias": (["transformer.h.{i}.attn.c_proj.bias"], "copy"),
    "blocks.{i}.norm2.weight": (["transformer.h.{i}.ln_2.weight"], "copy"),
    "blocks.{i}.norm2.bias": (["transformer.h.{i}.ln_2.bias"], "copy"),
    "blocks.{i}.mlp.fc.weight": (["transformer.h.{i}.mlp.c_fc.weight"], "conv1d"),
    "blocks.{i}.mlp.fc.bias": (["transformer.h.{i}.mlp.c_fc.bias"], "copy"),
    "blocks.{i}.mlp.proj.weight": (["transformer.h.{i}.mlp.c_proj.weight"], "conv1d"),
    "blocks.{i}.mlp.proj.bias": (["transformer.h.{i}.mlp.c_proj.bias"], "copy"),
    "norm_f.weight": (["transformer.ln_f.weight"], "copy"),
    "norm_f.bias": (["transformer.ln_f.bias"], "copy"),
    "lm_head.weight": (["lm_head.weight"], "copy"),
}

# ----------------------------------------------------------------------------- configs


def _rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings as transformers 5 (`rope_parameters`) or 4 (`rope_theta`, `rope_scaling`) writes them."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    return dict(rope_theta=float(theta), rope_scaling=None if kind == "default" else {"rope_type": kind, **{k: v for k, v in params.items() if k not in ("type", "rope_type")}})


def _rope_to_hf(c: ModelConfig) -> dict[str, Any]:
    # Both spellings: transformers 5 reads rope_parameters, transformers 4 rope_theta/rope_scaling.
    scaling = c.rope_scaling or {"rope_type": "default"}
    out: dict[str, Any] = dict(rope_theta=c.rope_theta, rope_parameters={**scaling, "rope_theta": c.rope_theta})
    if c.rope_scaling:
        out["rope_scaling"] = dict(c.rope_scaling)
    return out


def _window_from_qwen2(hf: dict[str, Any]) -> dict[str, Any]:
    if not hf.get("use_sliding_window"):
        return dict(sliding_window=None)
    if hf.get("max_window_layers", 0) > 0:
        raise YunqueError("This Qwen2 checkpoint uses a sliding window on only some layers, which yunque does not support; use a checkpoint with use_sliding_window false.")
    return dict(sliding_window=hf["sliding_window"])


@dataclass(frozen=True)
class Family:
    """One Hugging Face model_type: field names, implied values, and how to recognise it from a ModelConfig."""

    architecture: str
    tensors: dict[str, tuple[list[str], str]]
    fields: dict[str, str]  # ModelConfig field -> config.json key
    fixed: dict[str, Any]  # ModelConfig values the family implies
    defaults: dict[str, Any]  # config.json values when a key is absent (the transformers class defaults)
    extra_in: Callable[[dict[str, Any]], dict[str, Any]]  # family-specific config.json -> ModelConfig fields
    extra_out: Callable[[ModelConfig], dict[str, Any]]  # ModelConfig -> family-specific config.json keys
    matches: Callable[[ModelConfig], bool]  # can this family express the config exactly?
    prefix: str  # base-model prefix that some checkpoints (GPT-2's own) leave out
    ignored: tuple[str, ...] = ()  # checkpoint tensors that are not weights (regexes)
    # config.json keys whose value yunque's model must match (the first allowed value is the default)
    required: dict[str, tuple[Any, ...]] = field(default_factory=lambda: {"hidden_act": ("silu",)})


_LLAMA_FIELDS = dict(
    vocab_size="vocab_size", n_layer="num_hidden_layers", n_head="num_attention_heads", n_kv_head="num_key_value_heads",
    d_model="hidden_size", d_ff="intermediate_size", head_dim="head_dim", max_seq_len="max_position_embeddings",
    norm_eps="rms_norm_eps", tie_embeddings="tie_word_embeddings", bos_token_id="bos_token_id", eos_token_id="eos_token_id",
    init_std="initializer_range",
)
_ROPE_FIXED = dict(positions="rope", norm="rmsnorm", mlp="swiglu", norm_bias=False)
_DENSE = dict(_ROPE_FIXED, n_experts=0)
_NO_BIAS = dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False)


def _rope_family(c: ModelConfig, **values: Any) -> bool:
    return all(getattr(c, k) == v for k, v in {**_ROPE_FIXED, **values}.items())


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        architecture="GPT2LMHeadModel",
        tensors=_GPT2_TENSORS,
        fields=dict(vocab_size="vocab_size", n_layer="n_layer", n_head="n_head", d_model="n_embd", d_ff="n_inner",
                    max_seq_len="n_positions", norm_eps="layer_norm_epsilon", tie_embeddings="tie_word_embeddings",
                    bos_token_id="bos_token_id", eos_token_id="eos_token_id", init_std="initializer_range"),
        fixed=dict(positions="learned", norm="layernorm", mlp="gelu", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
                   norm_bias=True, n_experts=0, sliding_window=None),
        defaults=dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, n_positions=1024, layer_norm_epsilon=1e-5, tie_word_embeddings=True),
        extra_in=lambda hf: {},
        extra_out=lambda c: dict(activation_function="gelu_new", resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                                 scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False),
        matches=lambda c: all(getattr(c, k) == v for k, v in FAMILIES["gpt2"].fixed.items())
        and c.n_kv_head == c.n_head and c.head_dim * c.n_head == c.d_model,
        prefix="transformer.",
        ignored=(r"\.attn\.bias$", r"\.attn\.masked_bias$"),  # causal-mask buffers in old GPT-2 checkpoints
        required={"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "scale_attn_weights": (True,),
                  "scale_attn_by_inverse_layer_idx": (False,)},
    ),
    "mixtral": Family(
        architecture="MixtralForCausalLM",
        tensors=_LLAMA_TENSORS,
        fields=dict(_LLAMA_FIELDS, n_experts="num_local_experts", n_experts_per_tok="num_experts_per_tok",
                    router_aux_loss_coef="router_aux_loss_coef", sliding_window="sliding_window"),
        fixed=dict(_ROPE_FIXED, **_NO_BIAS),
        defaults=dict(num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.001, tie_word_embeddings=False, rms_norm_eps=1e-5),
        extra_in=_rope_from_hf,
        extra_out=lambda c: dict(_rope_to_hf(c), hidden_act="silu", attention_dropout=c.dropout),
        matches=lambda c: c.is_moe and _rope_family(c, **_NO_BIAS),
        prefix="model.",
    ),
    "qwen2": Family(
        architecture="Qwen2ForCausalLM",
        tensors=_LLAMA_TENSORS,
        fields=dict(_LLAMA_FIELDS),
        fixed=dict(_DENSE, qkv_bias=True, attn_out_bias=False, mlp_bias=False),
        defaults=dict(tie_word_embeddings=False, rms_norm_eps=1e-6),
        extra_in=lambda hf: dict(_rope_from_hf(hf), **_window_from_qwen2(hf)),
        extra_out=lambda c: dict(_rope_to_hf(c), hidden_act="silu", attention_dropout=c.dropout, use_sliding_window=c.sliding_window is not None,
                                 sliding_window=c.sliding_window, max_window_layers=0),
        matches=lambda c: _rope_family(c, n_experts=0, qkv_bias=True, attn_out_bias=False, mlp_bias=False),
        prefix="model.",
    ),
    "mistral": Family(
        architecture="MistralForCausalLM",
        tensors=_LLAMA_TENSORS,
        fields=dict(_LLAMA_FIELDS, sliding_window="sliding_window"),
        fixed=dict(_DENSE, **_NO_BIAS),
        defaults=dict(tie_word_embeddings=False, rms_norm_eps=1e-6),
        extra_in=_rope_from_hf,
        extra_out=lambda c: dict(_rope_to_hf(c), hidden_act="silu", attention_dropout=c.dropout),
        matches=lambda c: c.sliding_window is not None and _rope_family(c, n_experts=0, **_NO_BIAS),
        prefix="model.",
    ),
    "llama": Family(
        architecture="LlamaForCausalLM",
        tensors=_LLAMA_TENSORS,
        fields=dict(_LLAMA_FIELDS, mlp_bias="mlp_bias"),
        fixed=dict(_DENSE, sliding_window=None),
        defaults=dict(tie_word_embeddings=False, rms_norm_eps=1e-6, mlp_bias=False, attention_bias=False),
        extra_in=lambda hf: dict(_rope_from_hf(hf), qkv_bias=bool(hf.get("attention_bias", False)), attn_out_bias=bool(hf.get("attention_bias", False))),
        extra_out=lambda c: dict(_rope_to_hf(c), hidden_act="silu", attention_bias=c.qkv_bias, attention_dropout=c.dropout),
        matches=lambda c: c.sliding_window is None and c.qkv_bias == c.attn_out_bias and _rope_family(c, n_experts=0),
        prefix="model.",
    ),
}
SUPPORTED = ", ".join(sorted(FAMILIES))


def family_of(config: ModelConfig) -> str:
    """The Hugging Face model_type that expresses `config` exactly (checked in FAMILIES order)."""
    for name, fam in FAMILIES.items():
        if fam.matches(config):
            return name
    raise YunqueError(
        f"This model's combination of positions={config.positions}, norm={config.norm}, mlp={config.mlp}, biases and window "
        f"matches no Hugging Face family ({SUPPORTED}); use a family preset to export it."
    )


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from the contents of a Hugging Face config.json."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise YunqueError(f"Unsupported model_type {model_type!r}; yunque loads {SUPPORTED}.")
    fam = FAMILIES[model_type]
    for key, allowed in fam.required.items():
        if hf.get(key, allowed[0]) not in allowed:
            supported = " or ".join(repr(a) for a in allowed)
            raise YunqueError(f"This {model_type} checkpoint has {key}={hf[key]!r}, which yunque does not support (it needs {supported}).")
    values = {field: hf.get(key, fam.defaults.get(key)) for field, key in fam.fields.items()}
    values = {k: v for k, v in values.items() if v is not None or k in ("sliding_window", "bos_token_id", "eos_token_id")}
    values.update(fam.fixed)
    values.update(fam.extra_in(hf))
    if isinstance(values.get("eos_token_id"), list):  # Llama 3 lists several; keep the first as the default stop
        values["eos_token_id"] = values["eos_token_id"][0]
    return ModelConfig(**values)


def config_to_hf(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json transformers needs to rebuild `config` (model_type, architectures, every shape field)."""
    name = family_of(config)
    fam = FAMILIES[name]
    out: dict[str, Any] = {"architectures": [fam.architecture], "model_type": name}
    out.update({key: getattr(config, field) for field, key in fam.fields.items()})
    out.update(fam.extra_out(config))
    out.update(use_cache=True, dtype=str(dtype).removeprefix("torch."),
               torch_dtype=str(dtype).removeprefix("torch."))
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- reading


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise YunqueError(f"Weights file {file} is corrupt or truncated ({e}); re-download or re-export it.") from None


def read_tensors(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for file in files:
        with _open(file) as f:
            for name in f.keys():
                try:
                    t = f.get_tensor(name)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise YunqueError(f"Weights file {file} is corrupt or truncated at tensor {name} ({e}); re-download or re-export it.") from None
                tensors[name] = t if dtype is None else t.to(dtype)
    return tensors


def _plan(model_names: list[str], config: ModelConfig, fam: Family) -> dict[str, tuple[list[list[str]], str, bool]]:
    """For each yunque parameter: groups of HF names (one group, or one per expert), the op, and whether groups stack."""
    rules = [(re.compile("^" + re.escape(p).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), srcs, op) for p, (srcs, op) in fam.tensors.items()]
    plan = {}
    for name in model_names:
        for rx, srcs, op in rules:
            m = rx.match(name)
            if m:
                i = int(m.group("i")) if "i" in rx.groupindex else 0
                stacked = any("{e}" in s for s in srcs)
                experts = range(config.n_experts) if stacked else [0]
                plan[name] = ([[s.format(i=i, e=e) for s in srcs] for e in experts], op, stacked)
                break
        else:
            raise AssertionError(f"no Hugging Face name for parameter {name}")  # a bug in the table, not user input
    return plan


@dataclass(frozen=True)
class LinearSite:
    """One Hugging Face linear module inside a yunque product: rows [start, stop) of the weight of
    yunque module `module` are HF module `hf_name`'s (q_proj is the first rows of fused qkv)."""

    module: str
    hf_name: str
    start: int
    stop: int


def linear_sites(config: ModelConfig, modules: dict[str, int]) -> list[LinearSite]:
    """Where each HF linear module of the family lies in yunque's linear `modules` (name such as
    `blocks.0.attn.qkv` -> its output features), following the same table as loading and saving."""
    fam = FAMILIES[family_of(config)]
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    sites = []
    for name, (groups, op, stacked) in _plan([m + ".weight" for m in modules], config, fam).items():
        if stacked:
            continue  # experts are stacked tensors, not linear modules
        module = name.removesuffix(".weight")
        sizes = {"qkv": [q, kv, kv], "gate_up": [modules[module] // 2] * 2}.get(op, [modules[module]])
        start = 0
        for hf, size in zip(groups[0], sizes):
            sites.append(LinearSite(module, hf.removesuffix(".weight"), start, start + size))
            start += size
    return sites


def hf_module_name(config: ModelConfig, module: str) -> str:
    """The Hugging Face name of a yunque module stored as one tensor (tok_emb -> model.embed_tokens)."""
    name = module + ".weight"
    groups, _, _ = _plan([name], config, FAMILIES[family_of(config)])[name]
    return groups[0][0].removesuffix(".weight")


def _names_list(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def load_weights_into(model, path: str | Path) -> None:
    """Copy the weights of the Hugging Face directory `path` into `model`'s parameters, in place.

    The tensors go through the family's name mapping; missing, misshapen and unexpected tensors
    are each one clear error, raised before any parameter changes.
    """
    config = model.config
    fam = FAMILIES[family_of(config)]
    tensors = read_tensors(weight_files(path))
    if not any(k.startswith(fam.prefix) for k in tensors):  # e.g. GPT-2's own checkpoint: "h.0..." not "transformer.h.0..."
        tensors = {(k if k.startswith("lm_head.") else fam.prefix + k): v for k, v in tensors.items()}
    params = dict(model.named_parameters())  # tied weights appear once (as tok_emb.weight)
    state, missing, wrong = {}, [], []
    for name, (groups, op, stacked) in _plan(list(params), config, fam).items():
        absent = [s for g in groups for s in g if s not in tensors]
        if absent:
            missing += absent
            continue
        load = _OPS[op][0]
        parts = [load([tensors.pop(s) for s in g]) for g in groups]
        value = torch.stack(parts) if stacked else parts[0]
        if value.shape != params[name].shape:
            wrong.append(f"{groups[0][0]} {tuple(value.shape)} (expected {tuple(params[name].shape)})")
            continue
        state[name] = value
    ignored = [k for k in tensors if any(re.search(p, k) for p in fam.ignored) or (config.tie_embeddings and k == "lm_head.weight")]
    extra = sorted(set(tensors) - set(ignored))
    if missing:
        raise YunqueError(f"Checkpoint {path} lacks tensor(s) {_names_list(missing)}; it does not match its config.json.")
    if wrong:
        raise YunqueError(f"Checkpoint {path} has tensor(s) of the wrong shape: {_names_list(wrong)}; it does not match its config.json.")
    if extra:
        raise YunqueError(f"Checkpoint {path} has unexpected tensor(s) {_names_list(extra)}; it does not match its config.json.")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# ----------------------------------------------------------------------------- writing


def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config.json, model.safetensors and generation_config.json into `path`, each atomically.

    Other files in the directory (a tokenizer, say) are kept; stale weight shards are removed.
    """
    config: ModelConfig = model.config
    name = family_of(config)
    fam = FAMILIES[name]
    params = dict(model.named_parameters())
    dtype = dtype or next(iter(params.values())).dtype
    tensors: dict[str, Tensor] = {}
    for pname, (groups, op, stacked) in _plan(list(params), config, fam).items():
        value = params[pname].detach().to(device="cpu", dtype=dtype)
        save = _OPS[op][1]
        for group, part in zip(groups, value.unbind(0) if stacked else [value]):
            for src, t in zip(group, save(part, config)):
                tensors[src] = t.contiguous().clone()  # own storage: safetensors refuses shared tensors
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_file(path / "model.safetensors") as f:
        f.write(safetensors_bytes(tensors, metadata={"format": "pt"}))
    for stale in [path / "model.safetensors.index.json", *path.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id") if getattr(config, k) is not None}
    write_text_atomic(path / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    write_text_atomic(path / "config.json", json.dumps(config_to_hf(config, dtype), indent=2) + "\n")
    return path
