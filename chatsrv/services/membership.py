"""A short-lived cache of conversation members for the hot paths (fan-out, typing).

Changes made on this node invalidate at once; on other nodes an entry lives at most `ttl`
seconds. The cache only decides who gets a live event: the database still checks membership
on every write, and a member who missed a live event gets it by `sync`.
"""

from __future__ import annotations

import trio

from chatsrv.domain.ports import Store


class MembershipCache:
    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 50_000) -> None:
        self._store = store
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
        self._entries.pop(conversation_id, None)
