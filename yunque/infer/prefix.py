"""Prompt caching: finished requests' cache rows stay in the top free slots of a `Batch`, so a
later prompt that starts with the same tokens (a conversation's next turn, a shared system
prompt) takes the row over and prefills only the rest, as Ollama's slots and vLLM's prefix
cache do.

Slots fill from both ends: decoding requests sit in 0..n-1 (the decode step reads a prefix
view), parked rows in the top slots, `rows[i]` in slot `n_slots - 1 - i`. A parked row keeps
its KV reservation; it is evicted, least recently parked first, when a request needs its
slot or its memory, or when another engine sharing the budget asks (`KVBudget.reclaim`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from yunque.infer.budget import BLOCK, KVBudget
from yunque.model.transformer import KVCache

_clock = itertools.count()


@dataclass(eq=False)
class Parked:
    """A finished request's cache row: the tokens its positions hold, and the memory it keeps."""

    tokens: list[int]
    kv_reserved: int = 0  # bytes of `budget` this row holds
    budget: KVBudget | None = None
    parked_at: int = field(default_factory=lambda: next(_clock))

    def release(self) -> None:
        if self.budget is not None and self.kv_reserved:
            self.budget.release(self.kv_reserved)
        self.kv_reserved = 0


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """The parked rows of one cache (see the module docstring); the `Batch` owning the cache moves
    rows between the two ends, this class keeps the top end packed."""

    def __init__(self, cache: KVCache, n_slots: int, min_reuse: int = BLOCK) -> None:
        self.cache, self.n_slots, self.min_reuse = cache, n_slots, min_reuse
        self.rows: list[Parked] = []

    def slot(self, entry: Parked) -> int:
        return self.n_slots - 1 - self.rows.index(entry)

    @property
    def lowest(self) -> int:
        """The lowest slot a parked row holds (n_slots when none is parked)."""
        return self.n_slots - len(self.rows)

    @property
    def positions(self) -> int:
        return sum(len(entry.tokens) for entry in self.rows)

    def find(self, ids: list[int], exclude: list[Parked]) -> tuple[Parked, int] | None:
        """The parked row sharing the longest prefix with `ids` (at least `min_reuse` tokens, and
        never all of `ids`: the last token is prefilled for its logits), and that length."""
        best, longest = None, self.min_reuse - 1
        for entry in self.rows:
            if entry in exclude:
                continue
            n = min(shared_prefix(entry.tokens, ids), len(ids) - 1)
            if n > longest:
                best, longest = entry, n
        return None if best is None else (best, longest)

    def park(self, entry: Parked) -> None:
        """Register `entry` in the next slot down (its row must already be copied there)."""
        self.rows.append(entry)

    def hand_over(self, entry: Parked, dst: int, n: int) -> None:
        """Put `entry`'s first `n` positions in slot `dst` (the next decoding slot: free, or the lowest
        parked row's) and forget the entry; its memory stays with the request taking the row."""
        if dst == self.lowest and entry is not self.rows[-1]:  # no free slot: trade rows with the lowest
            other, src = self.rows[-1], self.slot(entry)
            self.cache.swap_positions(src, dst, max(n, len(other.tokens)))
            self.cache.release(src, len(other.tokens))
            i = self.rows.index(entry)
            self.rows[i], self.rows[-1] = other, entry
        if dst == self.lowest:
            self.rows.pop()
        else:
            self.cache.copy_positions(self.slot(entry), dst, n)
            self.take(entry)
        self.cache.release(dst, n)  # the row's tokens past the shared prefix are not this request's

    def take(self, entry: Parked) -> None:
        """Remove `entry`, keeping the top end packed: the lowest parked row moves into its slot, and
        the lowest slot is given back."""
        i, lowest = self.rows.index(entry), self.rows[-1]
        if lowest is not entry:
            dst = self.slot(entry)
            self.cache.copy_positions(self.lowest, dst, len(lowest.tokens))
            self.cache.release(dst, len(lowest.tokens))
            self.rows[i] = lowest
        self.cache.release(self.lowest)
        self.rows.pop()

    def evict(self, exclude: list[Parked] | None = None) -> bool:
        """Drop the least recently parked row not in `exclude`, memory and all; False if none is left."""
        candidates = [entry for entry in self.rows if entry not in (exclude or [])]
        if not candidates:
            return False
        entry = min(candidates, key=lambda e: e.parked_at)
        self.take(entry)
        entry.release()
        return True

    def clear(self) -> None:
        """Drop every parked row, memory and all."""
        for i, entry in enumerate(self.rows):
            self.cache.release(self.n_slots - 1 - i)
            entry.release()
        self.rows = []
