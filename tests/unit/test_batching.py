"""The Coalescer: concurrent lookups become one fetch; errors reach every caller."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from chatsrv.domain.errors import Internal, Unavailable
from chatsrv.services.batching import Coalescer


async def test_concurrent_lookups_share_fetches_and_each_gets_its_value() -> None:
    calls: list[list[int]] = []
    gate = trio.Event()

    async def fetch_many(keys: Sequence[int]) -> dict[int, str]:
        calls.append(list(keys))
        await gate.wait()  # the first fetch is slow: the rest queue behind it
        return {k: f"v{k}" for k in keys}

    coalescer = Coalescer(fetch_many, max_batch=4)
    got: dict[int, str] = {}

    async def one(k: int) -> None:
        got[k] = await coalescer.get(k)

    async with trio.open_nursery() as nursery:
        await nursery.start(coalescer.run)
        async with trio.open_nursery() as callers:
            callers.start_soon(one, 0)
            await trio.testing.wait_all_tasks_blocked()
            for k in (1, 2, 3, 2, 4, 5):
                callers.start_soon(one, k)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        nursery.cancel_scope.cancel()
    assert got == {k: f"v{k}" for k in range(6)}
    # 0 alone; the 6 waiters queued behind it in two fetches of at most max_batch
    # (trio starts tasks in no fixed order); a key repeated within a fetch asked once
    assert calls[0] == [0] and len(calls) == 3
    assert all(len(c) == len(set(c)) <= 4 for c in calls)
    assert set(calls[1]) | set(calls[2]) == {1, 2, 3, 4, 5}


async def test_a_failed_fetch_fails_its_callers_and_the_next_ones_go_on() -> None:
    async def fetch_many(keys: Sequence[int]) -> dict[int, int]:
        if 13 in keys:
            raise Unavailable("storage down")
        if 7 in keys:
            raise LookupError("a bug")
        return {k: k * 2 for k in keys}

    coalescer = Coalescer(fetch_many, max_batch=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(coalescer.run)
        with pytest.raises(Unavailable, match="storage down"):
            await coalescer.get(13)
        with pytest.raises(Internal):  # a bug is logged; callers see a typed error
            await coalescer.get(7)
        assert await coalescer.get(21) == 42
        nursery.cancel_scope.cancel()


async def test_get_without_run_is_an_error() -> None:
    async def fetch_many(keys: Sequence[int]) -> dict[int, int]:
        return {}

    with pytest.raises(Unavailable):
        await Coalescer(fetch_many, max_batch=1).get(1)
