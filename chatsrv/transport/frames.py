"""The frames a client sends on /api/ws, one handler each (see docs/protocol.md).

`handle` is called by the connection's reader for every frame, in order. chat_messages are
queued for commit without waiting (up to MAX_IN_FLIGHT per connection), so one connection's
messages commit in shared batches; their acks leave in send order, and any other frame
waits for the messages before it (as if handled one by one). Bad input of any kind becomes
an `error` frame; the connection stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from chatsrv.domain.errors import ChatError, Forbidden, Invalid, RateLimited
from chatsrv.domain.events import Event, message_payload
from chatsrv.domain.model import Principal, iso, parse_id, utcnow
from chatsrv.domain.ratelimit import TokenBucket
from chatsrv.services.container import Services
from chatsrv.transport import wire
from chatsrv.transport.connection import WsConnection

log = logging.getLogger(__name__)

# chat_messages of one connection committing at once; at most a quarter of the outbox, so
# their acks, which may leave in one burst, never crowd it out
MAX_IN_FLIGHT = 32


class FrameHandlers:
    def __init__(self, svc: Services, *,
                 bind: Callable[[WsConnection, Principal], None]) -> None:
        self._svc = svc
        self._bind = bind  # the endpoint: a connection moves to a new token
        self._settings = svc.settings
        self._buckets: dict[str, TokenBucket] = {}
        self._max_in_flight = max(1, min(MAX_IN_FLIGHT, svc.settings.outbox_size // 4))
        self._handlers: dict[str, Callable[[WsConnection, Any, Any], Any]] = {
            "chat_message": self._chat_message,
            "typing": self._typing,
            "delivery_receipt": partial(self._receipt, "delivered"),
            "read_receipt": partial(self._receipt, "read"),
            "sync": self._sync,
            "ping": self._ping,
            "auth": self._auth,
        }
        for name in ("call_offer", "call_answer", "ice_candidate", "call_reject", "call_end"):
            self._handlers[name] = partial(self._call, name)

    async def handle(self, conn: WsConnection, data: str | bytes) -> None:
        """One frame from the client. Never raises for bad input (error frame instead)."""
        max_frame = self._settings.max_frame_bytes
        ref = None
        try:
            if len(data) > max_frame:
                raise wire.FrameError(f"frame over {max_frame} bytes", code="frame_too_large")
            type_, payload, ref = wire.decode_frame(data)
            self._rate_limit(conn)
            if type_ != "chat_message":
                await self._settle(conn)
            await self._handlers[type_](conn, payload, ref)
            if conn.typing.next_deadline() is not None and not conn.typing_running:
                conn.typing_running = True
                conn.start_soon(self._expire_typing, conn)
        except wire.FrameError as exc:
            await self._settle(conn)
            self.error(conn, exc, exc.ref)
        except ChatError as exc:
            await self._settle(conn)
            self.error(conn, exc, ref)
        except Exception:
            # The frame boundary is this connection's edge (like an HTTP 500): a bug in
            # one handler must not cut the user off. Logged with its traceback.
            log.exception("frame handler failed for user %s", conn.user_id)
            self.error(conn, ChatError("internal error", code="internal"), ref)

    async def closed(self, conn: WsConnection) -> None:
        """The connection is gone: end its typing states, forget its user's rate limit if
        it was the user's last connection here."""
        if not self._svc.router.local(conn.user_id):
            self._buckets.pop(conn.user_id, None)
        for cid in conn.typing.active_for(conn.user_id):
            conn.typing.stop(cid, conn.user_id)
            await self._publish_typing(conn, cid, False)

    def error(self, conn: WsConnection, exc: ChatError, ref: Any) -> None:
        """An `error` frame: code, message, the frame's ref, and the error's details."""
        self._svc.metrics.errors_sent += 1
        payload = {"code": exc.code, "message": exc.message, "ref": ref, **exc.details}
        conn.send_nowait(Event("error", payload, ref=ref))

    def _rate_limit(self, conn: WsConnection) -> None:
        bucket = self._buckets.get(conn.user_id)
        if bucket is None:
            bucket = self._buckets[conn.user_id] = TokenBucket(
                rate=self._settings.rate_per_second, burst=self._settings.rate_burst)
        wait = bucket.take(now=trio.current_time())
        if wait > 0:
            raise RateLimited(f"too many frames; retry after {wait:.2f}s", retry_after=wait)

    async def initial_sync(self, conn: WsConnection, since: str) -> None:
        """`?since=` on the URL: a `sync` before anything else (errors as `error` frames)."""
        positions: dict[str, int] | None = None
        if since not in ("", "auto", "delivered"):
            try:
                positions = wire.decode_since(since)
            except Invalid as exc:
                self.error(conn, exc, None)
                return
        try:
            await self._sync(conn, wire.SyncIn(conversations=positions), None)
        except ChatError as exc:
            self.error(conn, exc, None)

    async def _chat_message(self, conn: WsConnection, p: wire.ChatMessageIn, ref: Any) -> None:
        """Queue the message for commit and go on reading: up to MAX_IN_FLIGHT messages of
        a connection commit together; their acks leave in the order they were sent."""
        pending = await self._svc.messaging.submit(
            conn.user_id, conversation_id=p.conversation_id, content=p.content,
            message_type=p.message_type, client_msg_id=p.client_msg_id, origin=conn,
            on_done=partial(self._flush_acks, conn),
        )
        conn.in_flight.append((pending, ref))
        if len(conn.in_flight) >= self._max_in_flight:
            await conn.in_flight[0][0].done.wait()
            self._flush_acks(conn)

    def _flush_acks(self, conn: WsConnection) -> None:
        """Ack (or refuse) the committed messages at the head of the connection's queue.
        Called by the committer after each commit, and by the reader; idempotent."""
        in_flight = conn.in_flight
        while in_flight and in_flight[0][0].done.is_set():
            pending, ref = in_flight.popleft()
            try:
                msg, created = self._svc.messaging.result(pending)
            except ChatError as exc:
                self.error(conn, exc, ref)
                continue
            self._svc.metrics.messages_sent += created
            conn.send_nowait(Event("message_ack", {
                "id": msg.id, "message_id": msg.id, "conversation_id": msg.conversation_id,
                "seq": msg.seq, "client_msg_id": msg.client_msg_id,
                "created_at": message_payload(msg)["created_at"], "duplicate": not created,
            }, ref=ref))

    async def _settle(self, conn: WsConnection) -> None:
        """Wait until every chat_message read so far is acked: any other frame is handled
        after them, as if frames were handled strictly one by one."""
        while conn.in_flight:
            await conn.in_flight[0][0].done.wait()
            self._flush_acks(conn)

    async def _typing(self, conn: WsConnection, p: wire.TypingIn, ref: Any) -> None:
        if p.is_typing:
            # check membership before recording state; refreshes are not re-broadcast
            conversation_id = parse_id(p.conversation_id, "conversation_id")
            if conversation_id not in conn.typing.active_for(conn.user_id):
                await self._svc.messaging.typing(conn.user_id, conversation_id, True)
            conn.typing.start(conversation_id, conn.user_id, now=trio.current_time())
        elif conn.typing.stop(p.conversation_id, conn.user_id):
            await self._publish_typing(conn, p.conversation_id, False)

    async def _publish_typing(self, conn: WsConnection, conversation_id: str,
                              is_typing: bool) -> None:
        try:
            await self._svc.messaging.typing(conn.user_id, conversation_id, is_typing,
                                             check=False)
        except ChatError:
            pass  # removed from the conversation meanwhile: nobody to tell

    async def _expire_typing(self, conn: WsConnection) -> None:
        """Lives while the user types somewhere; sends is_typing=false when a state runs out."""
        try:
            while (deadline := conn.typing.next_deadline()) is not None:
                await trio.sleep_until(deadline)
                for cid, _user in conn.typing.expire(now=trio.current_time()):
                    await self._publish_typing(conn, cid, False)
        finally:
            conn.typing_running = False

    async def _receipt(self, status: str, conn: WsConnection, p: wire.ReceiptIn,
                       ref: Any) -> None:
        await self._svc.messaging.receipt(conn.user_id, status=status, message_id=p.message_id,
                                          conversation_id=p.conversation_id,
                                          up_to_seq=p.up_to_seq)

    async def _sync(self, conn: WsConnection, p: wire.SyncIn, ref: Any) -> None:
        result = await self._svc.messaging.sync(conn.user_id, p.conversations)
        conn.send_nowait(Event("sync_result", {
            "messages": [message_payload(m) for m in result.messages],
            "has_more": result.has_more,
            "watermarks": {
                cid: {uid: {"delivered_seq": w.delivered_seq, "read_seq": w.read_seq}
                      for uid, w in marks.items()}
                for cid, marks in result.watermarks.items()
            },
        }, ref=ref))

    async def _auth(self, conn: WsConnection, p: wire.AuthIn, ref: Any) -> None:
        """Replace the connection's token (before it expires): same user, any live session
        of theirs. Replies `auth_ok` with the new expiry."""
        principal = await self._svc.auth.authenticate(p.token)
        if principal.user_id != conn.user_id:
            raise Forbidden("the token belongs to another user", code="forbidden")
        self._bind(conn, principal)
        conn.send_nowait(Event("auth_ok", {"expires_at": int(principal.expires_at),
                                           "user_id": principal.user_id}, ref=ref))

    async def _ping(self, conn: WsConnection, p: wire.PingIn, ref: Any) -> None:
        conn.send_nowait(Event("pong", {"server_time": iso(utcnow())}, ref=ref))

    async def _call(self, type_: str, conn: WsConnection, p: Any, ref: Any) -> None:
        await self._svc.calls.handle(conn, type_, p, ref)
