"""The C heap (glibc): what the node does so that the memory it holds is what it uses.

Why. asyncio's socket transports receive into a fresh 256 KiB buffer per read (asyncpg's
connections, redis-py's) and cut it down to the bytes that arrived. glibc serves the first
such buffer with mmap; once it is freed, glibc's dynamic threshold moves above it and every
later one comes from the heap, where the cut-down buffers and the long-lived objects placed
in their remainders leave holes the next 256 KiB buffer does not fit. Measured in the soak
(bench/soak.py, 1,000 sockets, 100 msg/s, PostgreSQL): the heap grew 2.8 MiB a minute while
the bytes in use stayed at 18 MB (malloc_stats: 34 MB held for 18.5 MB in use after six
minutes).

So, at start (`tune_malloc`), the mmap threshold is pinned at glibc's own default of
128 KiB: those buffers are always mapped and unmapped whole, and the heap stays flat
(+1.5 MiB in 8 minutes of the same soak). The price is ~20 µs per read that maps its buffer
(23-26 µs instead of 3-5 µs, a socketpair loop), one read per storage operation or commit
batch. An operator's own MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES is left alone. And every
MALLOC_TRIM_INTERVAL (`HeapTrimmer`), `malloc_trim(0)` hands the free pages inside the heap
back to the system, for whatever else fragments it. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import trio

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default, fixed: no dynamic raise


def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_malloc() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); True if it was pinned here.
    Call once, at process start, before the event loop runs."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class HeapTrimmer:
    """Owns the periodic `malloc_trim`; `trims` and `trim_seconds` are for /metrics."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.trims = 0
        self.trim_seconds = 0.0
        libc = _libc()
        self._trim: Callable[[int], int] | None = libc.malloc_trim if libc is not None else None

    @property
    def available(self) -> bool:
        return self._trim is not None and self.interval > 0

    def trim(self) -> bool:
        """Return the heap's free pages to the system now; True if any were returned. Blocks
        the thread for the walk of the free lists (sub-millisecond at tens of MB)."""
        if self._trim is None:
            return False
        began = time.perf_counter()
        released = bool(self._trim(0))
        self.trim_seconds += time.perf_counter() - began
        self.trims += 1
        return released

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Trim every `interval` seconds, for ever (cancellable at each sleep)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.trim()
