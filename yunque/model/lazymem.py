"""CPU buffers whose memory is committed page by page as it is written, and given back on demand.

A KV cache holds `slots × context` positions, but a request uses only the positions it has
written (prompt plus tokens so far). On a CPU the MMU can keep the difference virtual: an
anonymous, unreserved mapping reads as zeros and takes no memory until a page is written,
and `madvise(MADV_DONTNEED)` returns a freed slot's pages (they read as zeros again). So a
32-slot cache of a 128k-context model costs address space, not RAM, and resident memory
follows the tokens in use in 4 KiB steps (16 positions of a 64-wide head in float32), while
the decode step keeps its contiguous views. Elsewhere (CUDA, Windows) buffers are plain
zero tensors, as before.
"""

from __future__ import annotations

import math
import mmap
import sys

import torch

# Linux's MAP_NORESERVE (Python's mmap module does not export it): no swap is set aside for the
# mapping, so a cache far larger than RAM can be mapped and only its written pages count.
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
LAZY = hasattr(mmap, "MAP_ANONYMOUS") and hasattr(mmap, "MADV_DONTNEED")


class LazyZeros:
    """A zero tensor of `shape` on the CPU backed by an anonymous mapping (see the module docstring)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        numel = math.prod(shape)
        self._map = mmap.mmap(-1, max(1, numel * self.itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE)
        self.tensor = torch.frombuffer(self._map, dtype=dtype, count=numel).view(shape)

    def release(self, start: int, end: int) -> None:
        """Give back the whole pages inside elements [start, end) of the flat tensor; they read as zeros after."""
        lo = -(-start * self.itemsize // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = end * self.itemsize // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, LazyZeros | None]:
    """A zero tensor, lazily committed where the platform allows (CPU with mmap); else a plain one."""
    if LAZY and torch.device(device).type == "cpu":
        buffer = LazyZeros(shape, dtype)
        return buffer.tensor, buffer
    return torch.zeros(shape, dtype=dtype, device=device), None
