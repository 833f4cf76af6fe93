"""One WebSocket connection: the `Session` owns everything connection-scoped.

`Session.run` opens the connection's nursery and is the only code that starts tasks in it:

- the reader (the `run` task itself): decodes each frame, in order, and calls one service
  method per frame type (`_dispatch`; the call and message-change frames' handlers are in
  session_calls.py and session_changes.py); bad input of any kind becomes an `error` frame;
- the writer: drains the bounded outbox into the socket, everything queued in one write
  (while it is idle, one flusher task for all sockets writes instead: outbox.py);
- the acker: chat_messages are queued for commit without waiting (up to MAX_IN_FLIGHT);
  the acker awaits their commits in send order and sends each `message_ack` (or `error`);
  any other frame waits until every message read before it is acked;
- typing expiry, only while the user types somewhere;
- call legs (`await nursery.start(calls.run_leg, ...)`), one per call this device is in.

Closing (the peer left, `close()` from the endpoint: revoked session, heartbeat, shutdown)
cancels the nursery; the clean-up (presence, typing, calls) runs shielded with a deadline.
The Session is the router's Subscriber: identity plus `send_nowait`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chatsrv.domain.changes import encode_cursor
from chatsrv.domain.errors import ChatError, Forbidden, Internal
from chatsrv.domain.model import Arrival, Device, Principal, iso, new_id, parse_id, utcnow
from chatsrv.domain.typing_state import TypingBook
from chatsrv.protocol import frames as f
from chatsrv.protocol.errors import GOING_AWAY, TRY_AGAIN_LATER
from chatsrv.protocol.render import render_ack, render_error, render_marks, render_message
from chatsrv.protocol.rest import decode_since
from chatsrv.services.commit import Pending
from chatsrv.transport import session_calls, session_changes
from chatsrv.transport.outbox import Outbox
from chatsrv.transport.session_deps import SessionDeps
from chatsrv.transport.websocket import Closing, FrameSocket

log = logging.getLogger(__name__)

# chat_messages of one connection committing at once; at most a quarter of the outbox, so
# their acks, which may leave in one burst, never crowd it out
MAX_IN_FLIGHT = 32
# the "nothing in flight" state every session starts in (a set Event is never cleared)
_SETTLED = trio.Event()
_SETTLED.set()


class Session:
    """One live socket (see the module docstring). Owned by the endpoint (ws.py)."""

    __slots__ = ("__weakref__", "_acks", "_deps", "_in_flight", "_nursery",
                 "_scope", "_settled", "_typing", "_typing_running", "address", "arrival",
                 "auth_session", "close_code", "close_reason", "connection_id", "expires_at",
                 "outbox", "sock", "user_id")

    def __init__(self, deps: SessionDeps, sock: FrameSocket, outbox: Outbox, *,
                 principal: Principal, arrival: Arrival, address: str) -> None:
        self._deps = deps
        self.sock = sock
        self.outbox = outbox
        self.user_id = principal.user_id
        self.connection_id = new_id()  # `ready.session_id`
        self.auth_session: str | None = principal.session_id  # the login its token belongs to
        self.expires_at = principal.expires_at
        self.address = address
        self.arrival: Arrival | None = arrival  # dropped once `ready` is sent
        self.close_code: int | None = None
        self.close_reason = ""
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        # per-socket state made on first use (memory per idle socket: bench/socket_memory.py)
        self._typing: TypingBook | None = None
        self._typing_running = False
        self._acks: Any = None  # (send, receive) channel of the acker, once a message came
        self._in_flight = 0
        self._settled = _SETTLED

    # frame class -> handler: built from the first session, then shared by all of them (the
    # unbound functions), so a socket holds no dict of bound methods
    _DISPATCH: dict[type[Any], Callable[[Session, Any], Awaitable[None]]] = {}

    def _handlers(self) -> dict[type[Any], Callable[[Any], Awaitable[None]]]:
        return {
            f.ChatMessage: self._chat_message,
            f.Typing: self._typing_frame,
            f.DeliveryReceipt: self._delivery_receipt,
            f.ReadReceipt: self._read_receipt,
            f.Sync: self._sync,
            f.Ping: self._ping,
            f.Auth: self._auth,
            f.CallOffer: self._call_offer,
            f.CallAnswer: self._call_answer,
            f.IceCandidate: self._ice_candidate,
            f.CallReject: self._call_reject,
            f.CallEnd: self._call_end,
            f.EditMessage: self._edit_message,
            f.DeleteMessage: self._delete_message,
            f.Reaction: self._reaction,
        }

    def _dispatch(self, frame: Any) -> Awaitable[None]:
        table = Session._DISPATCH
        if not table:
            handlers = self._handlers()
            if not all(getattr(h, "__self__", None) is self for h in handlers.values()):
                return handlers[type(frame)](frame)  # not all methods: no table to share
            table.update({kind: bound.__func__  # type: ignore[attr-defined]
                          for kind, bound in handlers.items()})
        return table[type(frame)](self, frame)

    @property
    def device(self) -> Device:
        return Device(self.user_id, self.connection_id)

    # ------------------------------------------------------------------ Subscriber

    def send_nowait(self, frame: f.Frame) -> None:
        """Queue a frame. A full outbox drops a droppable frame (typing) or cuts the
        connection with 1013 (it reconnects and syncs, losing nothing); never blocks."""
        if self.outbox.put(frame):
            self._deps.metrics.frames_out += 1
        elif not frame.droppable:
            self._deps.metrics.connections_evicted += 1
            self.close(TRY_AGAIN_LATER.code, "outbox full: reconnect and sync")

    def close(self, code: int, reason: str) -> None:
        """End the connection (its nursery is cancelled, the close frame sent)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._scope.cancel()

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, since: str | None = None) -> bool:
        """Serve the connection until the peer leaves (True) or it is closed by us (False).
        Sends `ready` first; attaches for delivery right after (live frames follow it)."""
        deps = self._deps
        peer_left = False
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                privacy = deps.privacy
                self._ready(await privacy.blocked(self.user_id) if privacy else [])
                await deps.presence.connected(self, self.arrival.contacts if self.arrival else None)
                self.arrival = None
                if since is not None:
                    await self._initial_sync(since)
                peer_left = await self._reader()
                nursery.cancel_scope.cancel()
        return peer_left

    async def cleanup(self) -> None:
        """The connection is gone: presence, typing (told to the others), the user's frame
        budget if this was their last connection here. Call shielded, with a deadline."""
        deps = self._deps
        deps.presence.disconnected(self)
        if not deps.presence.connections_here(self.user_id):
            deps.rates.forget(self.user_id)
        typing = self._typing or TypingBook(ttl=0)
        for cid in typing.active_for(self.user_id):
            typing.stop(cid, self.user_id)
            await self._publish_typing(cid, False)
        # calls end by themselves: their legs were tasks in this connection's nursery

    def _ready(self, blocked: list[str]) -> None:
        s = self._deps.settings
        arrival = self.arrival
        positions = arrival.positions if arrival else {}
        mentions = arrival.mentions_unread if arrival else {}
        self.send_nowait(f.Frame(f.Ready(
            user_id=self.user_id, session_id=self.connection_id, server_time=iso(utcnow()) or "",
            node_id=s.node_id, heartbeat_interval=s.heartbeat_interval,
            token_expires_at=int(self.expires_at),
            conversations={cid: f.ConversationPosition(
                last_seq=last, unread=max(0, last - marks.read_seq),
                delivered_seq=marks.delivered_seq, read_seq=marks.read_seq,
                mentions_unread=mentions.get(cid, 0))
                for cid, (last, marks) in positions.items()},
            changes_cursor=encode_cursor(arrival.changes_cursor if arrival else 0),
            blocked=blocked)))

    async def _writer(self) -> None:
        try:
            while batch := await self.outbox.take():
                await self.sock.send(batch)
                del batch  # not kept while parked: `ready` alone is kilobytes
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close(GOING_AWAY.code, "peer gone")

    async def _reader(self) -> bool:
        """Handle frames until the peer disconnects (True) or the socket breaks the
        protocol (False, closed with its code)."""
        metrics = self._deps.metrics
        while True:
            try:
                data = await self.sock.receive()
            except Closing as exc:
                self.close(exc.code, exc.reason)
                return False
            if data is None:
                return True
            metrics.frames_in += 1
            await self._handle(data)

    async def _handle(self, data: str | bytes) -> None:
        """One frame from the client. Never raises for bad input (an error frame instead)."""
        max_frame = self._deps.settings.max_frame_bytes
        ref: f.Ref = None
        try:
            if len(data) > max_frame:
                raise f.FrameError(f"frame over {max_frame} bytes", code="frame_too_large")
            frame = f.decode_frame(data)
            ref = frame.ref
            self._deps.rates.take(self.user_id)
            if not isinstance(frame, f.ChatMessage):
                await self._settle()
            await self._dispatch(frame)
            if (self._typing is not None and not self._typing_running
                    and self._typing.next_deadline() is not None):
                self._typing_running = True
                self._start(self._expire_typing)
        except f.FrameError as exc:
            await self._settle()
            self.error(exc, exc.ref)
        except ChatError as exc:
            await self._settle()
            self.error(exc, ref)
        except Exception:
            # The frame boundary is this connection's edge (like an HTTP 500): a bug in one
            # handler must not cut the user off. Logged with its traceback.
            log.exception("frame handler failed", extra={"user_id": self.user_id,
                                                         "connection": self.connection_id})
            self.error(Internal(), ref)

    def error(self, exc: ChatError, ref: f.Ref) -> None:
        """An `error` frame: code, message, the frame's ref, and the error's details."""
        self._deps.metrics.errors_sent += 1
        self.send_nowait(f.Frame(render_error(exc, ref), ref=ref))

    def _start(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    # ------------------------------------------------------------------ messages

    async def _chat_message(self, frame: f.ChatMessage) -> None:
        """Queue the message for commit and go on reading: up to MAX_IN_FLIGHT messages of
        a connection commit together; the acker acks them in the order they were sent."""
        p = frame.payload
        read_at = trio.current_time()
        pending = await self._deps.messaging.submit(
            self.user_id, conversation_id=p.conversation_id, content=p.content,
            message_type=p.message_type, client_msg_id=p.client_msg_id, origin=self,
            reply_to=p.reply_to, attachments=p.attachments)
        self._in_flight += 1
        self._settled = trio.Event() if self._settled.is_set() else self._settled
        if self._acks is None:  # the acker starts with the connection's first message
            self._acks = trio.open_memory_channel[tuple[Pending, f.Ref, float]](MAX_IN_FLIGHT)
            self._start(self._acker)
        # waits when MAX_IN_FLIGHT are out
        await self._acks[0].send((pending, frame.ref, read_at))

    async def _acker(self) -> None:
        """Forever: ack (or refuse) each queued message once committed, in send order."""
        metrics, messaging = self._deps.metrics, self._deps.messaging
        async for pending, ref, read_at in self._acks[1]:
            await pending.done.wait()
            now = trio.current_time()
            metrics.send_to_ack.observe(now - read_at)
            if pending.stored_at:
                metrics.send_stages.observe((read_at, pending.queued_at, pending.taken_at,
                                             pending.stored_at, pending.announced_at, now))
            try:
                msg, created = messaging.result(pending)
            except ChatError as exc:
                self.error(exc, ref)
            else:
                metrics.messages_sent += created
                self.send_nowait(f.Frame(render_ack(msg, duplicate=not created), ref=ref))
            self._in_flight -= 1
            if self._in_flight == 0:
                self._settled.set()
                self._settled = _SETTLED

    async def _settle(self) -> None:
        """Wait until every chat_message read so far is acked: any other frame is handled
        after them, as if frames were handled strictly one by one."""
        await self._settled.wait()

    async def _delivery_receipt(self, frame: f.DeliveryReceipt) -> None:
        await self._receipt("delivered", frame.payload)

    async def _read_receipt(self, frame: f.ReadReceipt) -> None:
        await self._receipt("read", frame.payload)

    async def _receipt(self, status: str, p: f.ReceiptIn) -> None:
        await self._deps.messaging.receipt(self.user_id, status=status, message_id=p.message_id,
                                           conversation_id=p.conversation_id,
                                           up_to_seq=p.up_to_seq)

    async def _sync(self, frame: f.Sync) -> None:
        await self._send_sync(frame.payload.conversations, frame.ref,
                              changes_since=frame.payload.changes_since)

    async def _send_sync(self, since: dict[str, int] | None, ref: f.Ref, *,
                         changes_since: str | None = None) -> None:
        result = await self._deps.messaging.sync(self.user_id, since,
                                                 changes_since=changes_since)
        page = result.changes
        self.send_nowait(f.Frame(f.SyncResult(
            messages=[render_message(m) for m in result.messages], has_more=result.has_more,
            watermarks={cid: {uid: render_marks(w) for uid, w in marks.items()}
                        for cid, marks in result.watermarks.items()},
            changes=None if page is None else [f.ChangeOut(type=c.type, payload=c.payload)
                                               for c in page.changes],
            changes_cursor=None if page is None else page.cursor,
            changes_has_more=None if page is None else page.has_more), ref=ref))

    async def _initial_sync(self, since: str) -> None:
        """`?since=` on the URL: a `sync` before anything else (errors as `error` frames)."""
        try:
            positions = None if since in ("", "auto", "delivered") else decode_since(since)
            await self._send_sync(positions, None)
        except ChatError as exc:
            self.error(exc, None)

    # ------------------------------------------------------------------ message changes
    # edit_message, delete_message, reaction: session_changes.py, methods by assignment
    _edit_message = session_changes.edit_message
    _delete_message = session_changes.delete_message
    _reaction = session_changes.reaction

    # ------------------------------------------------------------------ typing

    async def _typing_frame(self, frame: f.Typing) -> None:
        p = frame.payload
        if self._typing is None:
            self._typing = TypingBook(ttl=self._deps.settings.typing_ttl)
        if p.is_typing:
            # check membership before recording state; refreshes are not re-broadcast
            conversation_id = parse_id(p.conversation_id, "conversation_id")
            if conversation_id not in self._typing.active_for(self.user_id):
                await self._deps.messaging.typing(self.user_id, conversation_id, True)
            self._typing.start(conversation_id, self.user_id, now=trio.current_time())
        elif self._typing.stop(p.conversation_id, self.user_id):
            await self._publish_typing(p.conversation_id, False)

    async def _publish_typing(self, conversation_id: str, is_typing: bool) -> None:
        try:
            await self._deps.messaging.typing(self.user_id, conversation_id, is_typing,
                                              check=False)
        except ChatError:
            pass  # removed from the conversation meanwhile: nobody to tell

    async def _expire_typing(self) -> None:
        """Lives while the user types somewhere; sends is_typing=false when a state runs out."""
        assert self._typing is not None
        try:
            while (deadline := self._typing.next_deadline()) is not None:
                await trio.sleep_until(deadline)
                for cid, _user in self._typing.expire(now=trio.current_time()):
                    await self._publish_typing(cid, False)
        finally:
            self._typing_running = False

    # ------------------------------------------------------------------ session, ping

    async def _auth(self, frame: f.Auth) -> None:
        """Replace the connection's token (before it expires): same user, any live session
        of theirs. Replies `auth_ok` with the new expiry."""
        principal = await self._deps.auth.authenticate(frame.payload.token)
        if principal.user_id != self.user_id:
            raise Forbidden("the token belongs to another user", code="forbidden")
        self._deps.bind(self, principal)
        self.send_nowait(f.Frame(f.AuthOk(expires_at=int(principal.expires_at),
                                          user_id=principal.user_id), ref=frame.ref))

    async def _ping(self, frame: f.Ping) -> None:
        self.send_nowait(f.Frame(f.Pong(server_time=iso(utcnow()) or ""), ref=frame.ref))

    # ------------------------------------------------------------------ calls
    # call_offer, call_answer, ice_candidate, call_reject, call_end (and the leg they start):
    # session_calls.py, methods by assignment
    _call_offer = session_calls.call_offer
    _call_answer = session_calls.call_answer
    _start_leg = session_calls.start_leg
    _ice_candidate = session_calls.ice_candidate
    _call_reject = session_calls.call_reject
    _call_end = session_calls.call_end
