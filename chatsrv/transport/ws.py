"""The WebSocket endpoint /api/ws: one connection = one Trio nursery.

Served on the raw stream (transport/websocket.py, picked by transport/listener.py before
Hypercorn sees the connection), so the handshake can be refused with HTTP 401 and frames skip
the ASGI layer; an upgrade on a kept-alive HTTP connection comes through ASGI instead and gets
the same endpoint. Per connection:
- the handler task is the reader: it parses frames and calls one service method per frame;
  chat_messages are queued for commit without waiting (up to MAX_IN_FLIGHT), so one
  connection's messages commit in shared batches; their acks leave in send order, and any
  other frame waits for the messages before it (as if handled one by one);
- a writer task drains the bounded outbox into the socket, everything queued in one write;
  while it is idle, one flusher task for all sockets writes instead (one write per socket
  per burst of events, no task switch per socket);
- a typing task exists only while the user is typing somewhere (expiry);
- liveness: one ticker for all sockets (`run_heartbeat`) pings a socket quiet for
  heartbeat_interval and drops one silent for heartbeat_timeout.
Closing the socket cancels the nursery; cleanup (presence, typing, calls) runs shielded with
a deadline.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio

from chatsrv.domain.errors import ChatError, Invalid, RateLimited, Unauthorized, Unavailable
from chatsrv.domain.events import Event, message_payload
from chatsrv.domain.model import Arrival, iso, new_id, parse_id, utcnow
from chatsrv.domain.ratelimit import TokenBucket
from chatsrv.domain.typing_state import TypingBook
from chatsrv.services.commit import Pending
from chatsrv.services.container import Services
from chatsrv.transport import wire
from chatsrv.transport.errors import error_body
from chatsrv.transport.websocket import (
    AsgiSocket,
    Closing,
    Flusher,
    FrameSocket,
    Handshake,
    Outbox,
    WsSocket,
)

log = logging.getLogger(__name__)

PATH = "/api/ws"
# chat_messages of one connection committing at once; at most a quarter of the outbox, so
# their acks, which may leave in one burst, never crowd it out
MAX_IN_FLIGHT = 32
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
SUBPROTOCOL = "chatsrv"


class WsConnection:
    """One live socket: the router's Subscriber and the state its tasks share."""

    __slots__ = ("_nursery", "_scope", "close_code", "close_reason", "in_flight", "metrics",
                 "outbox", "session_id", "sock", "typing", "typing_running", "user_id")

    def __init__(self, user_id: str, sock: FrameSocket, outbox: Outbox, metrics: Any,
                 typing_ttl: float) -> None:
        self.user_id = user_id
        self.session_id = new_id()
        self.sock = sock
        self.outbox = outbox
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.metrics = metrics
        self.typing = TypingBook(ttl=typing_ttl)
        self.typing_running = False
        # chat_messages queued for commit and not acked yet, in the order they were read
        self.in_flight: deque[tuple[Pending, Any]] = deque()

    def send_nowait(self, event: Event) -> None:
        if self.outbox.put(event):
            self.metrics.frames_out += 1
        elif not event.droppable:
            # typing goes first under backpressure; a consumer that cannot keep up with
            # anything else is cut: it reconnects and syncs, losing nothing.
            self.metrics.connections_evicted += 1
            self.close(CLOSE_TRY_AGAIN_LATER, "outbox full: reconnect and sync")

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a task owned by this connection (a call leg): cancelled when it closes."""
        if self._nursery is None:
            raise RuntimeError("connection is not running")
        self._nursery.start_soon(fn, *args)

    def close(self, code: int, reason: str) -> None:
        """Ask the connection to end; its nursery is cancelled and the close frame sent."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self._scope is not None:
            self._scope.cancel()


def _token_from(handshake: Handshake) -> tuple[str | None, str | None]:
    """(token, subprotocol to select). Token from ?token= or a Sec-WebSocket-Protocol value
    (`bearer.<jwt>` or the bare JWT), since browsers cannot set headers."""
    protocols = handshake.subprotocols
    chosen = SUBPROTOCOL if SUBPROTOCOL in protocols else None
    tokens = parse_qs(handshake.query).get("token")
    token = tokens[0] if tokens else None
    for p in protocols:
        candidate = p[len("bearer."):] if p.startswith("bearer.") else p
        if candidate.count(".") == 2 and token is None:
            token = candidate
            chosen = chosen or p
    return token, chosen


class WebSocketEndpoint:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._settings = svc.settings
        self._live: set[WsConnection] = set()
        self.flusher = Flusher()  # run by the listener, beside the heartbeat
        self._buckets: dict[str, TokenBucket] = {}
        self._closing = False
        self._max_in_flight = max(1, min(MAX_IN_FLIGHT, svc.settings.outbox_size // 4))
        self._handlers: dict[str, Callable[[WsConnection, Any, Any], Any]] = {
            "chat_message": self._chat_message,
            "typing": self._typing,
            "delivery_receipt": partial(self._receipt, "delivered"),
            "read_receipt": partial(self._receipt, "read"),
            "sync": self._sync,
            "ping": self._ping,
        }
        for name in ("call_offer", "call_answer", "ice_candidate", "call_reject", "call_end"):
            self._handlers[name] = partial(self._call, name)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def close_all(self) -> None:
        """Shutdown: every socket closes with 1001 (clients reconnect elsewhere)."""
        self._closing = True
        for conn in list(self._live):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ lifetime

    async def serve_stream(self, stream: trio.SocketStream, head: bytes) -> None:
        """A connection whose first request (`head`, already read) is a WebSocket upgrade."""
        sock = WsSocket(stream, max_message=self._settings.max_frame_bytes * 16)
        try:
            handshake = await sock.handshake(head)
            if handshake is not None:
                await self.serve(sock, handshake)
        finally:
            await sock.close(CLOSE_GOING_AWAY, "")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI: an upgrade on a kept-alive HTTP connection that Hypercorn serves."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        handshake = Handshake(scope.get("path", ""),
                              scope.get("query_string", b"").decode("latin-1"),
                              list(scope.get("subprotocols") or []))
        sock = AsgiSocket(receive, send)
        await self.serve(sock, handshake)

    async def serve(self, sock: FrameSocket, handshake: Handshake) -> None:
        if handshake.path != PATH:
            await sock.refuse(404, error_body("not_found", f"no WebSocket at {handshake.path}"))
            return
        if self._closing:
            await sock.refuse(503, error_body("unavailable", "server shutting down"))
            return
        token, subprotocol = _token_from(handshake)
        try:
            if not token:
                raise Unauthorized("missing token: use ?token=<jwt>", code="missing_token")
            user_id = self._svc.auth.authenticate(token)
        except Unauthorized as exc:
            await sock.refuse(401, error_body(exc.code, exc.message))
            return
        try:
            arrival = await self._svc.arrivals.get(user_id)
        except Unavailable as exc:
            await sock.refuse(503, error_body(exc.code, exc.message))
            return
        await sock.accept(subprotocol)
        await self._serve(user_id, arrival, sock, handshake)

    async def _serve(self, user_id: str, arrival: Arrival, sock: FrameSocket,
                     handshake: Handshake) -> None:
        svc, settings = self._svc, self._settings
        outbox = Outbox(settings.outbox_size)
        if isinstance(sock, WsSocket):
            sock.outbox = outbox
            outbox.write_now = sock.write_now
            outbox.flusher = self.flusher
        conn = WsConnection(user_id, sock, outbox, svc.metrics, settings.typing_ttl)
        svc.metrics.connections_opened += 1
        self._live.add(conn)
        disconnected = False
        try:
            async with trio.open_nursery() as nursery:
                conn._scope = nursery.cancel_scope
                conn._nursery = nursery
                nursery.start_soon(self._writer, conn)
                conn.send_nowait(Event("ready", {
                    "user_id": user_id, "session_id": conn.session_id,
                    "server_time": iso(utcnow()), "node_id": settings.node_id,
                    "heartbeat_interval": settings.heartbeat_interval,
                    "conversations": {
                        cid: {"last_seq": last, "unread": max(0, last - marks.read_seq),
                              "delivered_seq": marks.delivered_seq, "read_seq": marks.read_seq}
                        for cid, (last, marks) in arrival.positions.items()
                    },
                }))
                # attach after `ready` is queued: live events follow it, never precede it
                await svc.presence.connected(conn, arrival.contacts)
                since = parse_qs(handshake.query).get("since")
                if since is not None:
                    await self._initial_sync(conn, since[0])
                disconnected = await self._reader(conn, nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._live.discard(conn)
            outbox.close()
            svc.metrics.connections_closed += 1
            with trio.move_on_after(2, shield=True):
                await self._cleanup(conn)
                if not disconnected:
                    try:
                        await sock.close(conn.close_code or CLOSE_GOING_AWAY, conn.close_reason)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

    async def _cleanup(self, conn: WsConnection) -> None:
        svc = self._svc
        svc.presence.disconnected(conn)
        if not svc.router.local(conn.user_id):
            self._buckets.pop(conn.user_id, None)
        for cid in conn.typing.active_for(conn.user_id):
            conn.typing.stop(cid, conn.user_id)
            await self._publish_typing(conn, cid, False)
        # calls end by themselves: their legs were tasks in this connection's nursery

    async def _writer(self, conn: WsConnection) -> None:
        try:
            while batch := await conn.outbox.take():
                await conn.sock.send(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.close(CLOSE_GOING_AWAY, "peer gone")

    async def run_heartbeat(self, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One ticker for every socket: ping the quiet ones, drop the silent ones.

        A socket that sent nothing (not even a pong) for heartbeat_interval gets a ping; one
        silent for heartbeat_timeout is closed. Costs one pass over the live set per half
        interval instead of a task and a timer per socket.
        """
        interval = self._settings.heartbeat_interval
        timeout = self._settings.heartbeat_timeout
        task_status.started()
        while True:
            await trio.sleep(interval / 2)
            now = trio.current_time()
            for conn in list(self._live):
                quiet = now - conn.sock.last_read
                if quiet >= timeout:
                    self._svc.metrics.connections_timed_out += 1
                    conn.close(CLOSE_GOING_AWAY, "heartbeat timeout")
                elif quiet >= interval and (ping := conn.sock.ping()) is not None:
                    conn.outbox.put(ping)

    async def _reader(self, conn: WsConnection, nursery: trio.Nursery) -> bool:
        """Handle frames until the peer disconnects (returns True) or the connection is
        closed by us (cancelled)."""
        max_frame = self._settings.max_frame_bytes
        metrics = self._svc.metrics
        sock = conn.sock
        while True:
            try:
                data = await sock.receive()
            except Closing as exc:
                conn.close(exc.code, exc.reason)
                return False
            if data is None:
                return True
            metrics.frames_in += 1
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
                    nursery.start_soon(self._expire_typing, conn)
            except wire.FrameError as exc:
                await self._settle(conn)
                self._error(conn, exc, exc.ref)
            except ChatError as exc:
                await self._settle(conn)
                self._error(conn, exc, ref)
            except Exception:
                # The frame boundary is this connection's edge (like an HTTP 500): a bug in
                # one handler must not cut the user off. Logged with its traceback.
                log.exception("frame handler failed for user %s", conn.user_id)
                self._error(conn, ChatError("internal error", code="internal"), ref)

    def _error(self, conn: WsConnection, exc: ChatError, ref: Any) -> None:
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

    async def _initial_sync(self, conn: WsConnection, since: str) -> None:
        positions: dict[str, int] | None = None
        if since not in ("", "auto", "delivered"):
            try:
                raw = json.loads(since)
                if not isinstance(raw, dict) or not all(
                        isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
                    raise ValueError
                positions = raw
            except ValueError:
                self._error(conn, Invalid("since must be a JSON object of "
                                          "conversation_id -> last seq", code="invalid_since"),
                            None)
                return
        try:
            await self._sync(conn, wire.SyncIn(conversations=positions), None)
        except ChatError as exc:
            self._error(conn, exc, None)

    # ------------------------------------------------------------------ frames

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
                self._error(conn, exc, ref)
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

    async def _ping(self, conn: WsConnection, p: wire.PingIn, ref: Any) -> None:
        conn.send_nowait(Event("pong", {"server_time": iso(utcnow())}, ref=ref))

    async def _call(self, type_: str, conn: WsConnection, p: Any, ref: Any) -> None:
        await self._svc.calls.handle(conn, type_, p, ref)
