"""In-memory full-text search: the SearchIndex port over a MemoryStore's messages.

No index to keep: each search reads the store's conversations as they are now (an edited
message by its current content, a deleted one with content "" matching nothing), so it is
always in step, as the SQL indexes kept by the databases are. A linear scan of the user's
conversations: fine for tests and the embedded single-user case, not for millions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatsrv.adapters.storage.memory.base import _atomic, _count, _Faults, _ts, _uuid
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.model import Message
from chatsrv.domain.search import SearchCursor, SearchQuery, matches


class MemorySearchIndex(_Faults):
    """Implements domain.ports.SearchIndex beside a MemoryStore (as the SQL index beside
    the messages table)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    @_atomic
    def search_messages(
        self, user_id: str, query: SearchQuery, *, conversation_id: str | None,
        before: SearchCursor | None, limit: int,
    ) -> list[Message]:
        uid = _uuid(user_id, "user_id")
        limit = _count(limit, "LIMIT")
        only = None if conversation_id is None else _uuid(conversation_id, "conversation_id")
        after = None if before is None else (_ts(before.created_at),
                                             _uuid(before.message_id, "message_id"))
        found: list[Message] = []
        for conv in self._store._conversations.values():
            if uid not in conv.members or (only is not None and conv.id != only):
                continue
            for m in conv.messages:
                if after is not None and (m.created_at, m.id) >= after:
                    continue
                if matches(query, m.content):
                    found.append(m)
        found.sort(key=lambda m: (m.created_at, m.id), reverse=True)
        return found[:limit]


if TYPE_CHECKING:  # satisfies its port (checked by mypy)
    from chatsrv.domain.ports import SearchIndex

    _index: SearchIndex = MemorySearchIndex(MemoryStore())
