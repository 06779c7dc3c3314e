"""Sampling settings and the batched next-token sampler.

`SamplingParams` is what a caller asks for (validated, one sentence per mistake).
`SamplingBatch` turns the settings of the rows decoded together into tensors once, when
the batch changes, so each decode step is a handful of vectorised ops whatever mix of
settings the rows carry. Order of operations follows HF/vLLM: penalties, then greedy
argmax or temperature, top-k, top-p, min-p and a draw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from yunque.errors import YunqueError
from yunque.infer.options import MAX_TEMPERATURE, MIN_PENALTY, MIN_TEMPERATURE

MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop.

    `temperature == 0` (or `greedy=True`) means greedy decoding. `top_k == 0`, `top_p == 1`
    and `min_p == 0` switch those filters off. `repetition_penalty` (HF/CTRL style) applies
    to every token already in the prompt or the output; `frequency_penalty` and
    `presence_penalty` (OpenAI style) to tokens of the output. `stop_token_ids=None` means
    the model's end-of-text token; `stop` strings end generation and are not emitted.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None
    greedy: bool = False
    truncate: bool = False  # keep the end of a prompt that does not fit the context, instead of an error
    json_object: bool = False  # constrain the output to one JSON object (ends when it closes; needs a tokenizer)
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit before sampling (OpenAI's, -100..100)
    logprobs: int | None = None  # report each token's log probability and this many top alternatives (0-20)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.validate()

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise YunqueError(f"Invalid sampling setting: {msg}.")

        # Ranges keep every value meaningful in float32, where sampling runs: a temperature or a
        # repetition penalty of 1e-300 is 0 there and would divide logits into infinities.
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")
        need(self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE,
             f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE} and {MAX_TEMPERATURE:g}, got {self.temperature}")
        need(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 means off), got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p}")
        need(MIN_PENALTY <= self.repetition_penalty <= 1 / MIN_PENALTY,
             f"repetition_penalty must be between {MIN_PENALTY} and {1 / MIN_PENALTY:g} (1 means off), got {self.repetition_penalty}")
        need(-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        need(-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        need(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens}")
        need(self.seed is None or isinstance(self.seed, int), f"seed must be an integer or None, got {self.seed!r}")
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        need(self.stop_token_ids is None or all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be non-negative token ids")
        need(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"logprobs must be an integer from 0 to {MAX_LOGPROBS} (alternatives per token) or None, got {self.logprobs!r}")
        for token, bias in (self.logit_bias or {}).items():
            need(isinstance(token, int) and token >= 0, f"logit_bias keys must be token ids, got {token!r}")
            need(isinstance(bias, (int, float)) and math.isfinite(bias) and -100 <= bias <= 100, f"logit_bias values must be between -100 and 100, got {bias!r}")

    @classmethod
    def from_kwargs(cls, params: "SamplingParams | None" = None, **kwargs: Any) -> "SamplingParams":
        """`params` with `kwargs` replacing its fields; an unknown keyword is a YunqueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise YunqueError(f"Unknown sampling option(s) {', '.join(unknown)}; known options are {', '.join(sorted(names))}.")
        if params is None:
            return cls(**kwargs)
        return dataclasses.replace(params, **kwargs) if kwargs else params


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's step and finaliser (Steele et al. 2014): a well-mixed 64-bit function of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(key: int, draw: int) -> float:
    """Number `draw` of the random stream `key`, in (0, 1) and never 0 or 1 (52 random bits)."""
    return ((_splitmix64(key ^ _splitmix64(draw)) >> 12) + 0.5) / (1 << 52)


class SamplingBatch:
    """The sampling settings of the rows decoded together, as tensors on the logits' device.

    Every row samples from its own counter-based random stream: draw i of a row is a hash of
    its key and i, where the key is the row's seed (or, unseeded, a number drawn from torch's
    global generator). A seeded request so samples the same tokens whatever else runs beside
    it, the draws of all rows cost one small tensor per step, and a batch rebuilt when requests
    join or leave carries each stream on from `draws` (how many each row has made).
    """

    def __init__(self, params: Sequence[SamplingParams], device: torch.device, draws: Sequence[int] | None = None) -> None:
        self.params = list(params)
        self.device = device
        self.keys = [p.seed & _MASK64 if p.seed is not None else int(torch.randint(1 << 62, ())) for p in params]
        self.draws = list(draws) if draws is not None else [0] * len(self.params)
        self.all_greedy = all(p.is_greedy for p in params)
        self.penalized = any(p.has_penalties for p in params)
        self.repeats = any(p.repetition_penalty != 1.0 for p in params)
        self.counts_output = any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params)
        self.any_greedy = any(p.is_greedy for p in params)

        def col(values: Iterable[float]) -> Tensor:
            return torch.tensor(list(values), dtype=torch.float32, device=device)[:, None]

        self.greedy_mask = torch.tensor([p.is_greedy for p in params], device=device)
        # Greedy rows get temperature 1 so the division is harmless; their draw is replaced by the argmax.
        self.temperature = col(1.0 if p.is_greedy else p.temperature for p in params)
        self.top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=device)[:, None]
        self.top_p = col(p.top_p for p in params)
        self.min_p = col(p.min_p for p in params)
        # Rows with a top-k or top-p draw among their ranked candidates, the others in vocabulary order:
        # which order a row uses must not depend on its batch mates, or a seed would not reproduce.
        ranked = [p.top_k > 0 or p.top_p < 1 for p in params]
        self.ranked = torch.tensor(ranked, device=device)
        self.needs_sort = any(r for r, p in zip(ranked, params) if not p.is_greedy)
        self.any_unranked = any(not r for r, p in zip(ranked, params) if not p.is_greedy)
        # When every sampled row has a top-k, only the largest k ranks matter: a top-k, not a full sort.
        ks = [p.top_k for p in params if not p.is_greedy]
        self.sort_k = max(ks) if ks and min(ks) > 0 else None
        self.needs_min_p = any(p.min_p > 0 for p in params if not p.is_greedy)
        # logit_bias as (row, token, bias) triples: one indexed add per step for all biased rows.
        triples = [(row, t, b) for row, p in enumerate(params) for t, b in (p.logit_bias or {}).items()]
        self.bias_index = (torch.tensor([r for r, _, _ in triples], dtype=torch.long, device=device),
                           torch.tensor([t for _, t, _ in triples], dtype=torch.long, device=device)) if triples else None
        self.bias_values = torch.tensor([b for _, _, b in triples], dtype=torch.float32, device=device)
        self.repetition = col(p.repetition_penalty for p in params)
        self.frequency = col(p.frequency_penalty for p in params)
        self.presence = col(p.presence_penalty for p in params)

    def uniforms(self) -> Tensor:
        """Each row's next draw, (B, 1) in (0, 1); advances every row's stream by one."""
        u = [uniform(key, draw) for key, draw in zip(self.keys, self.draws)]
        self.draws = [d + 1 for d in self.draws]
        return torch.tensor(u, dtype=torch.float64, device=self.device)[:, None]


def apply_penalties(logits: Tensor, seen: Tensor, counts: Tensor, batch: SamplingBatch) -> Tensor:
    """Repetition penalty on tokens in `seen` (B, V) bool; frequency/presence on output `counts` (B, V).

    The repetition penalty touches only the seen entries (a few hundred of the vocabulary per
    row), so it is applied to those alone rather than by whole-vocabulary passes.
    """
    logits = logits.clone()
    if batch.repeats:
        old = logits[seen]
        rep = batch.repetition.expand_as(logits)[seen]
        logits[seen] = torch.where(old > 0, old / rep, old * rep)
    if batch.counts_output:
        logits -= batch.frequency * counts + batch.presence * (counts > 0).to(logits.dtype)
    return logits


def sample(logits: Tensor, batch: SamplingBatch, seen: Tensor | None = None, counts: Tensor | None = None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V) under each row's settings."""
    logits = logits.float()
    if batch.bias_index is not None:
        logits = logits.index_put(batch.bias_index, batch.bias_values, accumulate=True)
    if batch.penalized:
        logits = apply_penalties(logits, seen, counts, batch)
    if batch.all_greedy:
        return logits.argmax(dim=-1)
    probs = (logits / batch.temperature).softmax(dim=-1)
    u = batch.uniforms()
    drawn = None
    if batch.any_unranked:
        plain = probs
        if batch.needs_min_p:
            plain = probs.masked_fill(probs < batch.min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        drawn = _inverse_cdf(plain, u)
    if batch.needs_sort:
        # Everything after the ranking happens among the candidates (k of them with a top-k),
        # not over the vocabulary: the filters and the draw.
        if batch.sort_k is not None and batch.sort_k < probs.shape[-1]:
            sorted_probs, order = probs.topk(batch.sort_k, dim=-1)  # largest first, as the sort's head
        else:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(sorted_probs.shape[-1], device=probs.device)[None, :]
        # top-k keeps ranks below k (k == 0: all); top-p keeps a token while the mass before it is below p,
        # so the most likely token always survives; min-p compares with the top probability (rank 0).
        drop = (batch.top_k > 0) & (rank >= batch.top_k)
        drop |= (sorted_probs.cumsum(dim=-1) - sorted_probs) >= batch.top_p
        if batch.needs_min_p:
            drop |= sorted_probs < batch.min_p * sorted_probs[:, :1]
        kept = sorted_probs.masked_fill(drop, 0.0)
        ranked = order.gather(-1, _inverse_cdf(kept, u)[:, None]).squeeze(-1)
        drawn = ranked if drawn is None else torch.where(batch.ranked, ranked, drawn)
    return torch.where(batch.greedy_mask, logits.argmax(dim=-1), drawn) if batch.any_greedy else drawn


def _inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Column j of each row with probability weights[j] / sum(weights), given u (B, 1) in (0, 1):
    the first column whose running sum reaches u * total. Filtered (zero) columns are never
    picked, so nothing needs renormalising, and a row's pick depends only on its own weights
    and draw (columns of zeros after its candidates change nothing)."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Strictly above 0 and at most the total, whatever the rounding: a zero column is never the first to reach it.
    target = torch.minimum((u * total).to(cdf.dtype).clamp_(min=torch.finfo(cdf.dtype).tiny), total)
    return torch.searchsorted(cdf, target).squeeze(-1)
