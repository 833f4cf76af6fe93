"""The WebSocket endpoint /api/ws: admission, then one Session per connection.

Served on the raw stream (transport/websocket.py, picked by transport/listener.py before
Hypercorn sees the connection), so the handshake can be refused with an HTTP status and
frames skip the ASGI layer; an upgrade on a kept-alive HTTP connection comes through ASGI
and gets the same endpoint.

The endpoint owns what spans connections: admission (path, Origin, caps per node, address
and user, the token, the arrival lookup — all within HANDSHAKE_TIMEOUT), the live set, the
sockets of each auth session (closed with 4401 when it is revoked), token expiry, and the
heartbeat ticker (one pass over every socket, no timer per socket). Everything scoped to one
connection belongs to its Session (transport/session.py).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import trio

from chatsrv.config import Settings
from chatsrv.domain.errors import ChatError, RateLimited, Unauthorized, Unavailable
from chatsrv.domain.model import Arrival, Principal
from chatsrv.metrics import Metrics
from chatsrv.protocol.errors import GOING_AWAY, UNAUTHORIZED, error_body, error_of, http_status
from chatsrv.services.auth import AuthService
from chatsrv.services.batching import Coalescer
from chatsrv.services.sessions import SessionRegistry
from chatsrv.transport.addresses import client_address, networks
from chatsrv.transport.http.edge import origin_allowed
from chatsrv.transport.outbox import Flusher, Outbox
from chatsrv.transport.session import Session
from chatsrv.transport.session_deps import SessionDeps
from chatsrv.transport.websocket import AsgiSocket, FrameSocket, Handshake, WsSocket

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


@dataclass(slots=True)
class Admitted:
    principal: Principal
    arrival: Arrival | None  # handed to the Session, then dropped here (it is kilobytes)
    address: str
    began: float  # the handshake's first byte (for the connect histogram)


def _context(session: Session) -> dict[str, Any]:
    """A connection's fields in the access log (built when logged, not kept per socket)."""
    return {"user_id": session.user_id, "connection": session.connection_id,
            "client": session.address}


def _peer(stream: trio.SocketStream) -> str | None:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    return str(name[0]) if isinstance(name, tuple) else None


class Expiries:
    """When each socket's token runs out: a heap, and a wake-up when an earlier one joins.

    The heap holds weak references: a closed socket's Session (its buffers, tasks' frames,
    wsproto state: ~15 KB) is not kept until its token would have expired (15 minutes of
    every reconnect, found by the soak). Entries of closed sockets and of tokens renewed
    by `auth` are dropped when the heap has doubled since it was last compacted."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Session]]] = []
        self._count = itertools.count()
        self._changed = trio.Event()
        self._compact_at = COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, session: Session, expires_at: float) -> None:
        if len(self._heap) >= self._compact_at:
            self._heap = [e for e in self._heap if _current(e)]
            heapq.heapify(self._heap)
            self._compact_at = max(COMPACT_MIN, 2 * len(self._heap))
        first = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (expires_at, next(self._count), weakref.ref(session)))
        if expires_at < first:
            self._changed.set()

    async def wait_due(self) -> list[Session]:
        """Sleep until the earliest expiry; the sessions due then (maybe stale entries)."""
        while True:
            wait = self._heap[0][0] - time.time() if self._heap else math.inf
            if wait <= 0:
                due = []
                while self._heap and self._heap[0][0] <= time.time():
                    session = heapq.heappop(self._heap)[2]()
                    if session is not None:
                        due.append(session)
                return due
            self._changed = trio.Event()
            with trio.move_on_after(wait):
                await self._changed.wait()


COMPACT_MIN = 64


def _current(entry: tuple[float, int, weakref.ref[Session]]) -> bool:
    """Still a socket's expiry: the socket is alive and has not renewed its token since."""
    session = entry[2]()
    return session is not None and session.close_code is None \
        and session.expires_at == entry[0]


class WebSocketEndpoint:
    def __init__(self, settings: Settings, metrics: Metrics, *, auth: AuthService,
                 sessions: SessionRegistry, arrivals: Coalescer[str, Arrival],
                 deps: SessionDeps) -> None:
        self._settings = settings
        self._metrics = metrics
        self._auth = auth
        self._arrivals = arrivals
        self._deps = deps
        self._live: set[Session] = set()
        self.flusher = Flusher()  # run by the listener, beside the heartbeat
        self._closing = False
        self._trusted = networks(settings.trusted_proxies)
        self._per_user: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._pending = 0  # admitted, not yet live
        self._by_session: dict[str, set[Session]] = {}
        self._expiry = Expiries()
        # handshakes refused by a cap or the origin check, by reason (for /metrics)
        self._refusals: Counter[str] = Counter()
        sessions.on_revoked(self.sessions_revoked)
        metrics.sources["ws_refused"] = self._refusals

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def live_count(self) -> int:
        return len(self._live)

    def close_all(self) -> None:
        """Shutdown: every socket closes with 1001 (clients reconnect elsewhere)."""
        self._closing = True
        for session in list(self._live):
            session.close(GOING_AWAY.code, "server shutting down")

    # ------------------------------------------------------------------ lifetime

    async def serve_stream(self, stream: trio.SocketStream, head: bytes | bytearray) -> None:
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
            await sock.close(GOING_AWAY.code, "")

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
        """Accept the upgrade, or refuse it with an HTTP status and a JSON error (None)."""
        settings = self._settings
        began = trio.current_time()
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
            principal = await self._auth.authenticate(token)
            if self._per_user[principal.user_id] >= settings.max_sockets_per_user:
                self._refusals["user"] += 1
                raise RateLimited(f"more than {settings.max_sockets_per_user} connections of "
                                  "this user", retry_after=5.0)
            self._pending += 1
            try:
                arrival = await self._arrivals.get(principal.user_id)
            finally:
                self._pending -= 1
        except ChatError as exc:
            await sock.refuse(http_status(exc), error_of(exc))
            return None
        await sock.accept(subprotocol)
        return Admitted(principal, arrival, address, began)

    async def _serve(self, admitted: Admitted, sock: FrameSocket, handshake: Handshake) -> None:
        settings, metrics = self._settings, self._metrics
        outbox = Outbox(settings.outbox_size)
        if isinstance(sock, WsSocket):
            sock.outbox = outbox
            outbox.write_now = sock.write_now
            outbox.flusher = self.flusher
        assert admitted.arrival is not None
        session = Session(self._deps, sock, outbox, principal=admitted.principal,
                          arrival=admitted.arrival, address=admitted.address)
        admitted.arrival = None
        metrics.connections_opened += 1
        self._live.add(session)
        self._per_user[session.user_id] += 1
        self._per_address[session.address] += 1
        self.bind(session, admitted.principal)
        opened = trio.current_time()
        metrics.connect.observe(opened - admitted.began)
        access_log.info("ws open", extra={**_context(session),
                                          "session_id": session.auth_session})
        peer_left = False
        try:
            since = parse_qs(handshake.query).get("since") if "since" in handshake.query \
                else None
            handshake.headers, handshake.query = {}, ""  # not needed past the upgrade
            peer_left = await session.run(since=since[0] if since is not None else None)
        finally:
            self._live.discard(session)
            self._release(session)
            outbox.close()
            metrics.connections_closed += 1
            access_log.info("ws close %s %.1fs", session.close_code or "peer",
                            trio.current_time() - opened,
                            extra={**_context(session), "session_id": session.auth_session,
                                   "code": session.close_code})
            with trio.move_on_after(settings.cleanup_deadline, shield=True):
                await session.cleanup()
                if not peer_left:
                    try:
                        await sock.close(session.close_code or GOING_AWAY.code,
                                         session.close_reason)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

    # ------------------------------------------------------------------ auth sessions

    def bind(self, session: Session, principal: Principal) -> None:
        """The connection runs on `principal`'s token from now on (at open, and after an
        `auth` frame): closed with 4401 when that session is revoked or the token expires."""
        self._unbind(session)
        session.auth_session = principal.session_id
        session.expires_at = principal.expires_at
        self._by_session.setdefault(principal.session_id, set()).add(session)
        self._expiry.add(session, principal.expires_at)

    def _unbind(self, session: Session) -> None:
        if session.auth_session is not None:
            held = self._by_session.get(session.auth_session)
            if held is not None:
                held.discard(session)
                if not held:
                    del self._by_session[session.auth_session]

    def _release(self, session: Session) -> None:
        for counter, key in ((self._per_user, session.user_id),
                             (self._per_address, session.address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        self._unbind(session)

    def sessions_revoked(self, session_ids: list[str]) -> None:
        """Close every socket of these auth sessions with 4401 (registry listener)."""
        for sid in session_ids:
            for session in list(self._by_session.get(sid, ())):
                session.close(UNAUTHORIZED.code, "session revoked: sign in again")

    async def run_expiry(self, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: close sockets whose token expired without an `auth` frame (4401)."""
        task_status.started()
        while True:
            for session in await self._expiry.wait_due():
                if session in self._live and session.expires_at <= time.time():
                    session.close(UNAUTHORIZED.code, "token expired: send auth with a new token")

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
            for session in list(self._live):
                quiet = now - session.sock.last_read
                if quiet >= timeout:
                    self._metrics.connections_timed_out += 1
                    session.close(GOING_AWAY.code, "heartbeat timeout")
                elif quiet >= interval and (ping := session.sock.ping()) is not None:
                    session.outbox.put(ping)
