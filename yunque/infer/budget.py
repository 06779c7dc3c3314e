"""A KV memory budget shared by the engines of one server, counted in blocks of `BLOCK` positions.

A request holds blocks for the positions it has written (prompt plus the tokens generated so
far) and takes one more block each time it crosses a block boundary, as vLLM's paged cache
does, so memory follows use rather than the worst case. Requests larger than the whole
budget are refused at submission with the numbers. Engines run in their own threads, so the
counter is locked.
"""

from __future__ import annotations

import threading
from typing import Callable

from yunque.errors import YunqueError


def human_bytes(n: float) -> str:
    """`n` bytes in the largest binary unit that keeps it at least 1 (e.g. 100.0 KiB, 7.45 GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


BLOCK = 16  # positions per block: one 4 KiB page of a 64-wide float32 head in the lazily committed cache


def blocks(positions: int) -> int:
    """How many blocks hold `positions` cache positions."""
    return -(-positions // BLOCK)


class KVBudget:
    """`total` bytes of KV cache, reserved and released by requests as they enter and leave."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise YunqueError(f"The KV budget must be positive, got {total} bytes.")
        self.total = total
        self.used = 0
        self._lock = threading.Lock()
        self._holders: list[Callable[[], None]] = []  # how to ask each engine to drop its prompt cache

    def register(self, reclaim: Callable[[], None]) -> None:
        """An engine that parks finished rows (holding memory no request uses) says how to ask for it back."""
        with self._lock:
            self._holders.append(reclaim)

    def unregister(self, reclaim: Callable[[], None]) -> None:
        with self._lock:
            self._holders.remove(reclaim)

    def reclaim(self, asking: Callable[[], None] | None = None) -> None:
        """Ask every other engine to drop its parked rows (each does so in its own thread, soon)."""
        with self._lock:
            holders = [h for h in self._holders if h != asking]
        for reclaim in holders:
            reclaim()

    def check(self, need: int) -> None:
        """Refuse a request that could never fit, whatever else finishes."""
        if need > self.total:
            raise YunqueError(
                f"This request may fill {human_bytes(need)} of KV cache, more than the server's budget of {human_bytes(self.total)}; "
                "ask for fewer tokens (num_predict / max_tokens, num_ctx) or start the server with a larger --kv-budget."
            )

    def try_reserve(self, need: int, headroom: int = 0) -> bool:
        """Take `need` bytes if they fit with `headroom` bytes still free afterwards."""
        with self._lock:
            if self.used + need + headroom > self.total:
                return False
            self.used += need
            return True

    def release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
