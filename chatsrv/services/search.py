"""Full-text search of the caller's messages (`GET /api/search`).

Rules: only conversations the caller is a member of now (the index reads membership in the
same statement); `conversation_id` narrows to one of them (someone else's is NotFound, as
everywhere); newest first; pages by an opaque cursor (the last result's created_at and
id); snippets are HTML with `<mark>` around the hits and everything else escaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatsrv.domain.errors import Invalid, NotFound
from chatsrv.domain.model import Message, parse_id
from chatsrv.domain.ports import SearchIndex
from chatsrv.domain.search import decode_cursor, encode_cursor, parse_query, snippet
from chatsrv.services.membership import MembershipCache

# stored messages as one user is shown them (MessagingService.present)
Present = Callable[[str, list[Message]], Awaitable[list[Message]]]


@dataclass(frozen=True, slots=True)
class SearchHit:
    message: Message
    snippet: str


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: list[SearchHit]
    has_more: bool
    next_before: str | None  # the cursor of the next page; None when there is none


class SearchService:
    def __init__(self, index: SearchIndex, members: MembershipCache, *, default_limit: int,
                 max_limit: int, present: Present | None = None) -> None:
        self._index = index
        # reactions as the caller sees them, signed attachment URLs (MessagingService.present)
        self._present = present
        self._members = members
        self._default = default_limit
        self._max = max_limit

    async def search(self, user_id: str, q: str, *, conversation_id: str | None = None,
                     limit: int | None = None, before: str | None = None) -> SearchPage:
        """One page of matches, newest first. `limit` defaults to SEARCH_DEFAULT_LIMIT and is
        capped at SEARCH_MAX_LIMIT. Raises Invalid (q, limit, before, conversation_id),
        NotFound (a conversation that is not the caller's), Unavailable."""
        query = parse_query(q)
        limit = self._default if limit is None else min(limit, self._max)
        if limit < 1:
            raise Invalid("limit must be >= 1", field="limit")
        cursor = decode_cursor(before) if before else None
        if conversation_id:
            conversation_id = parse_id(conversation_id, "conversation_id")
            if user_id not in await self._members.members(conversation_id):
                raise NotFound("conversation not found")
        found = await self._index.search_messages(
            user_id, query, conversation_id=conversation_id or None, before=cursor,
            limit=limit + 1)
        has_more = len(found) > limit
        del found[limit:]
        last = found[-1] if has_more else None
        if self._present is not None:
            found = await self._present(user_id, found)
        return SearchPage(
            hits=[SearchHit(m, snippet(query, m.content)) for m in found], has_more=has_more,
            next_before=None if last is None else encode_cursor(last.created_at, last.id))
