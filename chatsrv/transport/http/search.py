"""/api/search: full-text search of my messages."""

from __future__ import annotations

from quart import Response

from chatsrv.config import Settings
from chatsrv.domain.search import MAX_QUERY_CHARS
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_message
from chatsrv.services.search import SearchService
from chatsrv.transport.http.api import Api, int_arg, json_response, text_arg
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, search: SearchService, settings: Settings) -> None:
    @api.route("GET", "/api/search", summary="Search my conversations' messages: words "
               "(all of them), \"phrases\", prefix*; newest first; `before` = `next_before` "
               "of the previous page", response=rest.SearchOut,
               query=("q", "conversation_id", "limit", "before"))
    async def search_messages() -> Response:
        uid = await edge.user_id()
        await edge.limits.take(edge.limits.expensive, uid)
        page = await search.search(
            uid, text_arg("q", max_chars=MAX_QUERY_CHARS),
            conversation_id=text_arg("conversation_id", max_chars=64) or None,
            limit=int_arg("limit", cap=settings.search_max_limit),
            before=text_arg("before", max_chars=200) or None)
        return json_response(rest.SearchOut(
            results=[rest.SearchResultOut(message=render_message(h.message), snippet=h.snippet)
                     for h in page.hits],
            has_more=page.has_more, next_before=page.next_before))
