"""The WebSocket endpoint /api/ws: one connection = one Trio nursery.

Served on the raw stream (transport/websocket.py, picked by transport/listener.py before
Hypercorn sees the connection), so the handshake can be refused with HTTP 401 and frames skip
the ASGI layer; an upgrade on a kept-alive HTTP connection comes through ASGI instead and gets
the same endpoint. Per connection:
- the handler task is the reader: it hands every frame, in order, to transport/frames.py
  (one handler per frame type; chat_messages are pipelined, acks leave in send order);
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

import heapq
import itertools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import trio

from chatsrv.config import Settings
from chatsrv.domain.errors import ChatError, RateLimited, Unauthorized, Unavailable
from chatsrv.domain.events import Event
from chatsrv.domain.model import Arrival, Principal, iso, utcnow
from chatsrv.services.container import Metrics, Services
from chatsrv.transport.addresses import client_address, networks
from chatsrv.transport.connection import CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED, WsConnection
from chatsrv.transport.errors import error_body, error_of, http_status
from chatsrv.transport.frames import FrameHandlers
from chatsrv.transport.http import origin_allowed
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
access_log = logging.getLogger("chatsrv.access")

PATH = "/api/ws"
SUBPROTOCOL = "chatsrv"


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


@dataclass(frozen=True, slots=True)
class Admitted:
    principal: Principal
    arrival: Arrival
    address: str


def _peer(stream: trio.SocketStream) -> str | None:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    return str(name[0]) if isinstance(name, tuple) else None


class Expiries:
    """When each socket's token runs out: a heap, and a wake-up when an earlier one joins."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, WsConnection]] = []
        self._count = itertools.count()
        self._changed = trio.Event()

    def add(self, conn: WsConnection, expires_at: float) -> None:
        first = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (expires_at, next(self._count), conn))
        if expires_at < first:
            self._changed.set()

    async def wait_due(self) -> list[WsConnection]:
        """Sleep until the earliest expiry; the connections due then (maybe stale)."""
        while True:
            wait = self._heap[0][0] - time.time() if self._heap else math.inf
            if wait <= 0:
                due = []
                while self._heap and self._heap[0][0] <= time.time():
                    due.append(heapq.heappop(self._heap)[2])
                return due
            self._changed = trio.Event()
            with trio.move_on_after(wait):
                await self._changed.wait()


class WebSocketEndpoint:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._settings = svc.settings
        self._live: set[WsConnection] = set()
        self.flusher = Flusher()  # run by the listener, beside the heartbeat
        self._frames = FrameHandlers(svc, bind=self.bind)
        self._closing = False
        self._trusted = networks(svc.settings.trusted_proxies)
        self._per_user: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._pending = 0  # admitted, not yet live
        self._by_session: dict[str, set[WsConnection]] = {}
        self._expiry = Expiries()
        # handshakes refused by a cap or the origin check, by reason (for /metrics)
        self._refusals: Counter[str] = Counter()
        svc.sessions.on_revoked(self.sessions_revoked)
        svc.metrics.sources["ws_refused"] = self._refusals

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def metrics(self) -> Metrics:
        return self._svc.metrics

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
        settings = self._settings
        sock = WsSocket(stream, max_message=settings.max_frame_bytes * 16,
                        send_stall=settings.send_stall, close_wait=settings.close_wait)
        try:
            admitted = handshake = None
            with trio.move_on_after(settings.handshake_timeout):
                handshake = await sock.handshake(head, peer=_peer(stream))
                if handshake is not None:
                    admitted = await self._admit(sock, handshake)
            # past the deadline: dropped without an answer (a slow or hostile client)
            if admitted is not None and handshake is not None:
                await self._serve(admitted, sock, handshake)
        finally:
            await sock.close(CLOSE_GOING_AWAY, "")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI: an upgrade on a kept-alive HTTP connection that Hypercorn serves."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or []}
        client = scope.get("client")
        handshake = Handshake(scope.get("path", ""),
                              scope.get("query_string", b"").decode("latin-1"),
                              list(scope.get("subprotocols") or []), headers=headers,
                              peer=client[0] if client else None)
        sock = AsgiSocket(receive, send)
        admitted = None
        with trio.move_on_after(self._settings.handshake_timeout):
            admitted = await self._admit(sock, handshake)
        if admitted is not None:
            await self._serve(admitted, sock, handshake)

    async def _admit(self, sock: FrameSocket, handshake: Handshake) -> Admitted | None:
        """Accept the upgrade, or refuse it with an HTTP status and a JSON error (None).
        A slot is held for the socket from here (caps per node, address and user)."""
        settings = self._settings
        if handshake.path != PATH:
            await sock.refuse(404, error_body("not_found", f"no WebSocket at {handshake.path}"))
            return None
        if self._closing:
            await sock.refuse(503, error_body("unavailable", "server shutting down"))
            return None
        origin = handshake.origin
        if origin and not origin_allowed(origin, f"{handshake.scheme}://{handshake.host}",
                                         settings.cors_origins):
            self._refusals["origin"] += 1
            await sock.refuse(403, error_body("origin_not_allowed",
                                              f"origin {origin[:100]} may not connect"))
            return None
        address = client_address(handshake.peer, handshake.forwarded_for, self._trusted)
        token, subprotocol = _token_from(handshake)
        try:
            if len(self._live) + self._pending >= settings.max_sockets:
                self._refusals["node"] += 1
                raise Unavailable("this node has no room for more connections")
            if self._per_address[address] >= settings.max_sockets_per_address:
                self._refusals["address"] += 1
                raise RateLimited("too many connections from this address", retry_after=5.0)
            if not token:
                raise Unauthorized("missing token: use ?token=<jwt>", code="missing_token")
            principal = await self._svc.auth.authenticate(token)
            if self._per_user[principal.user_id] >= settings.max_sockets_per_user:
                self._refusals["user"] += 1
                raise RateLimited(f"more than {settings.max_sockets_per_user} connections of "
                                  "this user", retry_after=5.0)
            self._pending += 1
            try:
                arrival = await self._svc.arrivals.get(principal.user_id)
            finally:
                self._pending -= 1
        except ChatError as exc:
            await sock.refuse(http_status(exc), error_of(exc))
            return None
        await sock.accept(subprotocol)
        return Admitted(principal, arrival, address)

    async def _serve(self, admitted: Admitted, sock: FrameSocket, handshake: Handshake) -> None:
        svc, settings = self._svc, self._settings
        principal, arrival = admitted.principal, admitted.arrival
        user_id = principal.user_id
        outbox = Outbox(settings.outbox_size)
        if isinstance(sock, WsSocket):
            sock.outbox = outbox
            outbox.write_now = sock.write_now
            outbox.flusher = self.flusher
        conn = WsConnection(user_id, sock, outbox, svc.metrics, settings.typing_ttl)
        conn.address = admitted.address
        svc.metrics.connections_opened += 1
        self._live.add(conn)
        self._per_user[user_id] += 1
        self._per_address[admitted.address] += 1
        self.bind(conn, principal)
        opened = trio.current_time()
        access_log.info("ws open", extra={"user_id": user_id, "connection": conn.session_id,
                                          "session_id": principal.session_id,
                                          "client": admitted.address})
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
                    "token_expires_at": int(principal.expires_at),
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
                    await self._frames.initial_sync(conn, since[0])
                disconnected = await self._reader(conn)
                nursery.cancel_scope.cancel()
        finally:
            self._live.discard(conn)
            self._release(conn)
            outbox.close()
            svc.metrics.connections_closed += 1
            access_log.info("ws close %s %.1fs", conn.close_code or "peer",
                            trio.current_time() - opened,
                            extra={"user_id": user_id, "connection": conn.session_id,
                                   "session_id": conn.auth_session, "client": conn.address,
                                   "code": conn.close_code})
            with trio.move_on_after(settings.cleanup_deadline, shield=True):
                await self._cleanup(conn)
                if not disconnected:
                    try:
                        await sock.close(conn.close_code or CLOSE_GOING_AWAY, conn.close_reason)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

    # ------------------------------------------------------------------ sessions

    def bind(self, conn: WsConnection, principal: Principal) -> None:
        """The connection runs on `principal`'s token from now on (at open, and after an
        `auth` frame): closed with 4401 when that session is revoked or the token expires."""
        if conn.auth_session is not None:
            held = self._by_session.get(conn.auth_session)
            if held is not None:
                held.discard(conn)
                if not held:
                    del self._by_session[conn.auth_session]
        conn.auth_session = principal.session_id
        conn.expires_at = principal.expires_at
        self._by_session.setdefault(principal.session_id, set()).add(conn)
        self._expiry.add(conn, principal.expires_at)

    def _release(self, conn: WsConnection) -> None:
        for counter, key in ((self._per_user, conn.user_id), (self._per_address, conn.address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if conn.auth_session is not None:
            held = self._by_session.get(conn.auth_session)
            if held is not None:
                held.discard(conn)
                if not held:
                    del self._by_session[conn.auth_session]

    def sessions_revoked(self, session_ids: list[str]) -> None:
        """Close every socket of these sessions with 4401 (registry listener)."""
        for sid in session_ids:
            for conn in list(self._by_session.get(sid, ())):
                conn.close(CLOSE_UNAUTHORIZED, "session revoked: sign in again")

    async def run_expiry(self, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: close sockets whose token expired without an `auth` frame (4401)."""
        task_status.started()
        while True:
            for conn in await self._expiry.wait_due():
                if conn in self._live and conn.expires_at <= time.time():
                    conn.close(CLOSE_UNAUTHORIZED, "token expired: send auth with a new token")

    async def _cleanup(self, conn: WsConnection) -> None:
        self._svc.presence.disconnected(conn)
        await self._frames.closed(conn)
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

    async def _reader(self, conn: WsConnection) -> bool:
        """Handle frames until the peer disconnects (returns True) or the connection is
        closed by us (cancelled)."""
        metrics = self._svc.metrics
        sock = conn.sock
        handle = self._frames.handle
        while True:
            try:
                data = await sock.receive()
            except Closing as exc:
                conn.close(exc.code, exc.reason)
                return False
            if data is None:
                return True
            metrics.frames_in += 1
            await handle(conn, data)
