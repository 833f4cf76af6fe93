"""Messages over REST: history, send, per-member status, marking read."""

from __future__ import annotations

from quart import Response

from chatsrv.config import Settings
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_message
from chatsrv.services.messaging import MessagingService
from chatsrv.services.privacy import PrivacyService
from chatsrv.transport.http.api import Api, body, int_arg, json_response, no_content
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, messaging: MessagingService, settings: Settings,
             privacy: PrivacyService | None = None) -> None:
    @api.route("GET", "/api/conversations/<conversation_id>/messages", summary="History in "
               "seq order: limit/offset from the newest, or before_seq/after_seq cursors",
               response=rest.MessagesOut, query=("limit", "offset", "before_seq", "after_seq"))
    async def messages_list(conversation_id: str) -> Response:
        uid = await edge.user_id()
        page, has_more = await messaging.history(
            uid, conversation_id,
            limit=int_arg("limit", cap=settings.history_max_limit),
            offset=int_arg("offset", 0) or 0,
            before_seq=int_arg("before_seq"), after_seq=int_arg("after_seq"),
        )
        blocked = set(await privacy.blocked(uid)) if privacy is not None else set()
        return json_response(rest.MessagesOut(
            messages=[render_message(m) for m in page], has_more=has_more,
            blocked_senders=sorted({m.sender_id for m in page} & blocked)))

    @api.route("POST", "/api/conversations/<conversation_id>/messages", summary="Send a "
               "message (same path as the WebSocket chat_message)", body=rest.SendMessageIn,
               response=rest.MessageOut, status=201,
               also={200: "a resend of a client_msg_id: the stored message"})
    async def messages_send(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.SendMessageIn)
        msg, created = await messaging.send(
            uid, conversation_id=conversation_id, content=b.content,
            message_type=b.message_type, client_msg_id=b.client_msg_id, reply_to=b.reply_to,
            attachments=b.attachments)
        return json_response(render_message(msg), 201 if created else 200)

    @api.route("GET", "/api/messages/<message_id>/status", summary="Per-member status of a "
               "message (sent/delivered/read), from watermarks", response=rest.MessageStatusOut)
    async def message_status(message_id: str) -> Response:
        msg, statuses = await messaging.status(await edge.user_id(), message_id)
        return json_response(rest.MessageStatusOut(message_id=msg.id, seq=msg.seq,
                                                   statuses=statuses))

    @api.route("POST", "/api/conversations/<conversation_id>/read", summary="Mark read (or "
               "delivered) up to a seq", body=rest.ReceiptBodyIn, status=204)
    async def mark_read(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.ReceiptBodyIn)
        await messaging.receipt(uid, status=b.status, conversation_id=conversation_id,
                                up_to_seq=b.up_to_seq)
        return no_content()
