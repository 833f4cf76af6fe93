"""Clients of the server under test: REST set-up (accounts, conversations) and WebSocket
sockets that speak chatsrv's frames with the schemas of chatsrv.protocol.

Every socket runs over a TCP stream this module opens itself, so a scenario can cut it
abruptly (RST) as a dropped mobile link would. Three clients speak the same frames: the
lean one (bench/lean.py, the default: far less generator CPU per received frame), a
trio-websocket connection (`--client trio-websocket`) and the third-party `websockets`
package on asyncio (`--client websockets`, bench/aioclient.py; its sockets are its own).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError

from bench import aioclient
from bench.lean import LeanWs
from chatsrv.protocol import frames

PASSWORD = "bench-password"
CONNECT_DEADLINE = 30.0  # one socket: TCP connect + handshake + `ready`
QUEUE = 256  # frames trio-websocket buffers per socket before it stops reading the TCP stream
CLIENTS = ("lean", "trio-websocket", "websockets")
client_kind = "lean"  # set from --client

_encode = msgspec.json.Encoder().encode
_envelope = msgspec.json.Decoder(frames.Envelope)


# ---------------------------------------------------------------------------- frames
# The server's own payload types (chatsrv/protocol/frames.py): the bench decodes exactly what
# the server encodes.
AckOut = frames.MessageAck
SyncResultOut = frames.SyncResult
ErrorOut = frames.ErrorOut


decode_message = msgspec.json.Decoder(frames.MessagePayload).decode
decode_ack = msgspec.json.Decoder(AckOut).decode
decode_sync = msgspec.json.Decoder(SyncResultOut).decode
decode_error = msgspec.json.Decoder(ErrorOut).decode


def decode_envelope(data: str | bytes) -> frames.Envelope:
    return _envelope.decode(data)


def chat_frame(conversation_id: str, content: str, *, ref: str | int,
               client_msg_id: str) -> str:
    return _encode({"type": "chat_message", "ref": ref, "payload": frames.ChatMessageIn(
        conversation_id=conversation_id, content=content, client_msg_id=client_msg_id,
    )}).decode()


def sync_frame(positions: dict[str, int], *, ref: str | int) -> str:
    return _encode({"type": "sync", "ref": ref,
                    "payload": frames.SyncIn(conversations=positions)}).decode()


def ping_frame(ref: str | int) -> str:
    return _encode({"type": "ping", "ref": ref, "payload": {}}).decode()


def stamped(t_ns: int, pad: int) -> str:
    """Message content that carries its send time (perf_counter_ns: CLOCK_MONOTONIC, so it
    is comparable across the generator's processes on this machine)."""
    return f"{t_ns} {'x' * pad}"


def stamp_of(content: str) -> int:
    return int(content.partition(" ")[0])


# ---------------------------------------------------------------------------- REST


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    token: str


class Rest:
    """REST set-up calls. Owns one httpx client; close with aclose()."""

    def __init__(self, base_url: str, *, concurrency: int = 16) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=60,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._limit = trio.CapacityLimiter(concurrency)
        self._prefix = f"b{uuid.uuid4().hex[:6]}"
        self._count = 0
        self.registered = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def register_many(self, n: int) -> list[User]:
        """Register n fresh accounts concurrently. Raises RuntimeError on a refusal."""
        users: list[User | None] = [None] * n

        async def one(i: int) -> None:
            async with self._limit:
                self._count += 1
                name = f"{self._prefix}_{self._count}"
                r = await self.http.post("/api/auth/register", json={
                    "username": name, "email": f"{name}@bench.example.com",
                    "password": PASSWORD, "display_name": name})
                if r.status_code != 201:
                    raise RuntimeError(f"register {name}: {r.status_code} {r.text[:200]}")
                body = r.json()
                users[i] = User(id=body["user"]["id"], name=name, token=body["token"])
                self.registered += 1

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        return [u for u in users if u is not None]

    async def conversation(self, owner: User, others: Sequence[User], *,
                           group: bool, name: str = "bench") -> str:
        """Create a one_to_one (one other) or group conversation; returns its id."""
        body: dict[str, Any] = {"type": "group", "name": name,
                                "member_ids": [o.id for o in others]}
        if not group:
            body = {"type": "one_to_one", "member_ids": [others[0].id]}
        async with self._limit:
            r = await self.http.post("/api/conversations", json=body,
                                     headers={"Authorization": f"Bearer {owner.token}"})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"create conversation: {r.status_code} {r.text[:200]}")
        return str(r.json()["id"])

    async def pairs(self, users: Sequence[User]) -> list[str]:
        """One one_to_one per consecutive pair (users[0]+users[1], ...), concurrently."""
        cids: list[str] = [""] * (len(users) // 2)

        async def one(i: int) -> None:
            cids[i] = await self.conversation(users[2 * i], [users[2 * i + 1]], group=False)

        async with trio.open_nursery() as nursery:
            for i in range(len(cids)):
                nursery.start_soon(one, i)
        return cids


# ---------------------------------------------------------------------------- WebSocket


class RejectedError(Exception):
    """The server answered the handshake with something other than `ready`."""


# what connecting a socket can raise (besides cancellation); BrokenResourceError: the lean
# client's stream reset mid-handshake (a node killed while its clients reconnect)
CONNECT_FAILURES = (OSError, HandshakeError, ConnectionClosed, RejectedError, trio.TooSlowError,
                    trio.BrokenResourceError, aioclient.RefusedError)


class Ws(Protocol):
    """One client socket, whichever client: `close()` ends it gracefully, `cut()` abruptly."""

    user: User
    ready: dict[str, Any]

    @property
    def stream(self) -> trio.abc.AsyncResource:
        """Closing it drops the connection."""
        ...

    @property
    def closed(self) -> bool: ...
    async def send(self, text: str) -> None: ...
    async def recv(self) -> tuple[frames.Envelope, int]:
        """The next frame and its arrival time (perf_counter_ns). Raises ConnectionClosed."""
        ...
    async def close(self, deadline: float = 5.0) -> None: ...
    async def cut(self) -> None: ...


class TrioWs:
    """A trio-websocket socket. Its reader task lives in the nursery given to `connect`."""

    __slots__ = ("conn", "ready", "stream", "user")

    def __init__(self, conn: WebSocketConnection, stream: trio.SocketStream, user: User,
                 ready: dict[str, Any]) -> None:
        self.conn = conn
        self.stream = stream
        self.user = user
        self.ready = ready

    @property
    def closed(self) -> bool:
        return self.conn.closed is not None

    async def send(self, text: str) -> None:
        await self.conn.send_message(text)

    async def recv(self) -> tuple[frames.Envelope, int]:
        """The next frame and its arrival time (perf_counter_ns). Raises ConnectionClosed."""
        data = await self.conn.get_message()
        return decode_envelope(data), time.perf_counter_ns()

    async def close(self, deadline: float = 5.0) -> None:
        """Close handshake, bounded; the TCP stream is closed whatever happens."""
        with trio.move_on_after(deadline, shield=True):
            await self.conn.aclose()
        if not self.closed:
            await self.stream.aclose()

    async def cut(self) -> None:
        """Drop the TCP connection with a RST, no close frame: what a dead link looks like
        to the server."""
        try:
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
        await self.stream.aclose()


async def connect(nursery: trio.Nursery, host: str, port: int, user: User, *,
                  queue: int = QUEUE, kind: str | None = None) -> Ws:
    """Open a socket for `user` and wait for its `ready` frame. A trio-websocket socket's
    tasks live in a holder task started in `nursery`, which ends when the socket closes
    (the lean client has no task). `kind` overrides the --client choice.

    Raises OSError (TCP), trio_websocket.HandshakeError/ConnectionRejected (refused),
    ConnectionClosed, RejectedError, or trio.TooSlowError after CONNECT_DEADLINE.
    """
    if (kind or client_kind) == "lean":
        return await _connect_lean(host, port, user)
    if (kind or client_kind) == "websockets":
        return await _connect_aio(host, port, user)
    return await nursery.start(_hold, host, port, user, queue)  # type: ignore[no-any-return]


def idle_client() -> str:
    """The client for sockets that idle: one with a reader of its own that answers the
    server's heartbeat pings (the lean client reads only when asked)."""
    return "websockets" if client_kind == "websockets" else "trio-websocket"


async def _connect_lean(host: str, port: int, user: User) -> LeanWs:
    stream: trio.SocketStream | None = None
    try:
        with trio.fail_after(CONNECT_DEADLINE):
            stream = await trio.open_tcp_stream(host, port)
            ws = LeanWs(stream, user)
            await ws.handshake(host, f"/api/ws?token={user.token}")
            env, _ = await ws.recv()
        if env.type != "ready":
            raise RejectedError(f"first frame was {env.type!r}, not 'ready'")
        ws.ready = msgspec.json.decode(env.payload)
        return ws
    except BaseException:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        raise


async def _connect_aio(host: str, port: int, user: User) -> aioclient.AioWs:
    ws, first = await aioclient.connect(host, port, user, deadline=CONNECT_DEADLINE)
    env = decode_envelope(first)
    if env.type != "ready":
        await ws.cut()
        raise RejectedError(f"first frame was {env.type!r}, not 'ready'")
    ws.ready = msgspec.json.decode(env.payload)
    return ws


async def _hold(host: str, port: int, user: User, queue: int, *,
                task_status: trio.TaskStatus[Ws] = trio.TASK_STATUS_IGNORED) -> None:
    """Own one socket: connect, hand the Ws to the starter, live until it closes.

    trio-websocket 0.12 answers a ping that arrives while it is closing with a pong that
    wsproto refuses (LocalProtocolError in its reader task); the socket is finished either
    way, so that is dropped here rather than cancelling every other socket of the scenario.
    """
    failure: BaseException | None = None
    stream: trio.SocketStream | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CONNECT_DEADLINE):
                    stream = await trio.open_tcp_stream(host, port)
                    conn = await wrap_client_stream(nursery, stream, host,
                                                    f"/api/ws?token={user.token}",
                                                    message_queue_size=queue)
                    env = decode_envelope(await conn.get_message())
                if env.type != "ready":
                    raise RejectedError(f"first frame was {env.type!r}, not 'ready'")
            except (OSError, HandshakeError, ConnectionClosed, RejectedError,
                    trio.TooSlowError) as exc:
                failure = exc
                nursery.cancel_scope.cancel()
            else:
                task_status.started(TrioWs(conn, stream, user, msgspec.json.decode(env.payload)))
    except* LocalProtocolError:
        pass
    finally:
        if stream is not None and failure is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
    if failure is not None:
        raise failure


async def connect_many(nursery: trio.Nursery, host: str, port: int, users: Sequence[User], *,
                       concurrency: int = 200, queue: int = QUEUE, kind: str | None = None,
                       failures: dict[str, int] | None = None) -> list[Ws]:
    """One socket per entry of `users`, `concurrency` handshakes at a time, in that order.
    Without `failures` the first failure is raised (in an ExceptionGroup); with it, failures
    are counted there by type and the sockets that did connect are returned."""
    out: list[Ws | None] = [None] * len(users)
    limit = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limit:
            try:
                out[i] = await connect(nursery, host, port, users[i], queue=queue, kind=kind)
            except CONNECT_FAILURES as exc:
                if failures is None:
                    raise
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

    async with trio.open_nursery() as inner:
        for i in range(len(users)):
            inner.start_soon(one, i)
    return [w for w in out if w is not None]


async def close_many(socks: Sequence[Ws], *, concurrency: int = 500,
                     deadline: float = 20.0) -> None:
    """Close every socket gracefully, `concurrency` at a time, all within `deadline`
    (whatever is still open then is closed abruptly)."""
    limit = trio.CapacityLimiter(concurrency)

    async def one(w: Ws) -> None:
        async with limit:
            await w.close()

    with trio.move_on_after(deadline, shield=True):
        async with trio.open_nursery() as nursery:
            for w in socks:
                nursery.start_soon(one, w)
    for w in socks:
        if not w.closed:
            await w.stream.aclose()


__all__ = ["ConnectionClosed", "Rest", "User", "Ws", "close_many", "connect", "connect_many",
           "idle_client"]
