"""Coalescing of concurrent lookups: many callers, one storage operation per batch.

While a fetch runs, new keys wait for the next one, so a burst of N lookups (a connect
storm) costs about N / batch operations instead of N, and a lone lookup waits for nothing
but its own fetch. The same idea as the group commit, for reads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

from chatsrv.domain.errors import ChatError, Internal, Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class _Waiter(Generic[V]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[K, V]):
    """`await get(key)` → `fetch_many(keys)[key]`, keys of concurrent callers fetched
    together (at most max_batch per call). `run` is the one task that fetches."""

    def __init__(self, fetch_many: Callable[[Sequence[K]], Awaitable[dict[K, V]]], *,
                 max_batch: int) -> None:
        self._fetch_many = fetch_many
        self._max_batch = max_batch
        self._queue: list[tuple[K, _Waiter[V]]] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._running = False

    async def get(self, key: K) -> V:
        if not self._running:  # starting, restarting after a failure, or stopping
            raise Unavailable("the node is not ready for this lookup; try again")
        waiter: _Waiter[V] = _Waiter()
        self._queue.append((key, waiter))
        self._lot.unpark()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.value  # type: ignore[return-value]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: fetch what is queued, hand each caller its value (or the fetch's error:
        a ChatError as it is, anything else as Internal, logged)."""
        self._running = True
        task_status.started()
        try:
            while True:
                while not self._queue:
                    await self._lot.park()
                batch = self._queue[:self._max_batch]
                del self._queue[:self._max_batch]
                keys = list(dict.fromkeys(key for key, _ in batch))
                try:
                    found = await self._fetch_many(keys)
                except Exception as exc:  # handed to every caller of the batch
                    if not isinstance(exc, ChatError):
                        log.exception("a coalesced fetch of %d keys failed", len(keys))
                        exc = Internal("lookup failed")
                    for _, waiter in batch:
                        waiter.error = exc
                        waiter.done.set()
                    continue
                for key, waiter in batch:
                    waiter.value = found[key]
                    waiter.done.set()
        finally:
            self._running = False
            for _, waiter in self._queue:
                waiter.error = Unavailable("the node is stopping")
                waiter.done.set()
