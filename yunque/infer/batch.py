"""Generation: a static KV cache, one prefill pass, then one token per step for every active row.

Three ways in, one machinery underneath (`Batch`, here: a set of cache slots decoded together):
- `generate_ids(model, ids, ...)` / `generate(model, tokenizer, prompt, ...)` (yunque.infer.generate): one sequence,
  streamed in the caller's thread; the returned stream carries a `GenerationResult` once done.
- `generate_batch(model, prompts, ...)`: several prompts of different lengths decoded together.
- `Engine` (yunque.infer.engine): a background thread that owns the model and runs continuous batching: requests
  join free slots and leave between decode steps, each with its own sampling settings. Its
  handles are sync and async iterators, so an asyncio server never blocks its event loop.

Active requests always sit in slots 0..n-1 (a leaving request's slot is filled by moving the
last one down), so a decode step reads the cache as a plain prefix view: no gathers, no
index tensors built per step, and the sampling settings are turned into tensors only when
the batch changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from yunque.infer.constrain import JsonConstraint
from yunque.infer.decode import decode_step
from yunque.errors import YunqueError
from yunque.model.matmul import tune_products
from yunque.model.transformer import KVCache, Transformer
from yunque.infer.budget import KVBudget
from yunque.infer.prefix import Parked, PromptCache
from yunque.infer.sampling import SamplingBatch, SamplingParams, sample
from yunque.infer.textstream import TextStream


class QueueFullError(YunqueError):
    """The engine has as many requests waiting as it accepts; the server answers 503."""


@dataclass
class TokenLogprob:
    """A generated token's log probability under the model (its raw logits, before sampling
    settings), with the `top` most likely alternatives as (id, logprob), most likely first."""

    token_id: int
    logprob: float | None  # None for a text's first token, which nothing precedes
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class GenerationResult:
    """How one generation ended, with the counts and timings an API response reports.

    `generated_tokens` counts every sampled token, including a stop token (which is never
    emitted as text or yielded as an id). Durations are in seconds: `queued_seconds` waiting
    for a slot, `prompt_seconds` for the prefill pass and the first token, `generation_seconds`
    for the remaining decode steps.
    """

    finish_reason: str  # "stop" (stop token or string), "length", "cancelled" or "error"
    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float
    generation_seconds: float
    queued_seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_truncated: bool = False
    logprobs: list[TokenLogprob] | None = None  # one per id in token_ids, when the request asked
    cached_tokens: int = 0  # prompt tokens read from the prompt cache instead of computed

    @property
    def tokens_per_second(self) -> float:
        steps = self.generated_tokens - 1  # the first token comes from the prefill pass
        return steps / self.generation_seconds if steps > 0 and self.generation_seconds > 0 else 0.0


@dataclass
class Chunk:
    """What one decode step produced for a request: its new token id(s) and the text now safe to show.

    `text` may be empty (half a UTF-8 character, or text that could still become a stop string).
    """

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None  # one per id, when the request asked for them


class Request:
    """One generation's state, owned by whoever runs the `Batch` it sits in."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset[int], text: TextStream | None,
                 truncated: bool, on_chunk: Callable[[Chunk], None], on_done: Callable[[GenerationResult], None]) -> None:
        self.prompt_ids, self.params, self.stop_ids, self.text = prompt_ids, params, stop_ids, text
        self.truncated = truncated
        self.on_chunk, self.on_done = on_chunk, on_done
        self.generated: list[int] = []
        self.pieces: list[str] = []
        self.cancelled = False
        self.finished = False
        self.t_submit = time.perf_counter()
        self.t_start = self.t_prefill = 0.0
        self.cached = 0  # tokens of this request in its cache slot
        self.on_error: Callable[[BaseException], None] | None = None
        self.error: YunqueError | None = None  # why this request alone failed (its sampling), if it did
        self.budget: KVBudget | None = None  # the budget its KV reservation came from, while it holds one
        self.kv_reserved = 0  # bytes: whole blocks covering the positions it has written (or will, next step)
        self.preemptions = 0  # times it left its slot for memory and was prefilled again later
        self.prefix: tuple[Parked, int] | None = None  # a parked row sharing its first n tokens, to take over
        self.reused = 0  # prompt tokens its last prefill took from a parked row instead of computing
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.step_logprob: TokenLogprob | None = None  # the last sampled token's, until it is emitted
        self.constraint: JsonConstraint | None = None  # masks this request's logits each step (JSON output)

    @property
    def context_ids(self) -> list[int]:
        """What its cache row must hold to go on: the prompt and every token generated so far (the
        last one not yet fed). A preempted request is prefilled with these again, and samples on."""
        return self.prompt_ids + self.generated if self.generated else self.prompt_ids

    @property
    def context_length(self) -> int:
        """len(context_ids), without building the list."""
        return len(self.prompt_ids) + len(self.generated)

    def release_kv(self) -> None:
        """Give the KV reservation back to its budget (once; the request has left its batch)."""
        if self.budget is not None and self.kv_reserved:
            self.budget.release(self.kv_reserved)
        self.kv_reserved = 0

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.release_kv()
        now = time.perf_counter()
        if self.text is not None:
            tail = self.text.finish() if reason != "cancelled" else ""
            if tail:
                self.pieces.append(tail)
                self.on_chunk(Chunk([], tail))
        started = self.t_start or now
        prefilled = self.t_prefill or now
        emitted = [t for t in self.generated if t not in self.stop_ids]
        self.on_done(GenerationResult(
            finish_reason=reason,
            prompt_tokens=len(self.prompt_ids),
            generated_tokens=len(self.generated),
            prompt_seconds=prefilled - started,
            generation_seconds=now - prefilled,
            queued_seconds=started - self.t_submit,
            token_ids=emitted,
            text="".join(self.pieces),
            prompt_truncated=self.truncated,
            logprobs=self.logprobs,
            cached_tokens=min(self.reused, len(self.prompt_ids)),
        ))

    def fail(self, error: BaseException) -> None:
        """This request cannot go on (the engine broke, or its own sampling did): report the error
        instead of a result. Without an error handler (no Engine) the error is raised."""
        if not self.finished:
            self.finished = True
            self.release_kv()
            if self.on_error is None:
                raise error
            self.on_error(error)


class Batch:
    """`n_slots` rows of one static KV cache decoded together; not thread-safe (one owner)."""

    def __init__(self, model: Transformer, n_slots: int, max_len: int | None = None, tokenizer: Any = None,
                 prompt_cache: bool = False) -> None:
        self.model = model
        tune_products(model)  # once per model: how this CPU's BLAS multiplies a few rows fastest
        self.cache = model.make_cache(n_slots, max_len)
        self.max_len = self.cache.max_len
        self.device = model.tok_emb.weight.device
        self.vocab_size = model.config.vocab_size
        # Checkpoints often pad their embedding past the tokenizer (Qwen2.5: 151,936 rows for 151,665
        # tokens); ids past the tokenizer's have no text, so sampling never looks at their logits.
        self.sample_vocab = sample_vocab(model, tokenizer)
        self.active: list[Request] = []
        self.pos = torch.zeros(n_slots, dtype=torch.long, device=self.device)  # next cache position per slot
        self.last = torch.zeros(n_slots, 1, dtype=torch.long, device=self.device)  # last sampled token per slot
        self.seen: Tensor | None = None  # (n_slots, V) penalty state, allocated on the first request that needs it
        self.counts: Tensor | None = None
        self._sampling: SamplingBatch | None = None
        self._step = decode_step(model)  # after tuning: the step binds each layer's product plan
        # With a prompt cache, finished rows stay parked in the top free slots for a later prompt to reuse.
        self.prefixes = PromptCache(self.cache, n_slots) if prompt_cache else None

    @property
    def n_slots(self) -> int:
        return self.pos.shape[0]

    @property
    def free_slots(self) -> int:
        """Slots a request may take now: free ones and those of parked rows (evicted when needed)."""
        return self.n_slots - len(self.active)

    @property
    def kv_bytes(self) -> int:
        """KV cache memory the active requests use: the positions each has written."""
        return sum(r.cached for r in self.active) * self.cache.bytes_per_position()

    @property
    def cached_bytes(self) -> int:
        """KV cache memory the parked rows of the prompt cache hold."""
        return self.prefixes.positions * self.cache.bytes_per_position() if self.prefixes is not None else 0

    @torch.inference_mode()
    def add(self, *reqs: Request) -> None:
        """Prefill `reqs` into the next free slots and emit their first tokens.

        Prompts of similar length are prefilled together, right-padded: a row never attends
        past its own position, so the padding's cache entries are never read, and later
        decode steps overwrite them.
        """
        hits = [r for r in reqs if r.prefix is not None]
        for req in hits:  # each takes a parked row over: no slot is needed beyond the one it held
            entry, req.reused = req.prefix
            req.prefix = None
            self.prefixes.hand_over(entry, len(self.active), req.reused)
            self._prefill([req], start=req.reused)
        for group in _similar_lengths([r for r in reqs if r not in hits]):
            while self.prefixes is not None and len(self.active) + len(group) > self.prefixes.lowest:
                self.prefixes.evict()  # the slots are needed for decoding
            self._prefill(group)

    def _prefill(self, group: list[Request], start: int = 0) -> None:
        """Prefill `group` into the next slots from position `start` (positions below it, reused from
        a parked row, are already in the cache) and sample each row's next token."""
        lo, n = len(self.active), len(group)
        t_start = time.perf_counter()
        contexts = [r.context_ids for r in group]
        lengths = [len(c) for c in contexts]
        ids = torch.zeros(n, max(lengths), dtype=torch.long)
        for row, req in enumerate(group):
            req.t_start = req.t_start or t_start  # a preempted request keeps its first start
            ids[row, : lengths[row]] = torch.tensor(contexts[row])
            req.cached = lengths[row]
        ids = ids.to(self.device)
        # Chunks bound one forward's work (rows x chunk) for long prompts or big vocabularies.
        chunk = max(1, _LOGITS_BUDGET // (n * self.vocab_size))
        cache = KVCache([k[lo : lo + n] for k in self.cache.k], [v[lo : lo + n] for v in self.cache.v])
        last = torch.empty(n, self.vocab_size, device=self.device)
        ends = torch.tensor(lengths) - 1  # each prompt's last position: the only logits sampling needs
        for at in range(start, ids.shape[1], chunk):
            width = min(chunk, ids.shape[1] - at)
            logits = self.model(ids[:, at : at + width], cache=cache, input_pos=self.pos.new_full((n,), at),
                                logits_at=(ends - at).clamp(0, width - 1))
            for row, length in enumerate(lengths):
                if at <= length - 1 < at + width:
                    last[row] = logits[row, 0]
        self.pos[lo : lo + n] = torch.tensor(lengths, device=self.device)
        self.active.extend(group)
        self._sampling = None
        self._penalty_state(group, ids, lengths, lo)
        tokens = self._sample(last, lo, lo + n)
        t_done = time.perf_counter()
        for req in group:
            req.t_prefill = req.t_prefill or t_done
        self._emit(group, tokens)

    def _penalty_state(self, group: list[Request], ids: Tensor, lengths: list[int], lo: int) -> None:
        """Rows lo.. of the penalties' state for a prefilled group: seen = the context so far,
        counts = the generated tokens (non-zero only for a preempted request prefilled again)."""
        if not any(r.params.has_penalties for r in group):
            return
        if self.seen is None:
            self.seen = torch.zeros(self.n_slots, self.sample_vocab, dtype=torch.bool, device=self.device)
            self.counts = torch.zeros(self.n_slots, self.sample_vocab, device=self.device)
        n = len(group)
        self.seen[lo : lo + n] = False
        self.counts[lo : lo + n] = 0
        for row, (req, length) in enumerate(zip(group, lengths)):
            context = ids[row, :length]
            self.seen[lo + row, context[context < self.sample_vocab]] = True
            if req.generated:
                generated = torch.tensor(req.generated, device=self.device)
                self.counts[lo + row].index_add_(0, generated, torch.ones_like(generated, dtype=self.counts.dtype))

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step: every active request gets one token; finished ones leave."""
        n = len(self.active)
        if n == 0:
            return
        positions = [r.cached for r in self.active]  # == self.pos[:n], without reading the tensor
        logits = self._step(self.last[:n, 0], self.pos[:n], self.cache, min(positions), max(positions))
        self.pos[:n] += 1
        for req in self.active:
            req.cached += 1
        self._emit(self.active, self._sample(logits, 0, n))

    def _sample(self, logits: Tensor, lo: int, hi: int) -> list[int | None]:
        """Each row's next token, or None for a row whose settings gave no valid token (it fails
        alone: its batch mates' tokens are drawn as if it were not there)."""
        reqs = self.active[lo:hi]
        batch = self._sampling if (lo, hi) == (0, len(self.active)) else None
        if batch is None:
            batch = SamplingBatch([r.params for r in reqs], self.device, [len(r.generated) for r in reqs])
            if (lo, hi) == (0, len(self.active)):
                self._sampling = batch
        raw = logits[:, : self.sample_vocab]
        logits = self._constrain(raw, reqs)
        try:
            token, tokens = self._draw(logits, batch, lo, hi)
        except _NoToken:
            tokens = self._sample_rows(logits, reqs, lo)
        else:
            self._note(token, lo, hi, batch.penalized)
        picked = [None if req.error is not None else t for req, t in zip(reqs, tokens)]
        _attach_logprobs(raw, reqs, picked)
        return picked

    def _constrain(self, logits: Tensor, reqs: list[Request]) -> Tensor:
        """Mask the rows of requests with an output constraint; a row it cannot continue fails alone."""
        constrained = [(row, r) for row, r in enumerate(reqs) if r.constraint is not None]
        if not constrained:
            return logits
        logits = logits.clone()
        for row, req in constrained:
            try:
                logits[row] = req.constraint.mask(logits[row])
            except YunqueError as e:
                req.error = e  # its row keeps plain logits for this draw, whose token is then dropped
        return logits

    def _draw(self, logits: Tensor, batch: SamplingBatch, lo: int, hi: int) -> tuple[Tensor, list[int]]:
        """Tokens under `batch`'s settings, as a tensor and a list; _NoToken when a row's draw is
        not a token id (non-finite probabilities give an index past the vocabulary) or raises."""
        try:
            if batch.penalized:
                # Rows without penalties never had their state reset: multiplying by 1 / adding 0 keeps them exact.
                token = sample(logits, batch, self.seen[lo:hi], self.counts[lo:hi])
            else:
                token = sample(logits, batch)
        except (RuntimeError, IndexError) as e:
            raise _NoToken(str(e)) from e
        tokens = token.tolist()
        if not all(0 <= t < self.sample_vocab for t in tokens):
            raise _NoToken("its probabilities were not finite numbers")
        return token, tokens

    def _sample_rows(self, logits: Tensor, reqs: list[Request], lo: int) -> list[int | None]:
        """Draw row by row, so the rows that fail are found; each row's stream is its own, so the
        others draw exactly what they would have drawn together."""
        self._sampling = None  # the batch's draw counters advanced; rebuild them from the requests
        tokens: list[int | None] = []
        for row, req in enumerate(reqs):
            if req.error is not None:
                tokens.append(None)
                continue
            one = SamplingBatch([req.params], self.device, [len(req.generated)])
            try:
                token, [picked] = self._draw(logits[row : row + 1], one, lo + row, lo + row + 1)
            except _NoToken as e:
                req.error = YunqueError(f"Sampling failed for this request ({e}); use less extreme sampling values.")
                tokens.append(None)
                continue
            self._note(token, lo + row, lo + row + 1, one.penalized)
            tokens.append(picked)
        return tokens

    def _note(self, token: Tensor, lo: int, hi: int, penalized: bool) -> None:
        """Record rows lo:hi's new tokens: the next step's input and the penalties' state."""
        if penalized:
            self.seen[lo:hi].scatter_(1, token[:, None], True)
            self.counts[lo:hi].scatter_add_(1, token[:, None], torch.ones_like(token[:, None], dtype=self.counts.dtype))
        self.last[lo:hi, 0] = token

    def _emit(self, reqs: list[Request], tokens: list[int | None]) -> None:
        done = []
        for req, token in zip(reqs, tokens):
            if req.cancelled or token is None:
                done.append((req, "cancelled" if token is not None else "error"))
                continue
            req.generated.append(token)
            reason = None
            if token in req.stop_ids:
                reason = "stop"
            else:
                piece = req.text.add(token) if req.text is not None else ""
                if piece:
                    req.pieces.append(piece)
                step = [req.step_logprob] if req.logprobs is not None and req.step_logprob is not None else None
                if step:
                    req.logprobs.extend(step)
                req.on_chunk(Chunk([token], piece, step))
                if req.constraint is not None:
                    req.constraint.advance(token)
                if (req.text is not None and req.text.stopped) or (req.constraint is not None and req.constraint.complete):
                    reason = "stop"
                elif len(req.generated) >= req.params.max_new_tokens or req.cached >= self.max_len:
                    reason = "length"
            if reason:
                done.append((req, reason))
        for req, reason in done:
            self.remove(req, reason)

    def remove(self, req: Request, reason: str) -> None:
        """Free `req`'s slot (moving the last active request into it) and report its result; with a
        prompt cache, a request that ended normally leaves its row parked for a later prompt."""
        if self.prefixes is not None and reason in ("stop", "length") and req.cached >= self.prefixes.min_reuse:
            self._park(req)
        else:
            self._vacate(req)
        if reason == "error" and req.error is not None:
            req.fail(req.error)
        else:
            req.finish(reason)

    @torch.inference_mode()  # callers may be outside it (cancelling, preempting); the penalty state is an inference tensor
    def _park(self, req: Request) -> None:
        """Move `req`'s row to the next slot down from the parked ones and park it, reservation and all."""
        slot, last, n = self.active.index(req), len(self.active) - 1, req.cached
        target = self.prefixes.lowest - 1
        if target == last and slot != last:  # no free slot: trade rows with the last decoding request
            other = self.active[last]
            self.cache.swap_positions(slot, last, max(n, other.cached))
            self.cache.release(slot, other.cached)
            for t in self._row_state():
                t[[slot, last]] = t[[last, slot]]
            self.active[slot], self.active[last], slot = other, req, last
        if target != slot:
            self.cache.copy_positions(slot, target, n)
        self._vacate(req, release=target != slot)
        self.cache.release(target, n)  # an earlier, longer occupant's positions
        self.prefixes.park(Parked(req.context_ids[:n], req.kv_reserved, req.budget))
        req.kv_reserved = 0  # the parked row holds it now

    def _row_state(self) -> list[Tensor]:
        """The per-slot tensors that move with a request's row."""
        return [t for t in (self.pos, self.last, self.seen, self.counts) if t is not None]

    def preempt(self, req: Request) -> None:
        """Take `req` out of its slot to free its memory, without ending it: its KV reservation goes
        back, and `add` prefills its context again later (vLLM's recompute preemption)."""
        self._vacate(req)
        req.release_kv()
        req.preemptions += 1

    @torch.inference_mode()  # callers may be outside it (cancelling, preempting); the penalty state is an inference tensor
    def _vacate(self, req: Request, release: bool = True) -> None:
        slot = self.active.index(req)
        last = len(self.active) - 1
        if slot != last:
            # Only the positions the moved request has written: its stale tail is never read, and
            # copying it would commit memory the lazily committed cache never needed.
            n = self.active[last].cached
            self.cache.copy_positions(last, slot, n)
            for t in self._row_state():
                t[slot] = t[last]
            self.active[slot] = self.active[last]
            self.cache.release(slot, n)
        if release:
            self.cache.release(last)  # the row that is free now gives its memory back
        self.active.pop()
        self._sampling = None

    def reset(self) -> list[Request]:
        """Empty every slot without reporting results (after a failed step); returns who was there."""
        reqs, self.active, self._sampling = self.active, [], None
        for slot in range(len(reqs)):
            self.cache.release(slot)
        if self.prefixes is not None:
            self.prefixes.clear()
        return reqs

    def cancel_flagged(self) -> None:
        for req in [r for r in self.active if r.cancelled]:
            self.remove(req, "cancelled")


def token_logprobs(logits: Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """Row i's log-softmax at `tokens[i]`, with its `top` likeliest ids and their log probabilities."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(list(tokens), device=logp.device)[:, None]).squeeze(1).tolist()
    values, indices = logp.topk(top, dim=-1) if top else (logp[:, :0], logp[:, :0].long())
    return [TokenLogprob(t, lp, list(zip(ti, tv))) for t, lp, ti, tv in zip(tokens, chosen, indices.tolist(), values.tolist())]


def _attach_logprobs(raw: Tensor, reqs: list[Request], tokens: list[int | None]) -> None:
    """Set `step_logprob` of the requests that asked for log probabilities, from the raw logits
    of their rows (one log-softmax and top-k over those rows only)."""
    rows = [row for row, (req, t) in enumerate(zip(reqs, tokens)) if req.logprobs is not None and t is not None]
    if not rows:
        return
    found = token_logprobs(raw[rows], [tokens[row] for row in rows], max(reqs[row].params.logprobs for row in rows))
    for row, lp in zip(rows, found):
        lp.top = lp.top[: reqs[row].params.logprobs]
        reqs[row].step_logprob = lp


class _NoToken(Exception):
    """A draw gave no token id (non-finite probabilities): which row, the row-by-row draw finds out."""


_LOGITS_BUDGET = 1 << 25  # rows x tokens x vocab per prefill forward


def _similar_lengths(reqs: Sequence[Request]) -> list[list[Request]]:
    """Groups to prefill together: longest first, a group grows while padding stays under a third of it."""
    groups: list[list[Request]] = []
    for req in sorted(reqs, key=lambda r: -r.context_length):
        group = groups[-1] if groups else None
        if group is not None:
            longest = group[0].context_length
            real = sum(r.context_length for r in group) + req.context_length
            if (len(group) + 1) * longest * 2 <= real * 3:
                group.append(req)
                continue
        groups.append([req])
    return groups


# ---------------------------------------------------------------------- request preparation


def sample_vocab(model: Transformer, tokenizer: Any = None) -> int:
    """How many ids may be sampled: the model's vocabulary, cut to the tokenizer's when it is smaller."""
    size = model.config.vocab_size
    return min(size, tokenizer.vocab_size) if tokenizer is not None else size


def prepare_prompt(ids: Sequence[int], params: SamplingParams, context: int, vocab_size: int) -> tuple[list[int], bool]:
    """Check a prompt's ids against the vocabulary and the context; truncate (keep the end) only on request."""
    ids = [int(t) for t in ids]
    if not ids:
        raise YunqueError("The prompt is empty; give at least one token.")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise YunqueError(f"Token id {bad[0]} is outside the model's vocabulary of {vocab_size}; check that the tokenizer matches the model.")
    if len(ids) <= context:
        return ids, False
    if not params.truncate:
        raise YunqueError(f"The prompt has {len(ids)} tokens but the context holds {context}; shorten it, or allow truncation to keep its end (`--truncate` on the command line, truncate=True in Python).")
    # Keep the end, leaving room for the answer (but never less than half the context of prompt).
    keep = max(context - params.max_new_tokens, context // 2)
    return ids[-keep:], True


def _stop_ids(params: SamplingParams, tokenizer: Any, model: Transformer) -> frozenset[int]:
    if params.stop_token_ids is not None:
        return frozenset(params.stop_token_ids)
    eos = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    if eos is None:
        eos = model.config.eos_token_id
    return frozenset() if eos is None else frozenset([eos])


def _encode(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise YunqueError("A text prompt needs a tokenizer; pass one, or pass token ids.")
        return tokenizer.encode(prompt)
    return list(prompt)


def make_request(model: Transformer, tokenizer: Any, prompt: str | Sequence[int], params: SamplingParams, context: int,
                 on_chunk: Callable[[Chunk], None], on_done: Callable[[GenerationResult], None]) -> Request:
    """Validate and tokenize in the caller's thread, so mistakes surface as YunqueErrors where they were made."""
    if params.stop and tokenizer is None:
        raise YunqueError("Stop strings need a tokenizer to decode text; pass one, or use stop_token_ids.")
    if params.json_object and tokenizer is None:
        raise YunqueError("JSON output needs a tokenizer to know what each token spells; pass one.")
    ids, truncated = prepare_prompt(_encode(tokenizer, prompt), params, context, model.config.vocab_size)
    text = TextStream(tokenizer, params.stop) if tokenizer is not None else None
    req = Request(ids, params, _stop_ids(params, tokenizer, model), text, truncated, on_chunk, on_done)
    if params.json_object:
        req.constraint = JsonConstraint(tokenizer)
    return req
