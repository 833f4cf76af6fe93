"""Message changes over REST (issue 14): edit, delete, reactions. The same service calls
as the WebSocket frames; every member's devices get the same live frames."""

from __future__ import annotations

from quart import Response

from chatsrv.protocol import frames, rest
from chatsrv.protocol.render import render_message
from chatsrv.services.changes import ChangeService
from chatsrv.transport.http.api import Api, body, json_response
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, changes: ChangeService) -> None:
    @api.route("PATCH", "/api/messages/<message_id>", summary="Edit your message (members "
               "get message_edited); 403 for someone else's, 409 already_deleted",
               body=rest.EditMessageIn, response=rest.MessageOut)
    async def message_edit(message_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.EditMessageIn)
        return json_response(render_message(await changes.edit(uid, message_id, b.content)))

    @api.route("DELETE", "/api/messages/<message_id>", summary="Delete a message for "
               "everyone (its sender, or a group admin; members get message_deleted)",
               response=rest.MessageOut)
    async def message_delete(message_id: str) -> Response:
        uid = await edge.user_id()
        return json_response(render_message(await changes.delete(uid, message_id)))

    @api.route("PUT", "/api/messages/<message_id>/reactions/<emoji>", summary="Put your "
               "reaction on a message (idempotent; members get reaction_update)",
               response=frames.ReactionUpdate)
    async def reaction_put(message_id: str, emoji: str) -> Response:
        uid = await edge.user_id()
        return json_response(await changes.react(uid, message_id, emoji, True))

    @api.route("DELETE", "/api/messages/<message_id>/reactions/<emoji>", summary="Take "
               "your reaction back (idempotent; members get reaction_update)",
               response=frames.ReactionUpdate)
    async def reaction_delete(message_id: str, emoji: str) -> Response:
        uid = await edge.user_id()
        return json_response(await changes.react(uid, message_id, emoji, False))
