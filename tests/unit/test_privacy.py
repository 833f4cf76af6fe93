"""The privacy cache never serves blocks or settings that changed (versioned, unused while
this node may miss notes, like the member cache), and the watermark masking rules."""

from __future__ import annotations

from datetime import UTC, datetime

import trio

from chatsrv.domain.model import Privacy, User, Watermarks
from chatsrv.services.privacy import PrivacyCache, shown_marks


class SlowBlocks:
    """The part of the Blocks port the cache uses, with a lookup that can be held half-way."""

    def __init__(self) -> None:
        self.blocked: set[str] = set()
        self.lookups = 0
        self.hold: trio.Event | None = None
        self.reading = trio.Event()

    async def privacy(self, user_id: str) -> Privacy:
        self.lookups += 1
        read = Privacy(blocked=frozenset(self.blocked))
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        return read


async def test_a_lookup_racing_a_block_does_not_refill_the_cache() -> None:
    blocks = SlowBlocks()
    notes: list[list[str]] = []

    async def notify(user_ids: list[str]) -> None:
        notes.append(user_ids)

    cache = PrivacyCache(blocks, ttl=60, notify=notify)  # type: ignore[arg-type]
    blocks.hold = trio.Event()
    got: list[Privacy] = []

    async def lookup() -> None:
        got.append(await cache.of("a"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lookup)
        await blocks.reading.wait()  # read "no blocks", not yet returned
        blocks.blocked.add("b")
        await cache.changed(["a", "b"])  # a blocked b meanwhile
        blocks.hold.set()
    assert got == [Privacy()]  # the racing caller saw the old state
    assert notes == [["a", "b"]]  # the other nodes were told
    blocks.hold = None
    assert await cache.between("a", "b")  # and it was not cached
    assert await cache.between("a", "b")
    assert blocks.lookups == 2  # cached from then on


async def test_an_unconfirmed_cache_asks_the_database_every_time() -> None:
    blocks = SlowBlocks()
    confirmed = True
    cache = PrivacyCache(blocks, ttl=60, confirmed=lambda: confirmed)  # type: ignore[arg-type]
    await cache.of("a")
    await cache.of("a")
    assert blocks.lookups == 1
    confirmed = False  # Redis down: a block made on another node would go unheard
    blocks.blocked.add("b")
    assert await cache.between("a", "b")
    assert blocks.lookups == 2
    confirmed = True
    cache.invalidate(None)  # the subscription came back: everything cached is dropped
    assert await cache.between("a", "b") and blocks.lookups == 3
    cache.invalidate(["a"])  # a note from another node
    assert not cache.cached("a")


def _user(uid: str, *, receipts: bool = True) -> User:
    return User(id=uid, username=uid, email=f"{uid}@x", display_name=uid,
                created_at=datetime(2026, 1, 1, tzinfo=UTC), read_receipts_visible=receipts)


def test_watermarks_shown_to_a_viewer() -> None:
    marks = Watermarks(5, 4)
    users = {"b": _user("b"), "h": _user("h", receipts=False)}
    me = Privacy(blocked=frozenset({"b"}))
    assert shown_marks(me, "a", "a", marks, users) == marks  # mine: the truth
    assert shown_marks(me, "a", "b", marks, users) == Watermarks(0, 0)  # blocked: nothing
    assert shown_marks(me, "a", "h", marks, users) == Watermarks(5, 0)  # hides reads
    assert shown_marks(Privacy(), "a", "b", marks, users) == marks
    # the one who hides reads still sees their own
    assert shown_marks(Privacy(), "h", "h", marks, users) == marks
