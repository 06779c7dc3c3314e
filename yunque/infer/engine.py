"""Continuous batching: one background thread owns the model and decodes every active request together.

Between two decode steps the thread admits waiting requests into free cache slots (one
prefill pass each), drops cancelled ones and lets finished ones leave, so requests join and
leave mid-decode, each with its own sampling settings. Callers get a `RequestHandle`, which
is both a blocking iterator (threads, the CLI) and an async iterator (an asyncio server:
waiting never blocks the event loop). The waiting queue is bounded: when it is full,
`submit` raises `QueueFullError` at once, which a server maps to 503.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Sequence

from yunque.infer.budget import BLOCK, KVBudget, blocks
from yunque.infer.batch import Batch, Chunk, GenerationResult, QueueFullError, Request, make_request
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer
from yunque.infer.sampling import SamplingParams


@dataclass
class _Waiter:
    """An async reader of a handle: its loop, the event that wakes it, and whether a wake-up is on its way."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event
    scheduled: bool = False


class RequestHandle:
    """The caller's side of one request: iterate it (sync or async) for `Chunk`s, then read `.result`.

    Chunks arrive once per decode step (`chunk.text` may be empty while text is held back).
    If the engine fails, iteration raises the engine's exception.
    """

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._waiters: list[_Waiter] = []
        self._end_waiters: list[_Waiter] = []  # readers waiting only for the end (see `ended`)
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.request: Request | None = None

    # -- called from the engine thread
    def _push(self, chunk: Chunk) -> None:
        with self._cond:
            self._chunks.append(chunk)
            self._wake()

    def _done(self, result: GenerationResult) -> None:
        with self._cond:
            self.result = result
            self._wake()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        if self.done:
            for waiter in self._end_waiters:
                waiter.loop.call_soon_threadsafe(waiter.event.set)
        for waiter in self._waiters:
            if not waiter.scheduled:  # one wake-up in flight is enough: the reader drains everything queued
                waiter.scheduled = True
                waiter.loop.call_soon_threadsafe(waiter.event.set)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def _take(self) -> Chunk | None:
        """Next chunk, or None when there is none now; raises StopIteration/the engine's error at the end."""
        if self._chunks:
            return self._chunks.popleft()
        if self.error is not None:
            raise self.error
        if self.result is not None:
            raise StopIteration
        return None

    # -- caller side
    def __iter__(self) -> Iterator[Chunk]:
        while True:
            with self._cond:
                try:
                    chunk = self._take()
                except StopIteration:
                    return
                if chunk is None:
                    self._cond.wait()
                    continue
            yield chunk

    async def drain(self) -> AsyncIterator[list[Chunk]]:
        """Async iteration by batches: every chunk queued since the last one, at least one each.

        A reader that falls behind (a busy event loop) gets several steps' chunks at once, so
        it pays its per-message costs once per batch rather than once per token.
        """
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._waiters.append(waiter)
        try:
            while True:
                with self._cond:
                    # Cleared under the lock, so a chunk queued after this is never left without a wake-up.
                    waiter.event.clear()
                    waiter.scheduled = False
                    chunks = list(self._chunks)
                    self._chunks.clear()
                    if not chunks and self.error is not None:
                        raise self.error
                    if not chunks and self.result is not None:
                        return
                if chunks:
                    yield chunks
                else:
                    await waiter.event.wait()
        finally:
            with self._cond:
                self._waiters.remove(waiter)

    async def ended(self, timeout: float) -> None:
        """Wait until the request ends, or `timeout` seconds, whichever is sooner (chunks do not
        wake it): a paced reader's pause that never outlasts the answer."""
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            if self.done:
                return
            self._end_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._cond:
                self._end_waiters.remove(waiter)

    async def _aiter(self) -> AsyncIterator[Chunk]:
        async for chunks in self.drain():
            for chunk in chunks:
                yield chunk

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._aiter()

    def text(self) -> str:
        """Block until done; the whole generated text."""
        return "".join(chunk.text for chunk in self)

    def cancel(self) -> None:
        """Stop this request: a waiting one leaves the queue now, a running one frees its slot before the next step."""
        self._engine._cancel(self)


class Engine:
    """A background decoding thread with `max_batch` cache slots and a queue of at most `max_queue` waiting requests.

    A request waits in the queue until the thread gives it a free slot (between two decode steps).
    """

    def __init__(self, model: Transformer, tokenizer: Any = None, *, max_batch: int = 8, max_queue: int = 64,
                 max_len: int | None = None, kv_budget: KVBudget | None = None, prompt_cache: bool = True) -> None:
        if max_batch < 1 or max_queue < 1:
            raise YunqueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}.")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_queue = max_queue
        self.context = max_len or model.config.max_seq_len
        self._batch = Batch(model, max_batch, self.context, tokenizer, prompt_cache=prompt_cache)
        self.kv_budget = kv_budget
        self.position_bytes = self._batch.cache.bytes_per_position()  # fixed: read once, not in each step
        self.block_bytes = BLOCK * self.position_bytes
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._cancel_all = False
        self._reclaim = False  # another engine asked for the memory of the parked rows
        if kv_budget is not None and prompt_cache:
            kv_budget.register(self._reclaim_asked)
        self._thread = threading.Thread(target=self._run, name="yunque-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **sampling: Any) -> RequestHandle:
        """Queue a text prompt (needs the tokenizer) or a list of token ids; returns at once."""
        params = SamplingParams.from_kwargs(params, **sampling)
        handle = RequestHandle(self)
        handle.request = make_request(self.model, self.tokenizer, prompt, params, self.context, handle._push, handle._done)
        handle.request.on_error = handle._fail
        if self.kv_budget is not None:
            self.kv_budget.check(self._kv_need(handle.request))
        with self._cond:
            if self._closed:
                raise YunqueError("The engine has been shut down; create a new one.")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"The engine is busy ({self.max_queue} requests already waiting); try again shortly.")
            self._waiting.append(handle.request)
            self._cond.notify_all()
        return handle

    def _cancel(self, handle: RequestHandle) -> None:
        with self._cond:
            if handle.request in self._waiting:
                self._waiting.remove(handle.request)
                handle.request.finish("cancelled")
            else:
                handle.request.cancelled = True
                self._cond.notify_all()

    @property
    def active(self) -> int:
        """Requests decoding now."""
        return len(self._batch.active)

    @property
    def waiting(self) -> int:
        """Requests queued for a free slot."""
        return len(self._waiting)

    @property
    def kv_bytes(self) -> int:
        """KV cache memory held now: the positions the decoding requests have written, and the parked rows'."""
        return self._batch.kv_bytes + self._batch.cached_bytes

    def _held(self, reserved: int, positions: int) -> int:
        """Blocks a row holds: its reservation, or (without a budget) the blocks of what it has written."""
        return max(reserved // self.block_bytes, blocks(positions))

    @property
    def kv_blocks_cached(self) -> int:
        """Blocks the prompt cache's parked rows hold (given up whenever a request needs them)."""
        prefixes = self._batch.prefixes
        return sum(self._held(e.kv_reserved, len(e.tokens)) for e in prefixes.rows) if prefixes else 0

    @property
    def kv_blocks_used(self) -> int:
        """Blocks of `BLOCK` positions held: the decoding requests' (written, or next to be) and the parked rows'."""
        return sum(self._held(r.kv_reserved, r.cached) for r in self._batch.active) + self.kv_blocks_cached

    @property
    def kv_blocks_total(self) -> int:
        """Blocks this engine could hold: its share of the budget if it has one, else every slot's whole context."""
        if self.kv_budget is not None:
            return self.kv_budget.total // self.block_bytes
        return self._batch.n_slots * blocks(self.context)

    def shutdown(self, cancel: bool = True) -> None:
        """Stop the thread: with `cancel`, running and waiting requests end as `cancelled`; else they finish first."""
        with self._cond:
            self._closed = True
            if cancel:
                self._cancel_all = True  # the engine thread flags what it is running
                for req in self._waiting:
                    req.finish("cancelled")
                self._waiting.clear()
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ engine thread
    def _kv_need(self, req: Request) -> int:
        """The most KV memory `req` may come to hold: blocks for its prompt plus max_new_tokens."""
        return blocks(min(self.context, len(req.prompt_ids) + req.params.max_new_tokens)) * self.block_bytes

    def _admit(self) -> list[Request]:
        """Waiting requests, in order, for the free slots, while the blocks of their context (and the
        position after it) fit the budget with a block to spare for every decoding request's next
        step. Each takes over the parked row sharing the longest prefix with it, if any."""
        admit: list[Request] = []
        taken: list = []  # parked rows promised to requests admitted in this round
        prefixes = self._batch.prefixes
        while self._waiting and len(admit) < self._batch.free_slots:
            req = self._waiting[0]
            if req.cancelled:  # cancelled while it waited after a preemption
                self._waiting.popleft().finish("cancelled")
                continue
            req.prefix = prefixes.find(req.context_ids, taken) if prefixes is not None else None
            if req.prefix is not None:
                taken.append(req.prefix[0])
            if self.kv_budget is not None and not self._reserve(req, len(admit), taken):
                req.prefix = None
                break  # the oldest request waits for memory; the ones behind it wait their turn
            admit.append(self._waiting.popleft())
        return admit

    def _reserve(self, req: Request, admitted: int, taken: list) -> bool:
        """Reserve `req`'s blocks (those of a parked row it takes over count), evicting parked rows
        as needed; when even that is not enough, ask the other engines for theirs and say no."""
        need = blocks(req.context_length + 1) * self.block_bytes
        held = req.prefix[0] if req.prefix is not None else None
        headroom = (len(self._batch.active) + admitted) * self.block_bytes
        more = need - (held.kv_reserved if held is not None else 0)
        while not self.kv_budget.try_reserve(max(0, more), headroom):
            if self._batch.prefixes is None or not self._batch.prefixes.evict(exclude=taken):
                self.kv_budget.reclaim(self._reclaim_asked)
                return False
        if held is not None:  # the row's reservation passes to the request; what it does not need goes back
            if more < 0:
                self.kv_budget.release(-more)
            held.kv_reserved = 0
        req.budget, req.kv_reserved = self.kv_budget, need
        return True

    def _reclaim_asked(self) -> None:
        with self._cond:
            self._reclaim = True
            self._cond.notify_all()

    def _grow(self) -> list[Request]:
        """Give every decoding request a block for its next position where it crosses into a new one;
        when the budget has none, preempt the latest to arrive (it is prefilled again when memory
        frees, as vLLM does), down to the request itself. Returns the preempted, oldest first."""
        if self.kv_budget is None:
            return []
        preempted: list[Request] = []
        for req in list(self._batch.active):  # admission order, but for the row moves of earlier departures
            if req in preempted or (req.cached + 1) * self.position_bytes <= req.kv_reserved:
                continue
            while not self.kv_budget.try_reserve(self.block_bytes):
                if self._batch.prefixes is not None and self._batch.prefixes.evict():
                    continue  # parked rows go before any decoding request is preempted
                victim = max(self._batch.active, key=lambda r: r.t_submit)
                self._batch.preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            else:
                req.kv_reserved += self.block_bytes
        return sorted(preempted, key=lambda r: r.t_submit)

    def _stopped(self) -> None:
        """The thread's last act: parked rows give their memory back, and nobody asks this engine again."""
        if self._batch.prefixes is not None:
            self._batch.prefixes.clear()
        if self.kv_budget is not None and self._batch.prefixes is not None:
            self.kv_budget.unregister(self._reclaim_asked)

    def _run(self) -> None:
        batch = self._batch
        while True:
            with self._cond:
                while not self._waiting and not batch.active and not self._closed and not self._reclaim:
                    self._cond.wait()
                if self._reclaim and batch.prefixes is not None:
                    batch.prefixes.clear()
                self._reclaim = False
                if self._closed and not self._waiting and not batch.active:
                    self._stopped()
                    return
                admit = self._admit()
                if not admit and not batch.active:
                    self._cond.wait(0.05)  # waiting for KV memory another engine holds: look again soon
                    continue
                if self._cancel_all:
                    for req in batch.active:
                        req.cancelled = True
            preempted: list[Request] = []
            try:
                batch.cancel_flagged()
                batch.add(*admit)
                preempted = self._grow()
                batch.step()
            except Exception as e:  # a bug, not a user mistake: fail the requests it touched, keep serving
                for req in {id(r): r for r in admit + preempted + batch.reset()}.values():
                    req.fail(e)
                continue
            if preempted:
                with self._cond:
                    self._waiting.extendleft(reversed(preempted))  # first in line again, oldest first
