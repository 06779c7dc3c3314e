"""OpenAI's HTTP API under /v1: models, chat completions, completions, embeddings.

Streaming answers are server-sent events (`data: {...}` lines) ending with `data: [DONE]`.
Errors are `{"error": {"message", "type", "param", "code"}}` (see `yunque.server.errors`).
Only `n=1` is served; `logprobs`, tools and other fields yunque cannot honour are refused
with a 400 rather than silently ignored when they would change the answer.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import itertools
import time
import uuid
from typing import Any, AsyncIterator, Callable, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from yunque.infer.batch import TokenLogprob
from yunque.infer.score import prompt_logprobs
from yunque.store import entries as store
from yunque.server import answer, prepare
from yunque.server.errors import APIError, error_body
from yunque.server.manager import LoadedModel, lookup

router = APIRouter(prefix="/v1")
MAX_CHOICES = 16  # n per prompt
MAX_PROMPTS = 64  # prompts in one completions request
_Number = float | StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class TextPart(_Body):
    type: StrictStr
    text: StrictStr = ""


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(p.type != "text" for p in self.content):
            raise APIError(400, "only text content parts are supported", param="messages")
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"


# OpenAI request fields that change nothing for a local text model: accepted and ignored.
_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                      "parallel_tool_calls", "reasoning_effort", "verbosity"})
# OpenAI fields yunque does not implement, with the value that asks for nothing: any other is a 400.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],), "function_call": ("none", "auto"), "audio": (),
    "prediction": (), "web_search_options": (), "best_of": (1,), "modalities": (["text"],),
}
_WHY = {"tools": "tools and function calling are not supported yet", "tool_choice": "tools and function calling are not supported yet",
        "functions": "function calling is not supported yet", "function_call": "function calling is not supported yet"}


def _refuse_unsupported(extra: dict[str, Any] | None) -> None:
    """OpenAI refuses arguments it does not know; so does yunque, and those it cannot honour."""
    for name, value in (extra or {}).items():
        if name in _IGNORED or value is None:
            continue
        if name not in _NEUTRAL:
            raise APIError(400, f"unrecognized request argument {name!r}; leave it out", param=name)
        if value not in _NEUTRAL[name]:
            why = _WHY.get(name, f"{name} is not supported by yunque")
            raise APIError(400, f"{why}; send the request without {name!r}", param=name)


class _Sampling(_Body):
    model_config = ConfigDict(extra="allow", protected_namespaces=())  # unknown fields are refused in check()

    model: StrictStr
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = None
    temperature: _Number | None = None
    top_p: _Number | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = 1
    presence_penalty: _Number | None = None
    frequency_penalty: _Number | None = None
    logit_bias: dict[StrictStr, _Number] | None = None

    def check(self) -> None:
        _refuse_unsupported(self.model_extra)
        if not 1 <= self.n <= MAX_CHOICES:
            raise APIError(400, f"n must be between 1 and {MAX_CHOICES}, got {self.n}", param="n")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise APIError(400, f"temperature must be between 0 and 2, got {self.temperature}", param="temperature")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None

    def logprobs_asked(self) -> int | None:
        """Alternatives per token to report (0: the chosen token's only), or None for no logprobs."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
    suffix: StrictStr | None = None
    logprobs: StrictInt | None = None

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise APIError(400, "suffix (text to insert before) is not supported; send the request without 'suffix'", param="suffix")

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one text, texts, one list of token ids, or lists of them (OpenAI's four forms)."""
        prompt = self.prompt
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise APIError(400, f"prompt must hold 1 to {MAX_PROMPTS} prompts, got {len(prompts)}", param="prompt")
        return prompts


class EmbeddingRequest(_Body):
    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None


def _usage(outcomes: list[answer.Outcome], n: int) -> dict[str, Any]:
    """Each prompt counted once (its n choices share it), every choice's completion; how many
    prompt tokens came from the prompt cache, as OpenAI reports them."""
    prompt = sum(o.prompt_tokens for o in outcomes[::n])
    completion = sum(o.completion_tokens for o in outcomes)
    cached = sum(o.cached_tokens for o in outcomes[::n])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _prepare(request: Request, body: _Sampling, render: Callable[[LoadedModel], list[str | list[int]]],
                   json_format: bool) -> tuple[LoadedModel, list[prepare.Prepared]]:
    """The choices of a request: `n` per prompt, prompt by prompt; a choice after the first
    draws with the next seed, so seeded choices differ and reproduce."""
    body.check()

    def build(lm: LoadedModel) -> list[prepare.Prepared]:
        settings = prepare.settings_for(lm.entry)
        choices = []
        for prompt in render(lm):
            ids = list(prompt) if isinstance(prompt, list) else prepare.encode(lm.runner, prompt)
            params = prepare.openai_params(lm.runner, settings, body, len(ids), json_format)
            for j in range(body.n):
                seeded = params if j == 0 or params.seed is None else dataclasses.replace(params, seed=params.seed + j)
                choices.append(prepare.Prepared(ids, seeded))
        return choices

    lm, _, prepared = await request.app.state.manager.acquire_for(body.model, build)
    return lm, prepared


def _wire(
    request: Request,
    body: _Sampling,
    base: dict[str, Any],
    objects: tuple[str, str],
    whole_choice: Callable[[int, answer.Outcome], dict[str, Any]],
    delta_choice: Callable[[int, answer.Delta | None, str | None], dict[str, Any]],
    opening: list[dict[str, Any]],
) -> answer.Wire:
    """OpenAI's answer: every choice (`whole_choice`) and the usage, or chunks of one choice each
    (`delta_choice(i, piece, finish_reason)`), each choice's last chunk with its finish reason,
    and (with stream_options.include_usage) one chunk with the usage."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    whole_object, chunk_object = objects

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {**base, "object": chunk_object, "choices": choices}

    def closing(outcomes: list[answer.Outcome]) -> list[dict[str, Any]]:
        return [{**chunk([]), "usage": _usage(outcomes, body.n)}] if include_usage else []

    return answer.Wire(
        whole=lambda outcomes: {**base, "object": whole_object, "choices": [whole_choice(i, o) for i, o in enumerate(outcomes)],
                                "usage": _usage(outcomes, body.n)},
        delta=lambda i, piece: chunk([delta_choice(i, piece, None)]),
        finished=lambda i, outcome: [chunk([delta_choice(i, None, outcome.finish_reason)])],
        closing=closing,
        error=lambda e: error_body(request.url.path, e),
        frame=answer.sse,
        opening=[chunk([c]) for c in opening],
    )


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    data = tokenizer.token_bytes(token_id)
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def _chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """Chat's `logprobs`: each token with its bytes, log probability and top alternatives."""
    if logprobs is None:
        return None
    content = [{**_token_entry(tokenizer, lp.token_id, lp.logprob), "top_logprobs": [_token_entry(tokenizer, t, v) for t, v in lp.top]} for lp in logprobs]
    return {"content": content, "refusal": None}


def _completion_logprobs(tokenizer: Any, logprobs: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    """Completions' `logprobs`: parallel lists of tokens, their log probabilities, top alternatives
    (token text -> logprob) and where each token's text starts in the answer."""
    if logprobs is None:
        return None
    tokens = [tokenizer.token_bytes(lp.token_id).decode("utf-8", errors="replace") for lp in logprobs]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else []
    tops = [None if lp.logprob is None else {tokenizer.token_bytes(t).decode("utf-8", errors="replace"): v for t, v in lp.top} for lp in logprobs]
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs], "top_logprobs": tops, "text_offset": offsets}


@router.get("/models")
def models() -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(e) for e in store.list_models()]}


@router.get("/models/{name:path}")
def model(name: str) -> dict[str, Any]:
    return _model_card(lookup(name))


def _model_card(entry: store.ModelEntry) -> dict[str, Any]:
    created = int(dt.datetime.fromisoformat(entry.modified).timestamp()) if entry.modified else 0
    return {"id": str(entry.name), "object": "model", "created": created, "owned_by": entry.name.namespace if entry.name else "library"}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    if not body.messages:
        raise APIError(400, "messages must hold at least one message", param="messages")
    json_format = bool(body.response_format and body.response_format.type != "text")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    lm, prepared = await _prepare(request, body, lambda lm: [prepare.settings_for(lm.entry).render(messages)], json_format)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": f"yunque-{lm.entry.short_id}"}

    def whole(i: int, outcome: answer.Outcome) -> dict[str, Any]:
        message = {"role": "assistant", "content": outcome.text}
        return {"index": i, "message": message, "logprobs": _chat_logprobs(lm.tokenizer, outcome.logprobs), "finish_reason": outcome.finish_reason}

    def delta(i: int, piece: answer.Delta | None, finish: str | None) -> dict[str, Any]:
        d = {} if piece is None else {"content": piece.text}
        lps = _chat_logprobs(lm.tokenizer, piece.logprobs) if piece else None
        return {"index": i, "delta": d, "logprobs": lps, "finish_reason": finish}

    opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for i in range(len(prepared))]
    wire = _wire(request, body, base, ("chat.completion", "chat.completion.chunk"), whole, delta, opening)
    return await answer.respond(request, lm, prepared, body.stream, wire)


async def _score(lm: LoadedModel, prompts: list[list[int]], top: int) -> list[list[TokenLogprob]]:
    """Each prompt's token log probabilities (one forward each, in a worker thread)."""
    return await asyncio.to_thread(lambda: [prompt_logprobs(lm.runner.model, ids, top, lm.tokenizer.vocab_size) for ids in prompts])


async def _score_only(request: Request, body: CompletionRequest, prompts: list[str | list[int]]) -> Response:
    """echo with max_tokens 0: no generation, the prompts' own log probabilities (what lm-eval's
    loglikelihood requests ask), one choice per prompt and n."""
    body.check()
    manager = request.app.state.manager
    lm, _ = await manager.acquire(body.model)
    try:
        encoded = await asyncio.to_thread(lambda: [list(p) if isinstance(p, list) else prepare.encode(lm.runner, p) for p in prompts])
        scored = list(zip(encoded, await _score(lm, encoded, body.logprobs or 0)))
    finally:
        manager.release(lm)
    choices = []
    for ids, lps in scored:
        text = lm.tokenizer.decode(ids)
        logprobs = _completion_logprobs(lm.tokenizer, lps, 0) if body.logprobs is not None else None
        choices += [{"index": len(choices) + j, "text": text, "logprobs": logprobs, "finish_reason": "length"} for j in range(body.n)]
    n_prompt = sum(len(ids) for ids, _ in scored)
    answer_body = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()), "model": body.model,
                   "system_fingerprint": f"yunque-{lm.entry.short_id}", "choices": choices,
                   "usage": {"prompt_tokens": n_prompt, "completion_tokens": 0, "total_tokens": n_prompt}}
    if body.stream:
        async def one() -> AsyncIterator[dict[str, Any]]:
            yield answer_body

        return answer.sse(one())
    return JSONResponse(answer_body)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    prompts = body.prompts()
    if body.echo and body.max_tokens == 0:
        return await _score_only(request, body, prompts)
    lm, prepared = await _prepare(request, body, lambda lm: prompts, False)
    base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": f"yunque-{lm.entry.short_id}"}
    # Echo shows each choice's prompt as text (a prompt of token ids decoded).
    echoes = [(lm.tokenizer.decode(p) if isinstance(p, list) else p) if body.echo else "" for p in prompts for _ in range(body.n)]
    shown = [len(e) for e in echoes]  # characters of each answer so far: where its next token's text starts
    # echo with logprobs: the prompt's own tokens come first in each choice's logprobs.
    scored = [lps for lps in await _score(lm, [p.ids for p in prepared[:: body.n]], body.logprobs or 0) for _ in range(body.n)] \
        if body.echo and body.logprobs is not None else [[] for _ in echoes]

    def whole(i: int, outcome: answer.Outcome) -> dict[str, Any]:
        lps = _completion_logprobs(lm.tokenizer, scored[i] + outcome.logprobs if outcome.logprobs is not None else None, 0 if scored[i] else len(echoes[i]))
        return {"index": i, "text": echoes[i] + outcome.text, "logprobs": lps, "finish_reason": outcome.finish_reason}

    def delta(i: int, piece: answer.Delta | None, finish: str | None) -> dict[str, Any]:
        lps = _completion_logprobs(lm.tokenizer, piece.logprobs, shown[i]) if piece else None
        shown[i] += len(piece.text) if piece else 0
        return {"index": i, "text": piece.text if piece else "", "logprobs": lps, "finish_reason": finish}

    opening = [{"index": i, "text": e, "logprobs": _completion_logprobs(lm.tokenizer, scored[i], 0) if scored[i] else None, "finish_reason": None}
               for i, e in enumerate(echoes) if e]
    wire = _wire(request, body, base, ("text_completion", "text_completion"), whole, delta, opening)
    return await answer.respond(request, lm, prepared, body.stream, wire)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    manager = request.app.state.manager
    lm, _ = await manager.acquire(body.model)
    try:
        vectors, n_tokens = await lm.runner.embed(texts)
    finally:
        manager.release(lm)
    if body.dimensions is not None and body.dimensions != len(vectors[0]):
        raise APIError(400, f"this model's embeddings have {len(vectors[0])} dimensions; omit dimensions or ask for {len(vectors[0])}", param="dimensions")

    def encoded(v: list[float]) -> list[float] | str:
        # OpenAI's base64 format: the little-endian float32 bytes of the vector.
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if body.encoding_format == "base64" else v

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
        "model": body.model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
