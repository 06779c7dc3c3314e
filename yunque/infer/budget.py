"""A KV memory budget shared by the engines of one server: a request is admitted only when the
cache positions it may fill (prompt plus max_new_tokens, within the context) fit, so memory
cannot run out mid-answer; it waits otherwise, and a request larger than the whole budget
is refused with the numbers. Engines run in their own threads, so the counter is locked.
"""

from __future__ import annotations

import threading

from yunque.errors import YunqueError


def human_bytes(n: float) -> str:
    """`n` bytes in the largest binary unit that keeps it at least 1 (e.g. 100.0 KiB, 7.45 GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


class KVBudget:
    """`total` bytes of KV cache, reserved and released by requests as they enter and leave."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise YunqueError(f"The KV budget must be positive, got {total} bytes.")
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def check(self, need: int) -> None:
        """Refuse a request that could never fit, whatever else finishes."""
        if need > self.total:
            raise YunqueError(
                f"This request may fill {human_bytes(need)} of KV cache, more than the server's budget of {human_bytes(self.total)}; "
                "ask for fewer tokens (num_predict / max_tokens, num_ctx) or start the server with a larger --kv-budget."
            )

    def try_reserve(self, need: int) -> bool:
        with self._lock:
            if self.used + need > self.total:
                return False
            self.used += need
            return True

    def release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
