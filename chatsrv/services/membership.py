"""A short-lived cache of conversation members for the hot paths (fan-out, typing, checks).

It never lags behind a change of members:

- Versioned: every change bumps a generation counter (`invalidate`), and a lookup that was
  reading the database while the members changed does not store what it read (before, a
  lookup started just before a removal refilled the cache just after it: the removed member
  kept receiving for 5 s, 3 rounds in 300).
- Confirmed: a change made on another node arrives as a note over Redis (`invalidate`). While
  this node cannot be sure it hears every note (`confirmed()` false: Redis down, or the
  subscription just came back and notes may have been missed), the cache is not used at
  all: every lookup asks the database.
- Bounded in time too (`ttl`), as a last resort.

Reads of history and sync check membership in the same statement as the read (storage),
and writes (sends, receipts) under the row lock: the cache only decides live delivery,
typing and the fast refusals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from chatsrv.domain.ports import Store


class MembershipCache:
    def __init__(self, store: Store, *, ttl: float, max_entries: int = 50_000,
                 notify: Callable[[str], Awaitable[None]] | None = None,
                 confirmed: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._notify = notify
        self._confirmed = confirmed
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, frozenset[str]]] = {}
        self._generation: dict[str, int] = {}  # bumped by every change seen here
        self._epoch = 0  # bumped when everything is dropped
        self._invalidated = trio.lowlevel.ParkingLot()

    async def members(self, conversation_id: str) -> frozenset[str]:
        """The members now. Raises Unavailable (storage down, nothing cached)."""
        now = trio.current_time()
        trusted = self._confirmed()
        if trusted:
            hit = self._entries.get(conversation_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        generation = self._generation.get(conversation_id, 0), self._epoch
        members = frozenset(await self._store.member_ids(conversation_id))
        if trusted and self._confirmed() and \
                generation == (self._generation.get(conversation_id, 0), self._epoch):
            if len(self._entries) >= self._max:
                self._entries.clear()  # crude but bounded; refills from the store
            self._entries[conversation_id] = (now + self._ttl, members)
        return members

    def invalidate(self, conversation_id: str | None) -> None:
        """Drop the entry (the members changed: here, or on another node); None drops every
        entry (notes from the other nodes may have been missed)."""
        self._invalidated.unpark_all()
        if conversation_id is None:
            self._epoch += 1
            self._entries.clear()
            self._generation.clear()
            return
        self._generation[conversation_id] = self._generation.get(conversation_id, 0) + 1
        self._entries.pop(conversation_id, None)
        if len(self._generation) > self._max:
            self.invalidate(None)

    async def wait_uncached(self, conversation_id: str) -> None:
        """Until nothing is cached for the conversation (a change reached this node)."""
        while conversation_id in self._entries:
            await self._invalidated.park()

    async def changed(self, conversation_id: str) -> None:
        """Members changed here: drop the entry and tell the other nodes (before the change
        is reported to the client, so they drop theirs within a round trip)."""
        self.invalidate(conversation_id)
        if self._notify is not None:
            await self._notify(conversation_id)
