"""Model configuration: one dataclass covers GPT-2, Llama, Mistral, Qwen2 and Mixtral.

Also the typed-dataclass helpers (`DictConfig`, `check_types`) that `TrainConfig` shares.

Families differ only in the values of these fields (principle 1 of DESIGN.md): learned
positions vs RoPE, LayerNorm vs RMSNorm, GELU MLP vs SwiGLU, dense vs mixture of
experts, which linear layers carry a bias, tied embeddings, a sliding window.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from yunque.errors import YunqueError

Positions = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu"]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(v) for v in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in get_args(annotation))
    if origin is not None:
        return origin.__name__
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(whether `value` fits `annotation`, the value to keep: an int given for a float becomes a float)."""
    origin = get_origin(annotation)
    if annotation is Any:
        return True, value
    if annotation is type(None):
        return value is None, value
    if origin is Literal:
        return any(value == v and type(value) is type(v) for v in get_args(annotation)), value
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            ok, kept = _coerce(value, option)
            if ok:
                return True, kept
        return False, value
    if origin is not None:
        return isinstance(value, origin), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        return fits, float(value) if fits else value
    return isinstance(value, annotation), value


def check_types(config: Any, what: str) -> None:
    """Check every field of dataclass `config` against its annotation, raising a YunqueError that
    names the field, the value and the expected type; ints given for float fields become floats."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        check_value(f.name, getattr(config, f.name), hints[f.name], what)
        setattr(config, f.name, _coerce(getattr(config, f.name), hints[f.name])[1])


def check_value(name: str, value: Any, annotation: Any, what: str) -> None:
    """Raise a YunqueError unless `value` fits the annotation of field `name` (see `check_types`)."""
    if not _coerce(value, annotation)[0]:
        raise YunqueError(f"Invalid {what}: {name} must be {_type_name(annotation)}, got {value!r}.")


class DictConfig:
    """to_dict / from_dict for the config dataclasses; `_what` names the config in errors."""

    _what = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise YunqueError(f"Unknown {cls._what} field(s): {', '.join(unknown)}; known fields are {', '.join(sorted(names))}.")
        return cls(**d)


@dataclass
class ModelConfig(DictConfig):
    """Shape and flavour of a decoder-only Transformer."""

    _what = "model config"  # a plain class attribute, not a field

    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention; None means n_head (plain MHA)
    d_model: int = 768
    d_ff: int | None = None  # MLP hidden width; None means 4 * d_model
    head_dim: int | None = None  # None means d_model // n_head
    max_seq_len: int = 1024
    positions: Positions = "learned"
    rope_theta: float = 10000.0
    # Llama-3 style frequency scaling, as in HF: {"rope_type": "llama3", "factor": 8.0,
    # "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    rope_scaling: dict[str, Any] | None = None
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    mlp: Mlp = "gelu"
    n_experts: int = 0  # 0 means a dense MLP; > 1 means a sparse mixture of experts
    n_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.01
    qkv_bias: bool = True  # GPT-2 and Qwen2 have q/k/v biases; Llama does not
    attn_out_bias: bool = True  # GPT-2 only
    mlp_bias: bool = True  # GPT-2 only
    norm_bias: bool = True  # LayerNorm with a bias (GPT-2); RMSNorm never has one
    tie_embeddings: bool = True
    sliding_window: int | None = None  # Mistral: attend to at most this many past tokens
    dropout: float = 0.0
    init_std: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        check_types(self, "model config")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head <= 0 or self.d_model % self.n_head:
                raise YunqueError(f"Invalid model config: n_head ({self.n_head}) must divide d_model ({self.d_model}), or set head_dim.")
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        """Reject wrong types and inconsistent shapes with a sentence that names the fields involved."""
        check_types(self, "model config")

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise YunqueError(f"Invalid model config: {msg}.")

        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.d_ff > 0, f"d_ff must be positive, got {self.d_ff}")
        need(self.head_dim > 0, f"head_dim must be positive, got {self.head_dim}")
        need(
            self.n_kv_head > 0 and self.n_head % self.n_kv_head == 0,
            f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})",
        )
        need(self.positions in ("learned", "rope"), f"positions must be 'learned' or 'rope', got {self.positions!r}")
        need(self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        need(self.mlp in ("gelu", "swiglu"), f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        need(self.positions != "rope" or self.head_dim % 2 == 0, f"RoPE needs an even head_dim, got {self.head_dim}")
        need(self.n_experts == 0 or self.n_experts > 1, f"n_experts must be 0 (dense) or at least 2, got {self.n_experts}")
        need(
            self.n_experts == 0 or 1 <= self.n_experts_per_tok <= self.n_experts,
            f"n_experts_per_tok ({self.n_experts_per_tok}) must be between 1 and n_experts ({self.n_experts})",
        )
        need(self.sliding_window is None or self.sliding_window > 0, "sliding_window must be positive or None")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Family presets. Each is a plain dict of field values: a family is data, not code.
GPT2 = dict(positions="learned", norm="layernorm", mlp="gelu", qkv_bias=True, attn_out_bias=True, mlp_bias=True, norm_bias=True, tie_embeddings=True, norm_eps=1e-5)
LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False, norm_bias=False, tie_embeddings=False, norm_eps=1e-5)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 small (124M) and medium (350M), as OpenAI released them.
    "gpt2": dict(GPT2, vocab_size=50257, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    "gpt2-medium": dict(GPT2, vocab_size=50257, n_layer=24, n_head=16, d_model=1024, max_seq_len=1024),
    # Small Llama-style and Mixtral-style models that train on a laptop.
    "llama-tiny": dict(LLAMA, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1024, max_seq_len=512),
    "mistral-tiny": dict(LLAMA, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1024, max_seq_len=512, sliding_window=256),
    "qwen2-tiny": dict(LLAMA, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1024, max_seq_len=512, qkv_bias=True, tie_embeddings=True),
    "mixtral-tiny": dict(LLAMA, vocab_size=8192, n_layer=4, n_head=6, n_kv_head=2, d_model=384, d_ff=768, max_seq_len=512, n_experts=4, n_experts_per_tok=2),
    # CPU presets for quick training runs (vocab_size is replaced by the tokenizer's).
    "cpu-tiny": dict(LLAMA, vocab_size=4096, n_layer=4, n_head=4, n_kv_head=4, d_model=128, d_ff=384, max_seq_len=256, tie_embeddings=True),
    "cpu-small": dict(LLAMA, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=6, d_model=384, d_ff=1024, max_seq_len=256, tie_embeddings=True),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, with any field overridden."""
    if name not in PRESETS:
        raise YunqueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return ModelConfig(**{**PRESETS[name], **overrides})
