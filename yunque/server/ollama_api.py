"""Ollama's HTTP API (https://github.com/ollama/ollama/blob/main/docs/api.md), over the store and engine.

Streaming answers are NDJSON, one JSON object per line, on by default; `"stream": false`
gives one object. Durations are nanoseconds, as Ollama reports them. Errors are
`{"error": "..."}` (see `yunque.server.errors`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

import yunque
from yunque.store import entries as store
from yunque.store.entries import chat_settings
from yunque.store.modelfile import Modelfile, render_modelfile
from yunque.server import answer
from yunque.server import prepare
from yunque.server.errors import APIError
from yunque.server.manager import LoadedModel, ModelManager, lookup
from yunque.server.settings import parse_keep_alive

router = APIRouter()
NS = 1_000_000_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Message(_Body):
    role: StrictStr
    content: StrictStr = ""
    images: list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatRequest(_Body):
    model: StrictStr
    messages: list[Message] = []
    stream: StrictBool = True
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | StrictStr | None = None
    template: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Body):
    model: StrictStr
    prompt: StrictStr = ""
    suffix: StrictStr | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    context: list[StrictInt] | None = None
    raw: StrictBool = False
    stream: StrictBool = True
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | StrictStr | None = None


class EmbedRequest(_Body):
    model: StrictStr
    input: StrictStr | list[StrictStr] = ""
    truncate: StrictBool = True
    options: dict[str, Any] | None = None
    keep_alive: float | StrictStr | None = None


class EmbeddingsRequest(_Body):
    model: StrictStr
    prompt: StrictStr = ""
    options: dict[str, Any] | None = None
    keep_alive: float | StrictStr | None = None


class ModelRequest(_Body):
    model: StrictStr | None = None
    name: StrictStr | None = None  # older clients send `name`

    @property
    def target(self) -> str:
        if not (self.model or self.name):
            raise APIError(400, "field 'model' is required", param="model")
        return self.model or self.name or ""


class CreateRequest(ModelRequest):
    modelfile: StrictStr | None = None
    from_: StrictStr | None = Field(None, alias="from")
    system: StrictStr | None = None
    template: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    license: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = True

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), populate_by_name=True)

    def modelfile_text(self) -> str:
        """The Modelfile this request describes: the text as given, or one built from the JSON fields."""
        if self.modelfile:
            return self.modelfile
        if not self.from_:
            raise APIError(400, "give either 'modelfile' (Modelfile text) or 'from' (a base model name)", param="from")
        licenses = [self.license] if isinstance(self.license, str) else list(self.license or [])
        mf = Modelfile(
            from_=self.from_,
            parameters=dict(self.parameters or {}),
            system=self.system,
            template=self.template,
            messages=[{"role": m.role, "content": m.content} for m in self.messages or []],
            license=licenses,
        )
        return render_modelfile(mf)


class CopyRequest(_Body):
    source: StrictStr
    destination: StrictStr


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * NS)


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _keep_alive(value: Any) -> float | None:
    return None if value is None else parse_keep_alive(value)


def _final_stats(outcome: answer.Outcome, load_seconds: float, started: float) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": outcome.finish_reason,
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(load_seconds),
        "prompt_eval_count": outcome.prompt_tokens,  # all of the prompt, cached or not, as Ollama counts
        "prompt_eval_cached_count": outcome.cached_tokens,
        "prompt_eval_duration": _ns(outcome.prompt_seconds),
        "eval_count": outcome.completion_tokens,
        "eval_duration": _ns(outcome.generation_seconds),
    }


def _wire(model: str, shape: Callable[[str], dict[str, Any]], extra_final: Callable[[answer.Outcome], dict[str, Any]], load_seconds: float, started: float) -> answer.Wire:
    """Ollama's answer: `shape(text)` builds the per-chunk fields; the last object carries the counts
    and durations (and `extra_final`'s fields); an error mid-stream is an `{"error": ...}` line."""

    def head(text: str) -> dict[str, Any]:
        return {"model": model, "created_at": _now(), **shape(text)}

    def final(outcome: answer.Outcome, text: str) -> dict[str, Any]:
        return {**head(text), **_final_stats(outcome, load_seconds, started), **extra_final(outcome)}

    return answer.Wire(
        whole=lambda outcomes: final(outcomes[0], outcomes[0].text),
        delta=lambda _, piece: {**head(piece.text), "done": False},
        finished=lambda _, outcome: [final(outcome, "")],
        error=lambda e: {"error": e.message},
        frame=answer.ndjson,
    )


def _load_answer(model: str, unloaded: bool, shape: dict[str, Any], load_seconds: float) -> JSONResponse:
    """Ollama's answer to a request without a prompt: the model was loaded (or unloaded)."""
    reason = "unload" if unloaded else "load"
    return JSONResponse({"model": model, "created_at": _now(), **shape, "done": True, "done_reason": reason, "load_duration": _ns(load_seconds)})


async def _load_or_unload(request: Request, model: str, keep_alive: float | None, shape: dict[str, Any]) -> JSONResponse:
    manager = _manager(request)
    if keep_alive == 0:
        await asyncio.to_thread(lookup, model)
        await manager.unload(model)
        return _load_answer(model, True, shape, 0.0)
    lm, load_seconds = await manager.acquire(model, keep_alive)
    manager.release(lm)
    return _load_answer(model, False, shape, load_seconds)


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running (yunque)"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": yunque.__version__}


@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request) -> Response:
    started = time.perf_counter()
    keep_alive = _keep_alive(body.keep_alive)
    if not body.messages:
        return await _load_or_unload(request, body.model, keep_alive, {"message": {"role": "assistant", "content": ""}})
    options = prepare.check_options(body.options)
    json_format = prepare.is_json_format(body.format)

    def build(lm: LoadedModel) -> prepare.Prepared:
        settings = prepare.settings_for(lm.entry, template=body.template)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        ids = prepare.encode(lm.runner, settings.render(messages, tools=body.tools))
        return prepare.Prepared(ids, prepare.ollama_params(lm.runner, settings, options, len(ids), json_format))

    lm, load_seconds, prepared = await _manager(request).acquire_for(body.model, build, keep_alive)
    wire = _wire(lm.name, lambda text: {"message": {"role": "assistant", "content": text}}, lambda outcome: {}, load_seconds, started)
    return await answer.respond(request, lm, [prepared], body.stream, wire)


@router.post("/api/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    started = time.perf_counter()
    keep_alive = _keep_alive(body.keep_alive)
    if not body.prompt and not body.context:
        return await _load_or_unload(request, body.model, keep_alive, {"response": ""})
    options = prepare.check_options(body.options)
    json_format = prepare.is_json_format(body.format)

    def build(lm: LoadedModel) -> prepare.Prepared:
        settings = prepare.settings_for(lm.entry, system=body.system, template=body.template)
        text = body.prompt if body.raw else settings.render([{"role": "user", "content": body.prompt}])
        ids = list(body.context or []) + prepare.encode(lm.runner, text)
        return prepare.Prepared(ids, prepare.ollama_params(lm.runner, settings, options, len(ids), json_format))

    lm, load_seconds, prepared = await _manager(request).acquire_for(body.model, build, keep_alive)
    wire = _wire(lm.name, lambda text: {"response": text}, lambda outcome: {"context": prepared.ids + outcome.ids}, load_seconds, started)
    return await answer.respond(request, lm, [prepared], body.stream, wire)


async def _embed(request: Request, model: str, texts: list[str], keep_alive: Any, truncate: bool) -> tuple[list[list[float]], int, float]:
    manager = _manager(request)
    lm, load_seconds = await manager.acquire(model, _keep_alive(keep_alive))
    try:
        vectors, n_tokens = await lm.runner.embed(texts, truncate)
    finally:
        manager.release(lm)
    return vectors, n_tokens, load_seconds


@router.post("/api/embed")
async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, n_tokens, load_seconds = await _embed(request, body.model, texts, body.keep_alive, body.truncate)
    return {
        "model": body.model,
        "embeddings": vectors,
        "total_duration": _ns(time.perf_counter() - started),
        "load_duration": _ns(load_seconds),
        "prompt_eval_count": n_tokens,
    }


@router.post("/api/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    vectors, _, _ = await _embed(request, body.model, [body.prompt], body.keep_alive, True)
    return {"embedding": vectors[0]}


def _details(entry: store.ModelEntry) -> dict[str, Any]:
    d = entry.details
    return {
        "parent_model": d.get("parent_model", ""),
        "format": d.get("format", "safetensors"),
        "family": d.get("family", ""),
        "families": [d["family"]] if d.get("family") else None,
        "parameter_size": d.get("parameter_size", ""),
        "quantization_level": d.get("quantization_level", ""),
    }


def _describe(entry: store.ModelEntry) -> dict[str, Any]:
    return {
        "name": str(entry.name),
        "model": str(entry.name),
        "modified_at": entry.modified,
        "size": entry.size,
        "digest": entry.digest.removeprefix("sha256:"),
        "details": _details(entry),
    }


@router.get("/api/tags")
def tags() -> dict[str, Any]:
    return {"models": [_describe(e) for e in store.list_models()]}


def _parameters_text(parameters: dict[str, Any]) -> str:
    """Ollama's `parameters` field: one `name value` line per value, as `ollama show --parameters` prints."""
    lines = []
    for name, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<30} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


@router.post("/api/show")
def show(body: ModelRequest) -> dict[str, Any]:
    entry = lookup(body.target)
    settings = chat_settings(entry)
    parameters = {**settings.parameters, "stop": settings.stop} if settings.stop else settings.parameters
    config = entry.config
    family = entry.details.get("family") or "yunque"
    model_info = {"general.architecture": family, "general.parameter_count": entry.details.get("parameter_count", 0)}
    model_info.update({f"{family}.{k}": v for k, v in config.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
    return {
        "modelfile": render_modelfile(entry.settings, header=f"Modelfile of {entry.name}, as `yunque show --modelfile` prints it"),
        "parameters": _parameters_text(parameters),
        "template": settings.template,
        "system": settings.system or "",
        "license": "\n".join(entry.settings.license),
        "details": _details(entry),
        "model_info": model_info,
        "capabilities": ["completion", "embedding"],
        "modified_at": entry.modified,
    }


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    out = []
    for lm in _manager(request).running():
        expires = dt.datetime.max.replace(tzinfo=dt.timezone.utc) if math.isinf(lm.expires_at) else dt.datetime.fromtimestamp(lm.expires_at, dt.timezone.utc)
        engine = lm.runner.scheduler
        kv_bytes = engine.kv_bytes
        size = lm.runner.size + kv_bytes  # weights and KV in use, as Ollama's size counts both
        out.append(
            {
                **_describe(lm.entry),
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "size": size,
                "size_vram": size if lm.runner.device.startswith("cuda") else 0,
                "context_length": lm.runner.context_length,
                # yunque's additions (clients ignore them): the scheduler's load and KV memory right now.
                "kv_bytes": kv_bytes,
                "kv_blocks_used": engine.kv_blocks_used,
                "kv_blocks_total": engine.kv_blocks_total,
                "kv_blocks_cached": engine.kv_blocks_cached,
                "requests": {"running": engine.active, "waiting": engine.waiting},
            }
        )
    return {"models": out}


@router.post("/api/create")
def create(body: CreateRequest) -> Response:
    entry = store.create(body.target, body.modelfile_text())
    statuses = ["reading model metadata", f"writing {entry.name}", "success"]
    if not body.stream:
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[dict[str, Any]]:
        for status in statuses:
            yield {"status": status}

    return answer.ndjson(lines())


@router.post("/api/copy")
def copy(body: CopyRequest) -> Response:
    lookup(body.source)
    store.copy(body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(body: ModelRequest, request: Request) -> Response:
    name = body.target
    await asyncio.to_thread(lookup, name)
    await _manager(request).unload(name)
    await asyncio.to_thread(store.delete, name)
    return Response(status_code=200)


@router.post("/api/pull")
@router.post("/api/push")
async def pull() -> Response:
    raise APIError(
        501,
        "yunque works offline and has no registry to pull from or push to; bring a model in with "
        "`yunque import DIR NAME` (a Hugging Face safetensors directory) or build one with `yunque create`",
    )

