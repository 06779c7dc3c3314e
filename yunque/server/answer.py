"""One answer skeleton for both APIs: run a prepared generation, then write the answer whole
(one JSON object) or as a stream of deltas.

An API describes its answer as a `Wire`: the whole answer, a delta, the closing events, an
error after the status line, and the stream's framing (Ollama: NDJSON; OpenAI: server-sent
events ending `data: [DONE]`). `respond` does the rest the same way for every route: a
non-streamed answer is cancelled when its client disconnects; a stream's first item is awaited
before the status line, so errors such as a full queue become a status code; an error later is
reported in the stream; and the model reference is released however the answer ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from yunque.infer.batch import GenerationResult, QueueFullError, TokenLogprob
from yunque.server.errors import APIError, ServerBusy, in_stream_error
from yunque.server.manager import LoadedModel
from yunque.server.prepare import Prepared
from yunque.server.runner import Runner

# Under load (several requests decoding together) the streams of one model send about this many
# deltas per second in all, each stream one per active / DELTA_RATE seconds: every delta costs
# the event loop JSON, an HTTP write and, in this process, the GIL the engine thread needs, so
# a few tokens per delta leave the engine its throughput. A lone stream sends every token.
DELTA_RATE = 200.0


@dataclass
class Outcome:
    """The end of one generation, in the units both APIs report."""

    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float
    ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # of prompt_tokens, read from the prompt cache


@dataclass
class Delta:
    """A piece of a streamed answer: its text, and the log probabilities of its tokens when asked."""

    text: str
    logprobs: list[TokenLogprob] | None = None


Event = dict[str, Any]


def _no_events(outcomes: list[Outcome]) -> list[Event]:
    return []


@dataclass
class Wire:
    """How one API writes an answer of one or more choices; `respond` calls these as it goes."""

    whole: Callable[[list[Outcome]], Event]  # the non-streamed answer, from every choice's outcome
    delta: Callable[[int, Delta], Event]  # a piece of choice i's streamed text
    finished: Callable[[int, Outcome], list[Event]]  # the events that end choice i's stream
    error: Callable[[APIError], Event]  # a failure after the status line, reported in the stream
    frame: Callable[[AsyncIterator[Event]], StreamingResponse]  # events -> the HTTP stream
    opening: list[Event] = field(default_factory=list)  # events before the first delta
    closing: Callable[[list[Outcome]], list[Event]] = _no_events  # events once every choice has ended


def ndjson(events: AsyncIterator[Event]) -> StreamingResponse:
    """One JSON object per line (Ollama's streams)."""

    async def lines() -> AsyncIterator[bytes]:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def sse(events: AsyncIterator[Event]) -> StreamingResponse:
    """Server-sent events, `data: {...}` each, ending with `data: [DONE]` (OpenAI's streams)."""

    async def lines() -> AsyncIterator[bytes]:
        async for event in events:
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def respond(request: Request, lm: LoadedModel, prepared: list[Prepared], stream: bool, wire: Wire) -> Response:
    """Run every choice of `prepared` on `lm` (decoded together) and answer as `wire` says,
    whole or streamed.

    Owns the model reference from `acquire`: released when the answer is finished or abandoned.
    """
    manager = request.app.state.manager
    if not stream:
        try:
            outcomes = await until_disconnect(request, asyncio.gather(*(complete(lm.runner, p) for p in prepared)))
        finally:
            manager.release(lm)
        return JSONResponse(wire.whole(list(outcomes)))

    streams = [generate(lm.runner, p) for p in prepared]
    try:
        heads = [await anext(s) for s in streams]  # errors (server busy) become a status code, not a broken stream
    except BaseException:
        manager.release(lm)
        for s in streams:
            await s.aclose()
        raise

    async def events() -> AsyncIterator[Event]:
        outcomes: list[Outcome] = [None] * len(streams)  # type: ignore[list-item]
        merged = _merged(streams, heads)
        try:
            for event in wire.opening:
                yield event
            async for i, item in merged:
                if isinstance(item, Outcome):
                    outcomes[i] = item
                    for event in wire.finished(i, item):
                        yield event
                else:
                    yield wire.delta(i, item)
            for event in wire.closing(outcomes):
                yield event
        except Exception as e:  # the status line is sent: report in the stream, as both APIs do
            yield wire.error(in_stream_error(e))
        finally:
            manager.release(lm)  # first: nothing after an await is sure to run in a cancelled task
            await merged.aclose()

    return wire.frame(events())


async def _merged(streams: list[AsyncIterator[Delta | Outcome]], heads: list[Delta | Outcome]) -> AsyncIterator[tuple[int, Delta | Outcome]]:
    """(choice, item) from every stream as items arrive, each stream's first item given; ends when
    every stream has given its Outcome. Closing it cancels the streams still running."""
    if len(streams) == 1:  # one choice, the common case: no tasks
        stream, item = streams[0], heads[0]
        try:
            while True:
                yield 0, item
                if isinstance(item, Outcome):
                    return
                item = await anext(stream)
        finally:
            await stream.aclose()
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int) -> None:
        await queue.put((i, heads[i]))
        if not isinstance(heads[i], Outcome):
            try:
                async for item in streams[i]:
                    await queue.put((i, item))
            except Exception as e:  # handed to the reader, which reports it
                await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(streams))]
    try:
        for _ in range(len(streams)):
            while True:
                i, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield i, item
                if isinstance(item, Outcome):
                    break
    finally:
        for task in tasks:
            task.cancel()  # a stream's own cleanup (cancelling its generation) runs in its task
        await asyncio.gather(*tasks, return_exceptions=True)


def _submit(runner: Runner, prepared: Prepared) -> Any:
    try:
        return runner.scheduler.submit(prepared.ids, prepared.params)
    except QueueFullError:
        raise ServerBusy() from None


def _outcome(result: GenerationResult) -> Outcome:
    return Outcome(
        text=result.text,
        finish_reason="length" if result.finish_reason == "length" else "stop",
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.generated_tokens,
        prompt_seconds=result.prompt_seconds,
        generation_seconds=result.generation_seconds,
        ids=list(result.token_ids),
        logprobs=result.logprobs,
        cached_tokens=result.cached_tokens,
    )


async def generate(runner: Runner, prepared: Prepared, paced: bool = True) -> AsyncIterator[Delta | Outcome]:
    """Deltas, then one `Outcome`. Leaving early (a client gone, a task cancelled) cancels the generation.

    Each delta is all the text the engine produced since the last one. Alone, every token is
    its own delta; `paced`, with n requests decoding, a stream waits up to n / DELTA_RATE
    seconds after each delta, so the per-delta costs (JSON, HTTP write, the GIL, the client's
    parse) are paid once per few tokens; the wait ends early when the answer does, so a short
    answer is never held back by its pacing.
    """
    handle = _submit(runner, prepared)
    try:
        async for chunks in handle.drain():
            text = "".join(chunk.text for chunk in chunks)
            logprobs = [lp for chunk in chunks for lp in chunk.logprobs or ()] if prepared.params.logprobs is not None else None
            if text or logprobs:
                yield Delta(text, logprobs)
                active = runner.scheduler.active
                if paced and active > 1:
                    await handle.ended(active / DELTA_RATE)  # the answer's end is never held back
        yield _outcome(handle.result)
    finally:
        handle.cancel()  # a no-op once finished; frees the batch slot when the reader left early


def stream_sync(runner: Runner, prepared: Prepared) -> Iterator[str]:
    """`generate` for a caller without an event loop (`yunque run` in-process): text deltas only."""
    handle = _submit(runner, prepared)
    try:
        for chunk in handle:
            if chunk.text:
                yield chunk.text
    finally:
        handle.cancel()


async def complete(runner: Runner, prepared: Prepared) -> Outcome:
    """The whole answer (no pacing: nothing is sent before the end)."""
    async for item in generate(runner, prepared, paced=False):
        if isinstance(item, Outcome):
            return item
    raise AssertionError("the scheduler ended a generation without its final event")


async def until_disconnect(request: Request, work: Any) -> Any:
    """Await `work` (a coroutine), cancelling it if the client disconnects first (non-streaming answers)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client closed the request")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
