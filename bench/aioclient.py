"""The third-party client (`--client websockets`): the PyPI `websockets` package, its asyncio
implementation with its defaults (a reader task per connection inside the library, pings
every 20 s, answers to the server's pings), as a plain application would use it.

The generator is one Trio process; with this client it hosts an asyncio loop
(trio-asyncio) and every socket lives on that loop. `recv()` stamps a frame's arrival on
the asyncio side, when `websockets` hands it over, so the crossing back to Trio is not
counted as server latency (it is generator CPU, reported as such). Errors surface as
trio_websocket.ConnectionClosed like the other clients', so the scenarios do not care
which client runs.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import msgspec
import trio
import trio_asyncio
from trio_websocket import CloseReason, ConnectionClosed
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidHandshake
from websockets.protocol import State

from chatsrv.protocol import frames

_envelope = msgspec.json.Decoder(frames.Envelope).decode
MAX_SIZE = 2**24  # the largest server frame accepted (a sync page is far smaller)


class RefusedError(Exception):
    """The handshake was refused (an HTTP status instead of 101) or broken."""


def _reason(exc: WsClosed) -> CloseReason:
    frame = exc.rcvd or exc.sent
    return CloseReason(frame.code if frame is not None else 1006,
                       frame.reason if frame is not None else "connection lost")


async def _open(url: str, deadline: float) -> tuple[ClientConnection, bytes]:
    conn = await ws_connect(url, open_timeout=deadline, max_size=MAX_SIZE, close_timeout=5)
    first = await conn.recv(decode=False)
    return conn, first  # type: ignore[return-value]


async def _recv(conn: ClientConnection) -> tuple[bytes, int]:
    data = await conn.recv(decode=False)
    return data, time.perf_counter_ns()  # type: ignore[return-value]


class _Transport(trio.abc.AsyncResource):
    """What `close_many` calls as `w.stream.aclose()`: drop the TCP connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    async def aclose(self) -> None:
        self._conn.transport.abort()
        await trio.lowlevel.checkpoint()


class AioWs:
    """One `websockets` client connection, driven from Trio."""

    __slots__ = ("_conn", "ready", "stream", "user")

    def __init__(self, conn: ClientConnection, user: Any, ready: dict[str, Any]) -> None:
        self._conn = conn
        self.user = user
        self.ready = ready
        self.stream = _Transport(conn)

    @property
    def closed(self) -> bool:
        return self._conn.state is not State.OPEN

    async def send(self, text: str) -> None:
        try:
            await trio_asyncio.aio_as_trio(self._conn.send)(text)
        except WsClosed as exc:
            raise ConnectionClosed(_reason(exc)) from None

    async def recv(self) -> tuple[frames.Envelope, int]:
        try:
            data, t = await trio_asyncio.aio_as_trio(_recv)(self._conn)
        except WsClosed as exc:
            raise ConnectionClosed(_reason(exc)) from None
        return _envelope(data), t

    async def close(self, deadline: float = 5.0) -> None:
        with trio.move_on_after(deadline, shield=True):
            try:
                await trio_asyncio.aio_as_trio(self._conn.close)()
            except (WsClosed, OSError):
                pass
        if self._conn.state is not State.CLOSED:
            self._conn.transport.abort()

    async def cut(self) -> None:
        sock = self._conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # already closed
        self._conn.transport.abort()
        await trio.lowlevel.checkpoint()


async def connect(host: str, port: int, user: Any, *, deadline: float) -> tuple[AioWs, bytes]:
    """A connection for `user` and its first frame (the caller checks it is `ready`).
    Raises OSError, RefusedError, ConnectionClosed or trio.TooSlowError."""
    url = f"ws://{host}:{port}/api/ws?token={user.token}"
    try:
        with trio.fail_after(deadline):
            conn, first = await trio_asyncio.aio_as_trio(_open)(url, deadline)
    except InvalidHandshake as exc:
        raise RefusedError(str(exc)) from None
    except WsClosed as exc:
        raise ConnectionClosed(_reason(exc)) from None
    except TimeoutError:
        raise trio.TooSlowError from None
    return AioWs(conn, user, {}), first
