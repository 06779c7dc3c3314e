"""From an API request to a generation the engine can run: both APIs parse their bodies and come
here for the prompt's token ids and `SamplingParams` (Ollama's option names and defaults, the
model's Modelfile parameters under them, OpenAI's defaults and max_tokens rule, the context
budget). yunque.server.answer runs the result and writes the answer.

`format: "json"` (Ollama) and `response_format: {"type": "json_object"}` (OpenAI) turn on the
engine's JSON constraint (`SamplingParams.json_object`): each step masks the tokens that would
break the grammar, and the answer ends when its object closes, so it parses (unless it runs
out of tokens first). It streams like any other answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yunque.errors import YunqueError
from yunque.infer.options import PARAMETERS, check_parameter, from_openai, sampling_fields
from yunque.infer.sampling import SamplingParams
from yunque.server.errors import APIError
from yunque.server.runner import Runner
from yunque.store.entries import chat_settings
from yunque.text.chat_template import ChatSettings
from yunque.text.gotemplate import looks_like_go

# Ollama's defaults for options neither the request nor the Modelfile sets.
OLLAMA_DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1, "num_predict": -1}
# OpenAI's defaults where they differ from SamplingParams' (which has no top-k, as OpenAI).
OPENAI_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
# More tokens than any context yunque can hold: a larger request is a mistake, not a wish.
MAX_PREDICT = 1 << 20


@dataclass
class Prepared:
    """A request ready for the scheduler."""

    ids: list[int]
    params: SamplingParams


def check_options(options: Any) -> dict[str, Any]:
    """Ollama `options`, type- and range-checked; options yunque does not use (num_thread, mirostat, ...) are ignored."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise APIError(400, "options must be a JSON object", param="options")
    out = {}
    for name, value in options.items():
        if name in PARAMETERS and value is not None:
            try:
                out[name] = check_parameter(name, value)
            except ValueError as e:
                raise APIError(400, str(e), param=f"options.{name}") from None
    return out


def settings_for(entry: Any, system: str | None = None, template: str | None = None) -> ChatSettings:
    """A store entry's chat settings with a request's `system` / `template` overrides applied."""
    settings = chat_settings(entry)
    if system is not None:
        settings.system = system
    if template:
        settings.template, settings.kind = template, "go" if looks_like_go(template) else "jinja"
    return settings


def encode(runner: Runner, text: str) -> list[int]:
    # Templates write their turn markers as text; they must become the special tokens.
    return runner.tokenizer.encode(text, allowed_special="all")


def context_size(runner: Runner, num_ctx: int | None) -> int:
    """The context a request may fill: its `num_ctx`, else the server's default (Ollama's
    OLLAMA_CONTEXT_LENGTH rule), at most the model's own."""
    return min(num_ctx or runner.default_context or runner.context_length, runner.context_length)


def check_prompt(n_prompt: int, ctx: int) -> int:
    """Tokens left for the answer; a prompt that leaves none is the caller's mistake."""
    if n_prompt == 0:
        raise APIError(400, "the prompt is empty after templating; send some text")
    if n_prompt >= ctx:
        raise APIError(400, f"the prompt is {n_prompt} tokens but the context holds {ctx}; shorten the prompt or raise num_ctx (up to the model's context)")
    return ctx - n_prompt


def stop_token_ids(tokenizer: Any, stops: list[str]) -> tuple[int, ...]:
    """End of text, plus each stop string that is one special token (so `<|end|>` ends a turn even when sampled as a token)."""
    tok = tokenizer
    ids = {tok.eot_id} if tok.eot_id is not None else set()
    ids |= {tok.special_tokens[s] for s in stops if s in tok.special_tokens}
    return tuple(sorted(ids))


def _stops(settings: ChatSettings, asked: list[str] | None) -> list[str]:
    """The model's stop strings (its end-of-turn marker among them) plus the request's.

    Ollama lets request stops replace the Modelfile's; yunque adds them, so a request that
    asks for one more stop string does not also lose the end of the model's turn.
    """
    return list(dict.fromkeys([*settings.stop, *(asked or [])]))


def ollama_params(runner: Runner, settings: ChatSettings, options: dict[str, Any], n_prompt: int, json_object: bool = False) -> SamplingParams:
    """SamplingParams from Ollama options over the Modelfile's parameters over Ollama's defaults."""
    merged = {**OLLAMA_DEFAULTS, **settings.parameters, **options}
    stops = _stops(settings, merged.get("stop"))
    room = check_prompt(n_prompt, context_size(runner, merged.get("num_ctx")))
    num_predict = merged["num_predict"]
    if num_predict == 0 or num_predict > MAX_PREDICT:
        raise APIError(400, f"num_predict {num_predict} is out of range; use -1 (until a stop or the context is full) or 1 to {MAX_PREDICT}", param="options.num_predict")
    return _params(
        max_new_tokens=room if num_predict < 0 else min(num_predict, room),
        stop=tuple(s for s in stops if s not in runner.tokenizer.special_tokens),
        stop_token_ids=stop_token_ids(runner.tokenizer, stops),
        json_object=json_object,
        **sampling_fields(merged),
    )


def _params(**kwargs: Any) -> SamplingParams:
    try:
        return SamplingParams(**kwargs)
    except YunqueError as e:
        raise APIError(400, str(e)) from None


def openai_params(runner: Runner, settings: ChatSettings, body: Any, n_prompt: int, json_object: bool = False) -> SamplingParams:
    """SamplingParams for an OpenAI request: OpenAI's defaults (temperature 1, no top-k) and its max_tokens rule."""
    room = check_prompt(n_prompt, runner.context_length)
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if max_tokens is not None and max_tokens > room:
        raise APIError(
            400,
            f"This model's maximum context length is {runner.context_length} tokens; you requested {n_prompt + max_tokens} "
            f"({n_prompt} in the prompt, {max_tokens} for the completion); reduce the prompt or max_tokens",
            param="max_tokens",
        )
    asked = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(asked) > 4:
        raise APIError(400, "stop takes at most 4 sequences", param="stop")
    stops = _stops(settings, asked)
    return _params(
        **{**OPENAI_DEFAULTS, **from_openai(body)},
        logit_bias=_logit_bias(runner, getattr(body, "logit_bias", None)),
        logprobs=body.logprobs_asked(),
        max_new_tokens=max_tokens or _default_answer(runner, n_prompt, room),
        stop=tuple(s for s in stops if s not in runner.tokenizer.special_tokens),
        stop_token_ids=stop_token_ids(runner.tokenizer, stops),
        json_object=json_object,
    )


def _default_answer(runner: Runner, n_prompt: int, room: int) -> int:
    """Tokens an OpenAI answer without max_tokens may take: up to the server's default context,
    or, for a prompt longer than that, what the model's context has left (the prompt itself
    may use all of it: OpenAI has no num_ctx)."""
    within_default = context_size(runner, None) - n_prompt
    return within_default if within_default > 0 else room


def _logit_bias(runner: Runner, asked: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's `logit_bias` (token id strings -> -100..100) as ids of this model's tokenizer."""
    if not asked:
        return None
    out = {}
    for key, bias in asked.items():
        if not key.isdigit() or int(key) >= runner.tokenizer.vocab_size:
            raise APIError(400, f"logit_bias key {key!r} is not a token id of this model (0 to {runner.tokenizer.vocab_size - 1})", param="logit_bias")
        out[int(key)] = float(bias)
    return out


def is_json_format(value: Any) -> bool:
    """Ollama `format`: "json" or a JSON schema object (the answer is constrained to a JSON object, not to the schema)."""
    if value in (None, ""):
        return False
    if value == "json" or isinstance(value, dict):
        return True
    raise APIError(400, f"format must be \"json\" or a JSON schema object, got {value!r}", param="format")
