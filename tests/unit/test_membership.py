"""The member cache never serves members that changed: versioned, and unused while this node
cannot be sure it hears every change."""

from __future__ import annotations

import trio
import trio.testing

from chatsrv.services.membership import MembershipCache


class SlowMembers:
    """The part of the Store the cache uses, with a lookup that can be held half-way."""

    def __init__(self, members: set[str]) -> None:
        self.members = members
        self.lookups = 0
        self.hold: trio.Event | None = None
        self.reading = trio.Event()

    async def member_ids(self, conversation_id: str) -> list[str]:
        self.lookups += 1
        read = sorted(self.members)
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        return read


async def test_a_lookup_racing_a_removal_does_not_refill_the_cache() -> None:
    store = SlowMembers({"a", "b", "c"})
    cache = MembershipCache(store, ttl=60)  # type: ignore[arg-type]
    store.hold = trio.Event()
    got: list[frozenset[str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _lookup(cache, got))
        await store.reading.wait()  # the lookup read {a, b, c}, not yet returned
        store.members.discard("c")
        await cache.changed("conv")  # c removed meanwhile
        store.hold.set()
    assert got == [frozenset({"a", "b", "c"})]  # the racing caller saw the old members
    store.hold = None
    assert await cache.members("conv") == frozenset({"a", "b"})  # but did not cache them


async def _lookup(cache: MembershipCache, got: list[frozenset[str]]) -> None:
    got.append(await cache.members("conv"))


async def test_an_unconfirmed_cache_asks_the_database_every_time() -> None:
    store = SlowMembers({"a", "b"})
    confirmed = True
    cache = MembershipCache(store, ttl=60, confirmed=lambda: confirmed)  # type: ignore[arg-type]
    await cache.members("conv")
    await cache.members("conv")
    assert store.lookups == 1
    confirmed = False  # Redis down: a removal on another node would go unheard
    store.members.discard("b")
    assert await cache.members("conv") == frozenset({"a"})
    assert await cache.members("conv") == frozenset({"a"})
    assert store.lookups == 3
    confirmed = True
    cache.invalidate(None)  # the subscription came back: everything cached is dropped
    assert await cache.members("conv") == frozenset({"a"})
    assert store.lookups == 4
