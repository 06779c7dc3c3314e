"""The one table of sampling-option names: how each Ollama option (Modelfile `PARAMETER`, API
`options`) is checked, which `SamplingParams` field it sets, and what Hugging Face's
generation_config.json and OpenAI's request body call it. Torch-free, so the store can use it.

Options with no `SamplingParams` field (num_predict, num_ctx, stop) set the length, the context
and the stop strings, which the server works out from the prompt; repeat_last_n is accepted for
Ollama's sake, and the repetition penalty looks at the whole context (its -1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


def _number(kind: type, lo: float | None = None, hi: float | None = None) -> Callable[[Any], Any]:
    """A converter that parses `kind` (int or float) and checks an inclusive range."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        out = kind(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(out):
            raise ValueError("must be a finite number")
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"must be {bounds}")
        return out

    return convert


def _stop(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) and v for v in values):
        raise ValueError("stop strings must be non-empty text")
    return values


# Ranges that keep a value meaningful in float32, where sampling runs (SamplingParams checks
# the same): a temperature or repetition penalty of 1e-300 is 0 there and divides into infinities.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
MIN_PENALTY = 1e-2


def _temperature(value: Any) -> float:
    out = _number(float, 0.0, MAX_TEMPERATURE)(value)
    if 0 < out < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    return out


@dataclass(frozen=True)
class Option:
    """One sampling option under its Ollama name."""

    name: str  # Ollama's name (Modelfile PARAMETER, API options)
    convert: Callable[[Any], Any]  # checks a value and returns it typed; raises ValueError
    field: str | None = None  # the SamplingParams field it sets
    hf: str | None = None  # its generation_config.json key
    openai: str | None = None  # its OpenAI request field


OPTIONS: tuple[Option, ...] = (
    Option("temperature", _temperature, field="temperature", hf="temperature", openai="temperature"),
    Option("top_k", _number(int, 0), field="top_k", hf="top_k"),
    Option("top_p", _number(float, 0.0, 1.0), field="top_p", hf="top_p", openai="top_p"),
    Option("min_p", _number(float, 0.0, 1.0), field="min_p", hf="min_p"),
    Option("num_predict", _number(int, -2), openai="max_tokens"),  # -1 until a stop, -2 until the context is full (as Ollama)
    Option("num_ctx", _number(int, 1)),
    Option("seed", _number(int), field="seed", openai="seed"),
    Option("stop", _stop, openai="stop"),
    Option("repeat_penalty", _number(float, MIN_PENALTY, 1 / MIN_PENALTY), field="repetition_penalty", hf="repetition_penalty"),
    Option("repeat_last_n", _number(int, -1)),  # -1 means the whole context, 0 disables
    Option("presence_penalty", _number(float), field="presence_penalty", openai="presence_penalty"),
    Option("frequency_penalty", _number(float), field="frequency_penalty", openai="frequency_penalty"),
)
PARAMETERS: dict[str, Option] = {o.name: o for o in OPTIONS}


def check_parameter(name: str, value: Any) -> Any:
    """Return `value` converted to the type of parameter `name`; raise ValueError if it is unknown or bad."""
    key = name.lower()
    if key not in PARAMETERS:
        raise ValueError(f"unknown parameter {name!r}; known parameters are {', '.join(PARAMETERS)}")
    try:
        return PARAMETERS[key].convert(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad value {value!r} for parameter {key} ({e})") from None


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams keyword arguments that Ollama-named `options` set."""
    return {PARAMETERS[name].field: value for name, value in options.items() if name in PARAMETERS and PARAMETERS[name].field}


def from_generation_config(generation: dict[str, Any]) -> dict[str, Any]:
    """Ollama-named options from a generation_config.json's sampling defaults (unchecked)."""
    return {o.name: generation[o.hf] for o in OPTIONS if o.hf and generation.get(o.hf) is not None}


def from_openai(body: Any) -> dict[str, Any]:
    """SamplingParams keyword arguments from an OpenAI request's sampling fields that are set."""
    return {o.field: getattr(body, o.openai) for o in OPTIONS if o.field and o.openai and getattr(body, o.openai, None) is not None}
