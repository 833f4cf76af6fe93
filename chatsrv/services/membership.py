"""A short-lived cache of conversation members for the hot paths (fan-out, typing).

A change of members (`changed`) drops the entry here at once and tells the other nodes
(cluster: over Redis), which drop theirs when the note arrives; if it never arrives (Redis
down) an entry lives at most `ttl` seconds. The cache only decides who gets a live event:
the database still checks membership on every write, and a member who missed a live event
gets it by `sync`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from chatsrv.domain.ports import Store


class MembershipCache:
    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 50_000,
                 notify: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._notify = notify
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, conversation_id: str) -> frozenset[str]:
        now = trio.current_time()
        hit = self._entries.get(conversation_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        members = frozenset(await self._store.member_ids(conversation_id))
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude but bounded; refills from the store
        self._entries[conversation_id] = (now + self._ttl, members)
        return members

    def invalidate(self, conversation_id: str) -> None:
        """Drop the entry (another node changed the members)."""
        self._entries.pop(conversation_id, None)

    async def changed(self, conversation_id: str) -> None:
        """Members changed here: drop the entry and tell the other nodes."""
        self.invalidate(conversation_id)
        if self._notify is not None:
            await self._notify(conversation_id)
