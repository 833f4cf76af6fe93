"""WebSocket connections on a Trio stream (wsproto), the /api/ws hot path without ASGI.

What it buys over serving the socket through Hypercorn's ASGI layer, per frame out: no ASGI
message dict, no send lock and shielded scope, no per-frame wsproto encode (server frames are
unmasked, so an event fanned out to N sockets is framed once, see `frame_of`), and one
write for everything queued (`Flusher` in outbox.py, or the writer when the kernel buffer
is full). Per frame in: no timeout scope per read (liveness is one ticker for all sockets,
the endpoint's `run_heartbeat`). Per socket: no ping task and no protocol task.

`WsSocket` is the transport-neutral face the endpoint (ws.py) talks to; `AsgiSocket` is the
same face over ASGI, for the rare upgrade that arrives on a kept-alive HTTP connection that
Hypercorn already owns.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from chatsrv.protocol.frames import Frame

if TYPE_CHECKING:
    from chatsrv.transport.outbox import Outbox

MAX_RECV = 65536
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_PROTOCOL_ERROR = 1002
PING_FRAME = b"\x89\x00"
MAX_CLOSE_REASON = 120  # bytes: a close frame's payload is at most 125 with the code


def text_frame(data: bytes) -> bytes:
    """A final, unmasked server text frame (RFC 6455 §5.2)."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def frame_of(event: Frame) -> bytes:
    """The event's frame, built once however many sockets it goes to."""
    cache = event.__dict__
    frame = cache.get("ws_frame")
    if frame is None:
        frame = cache["ws_frame"] = text_frame(event.text.encode())
    return frame


class Closing(Exception):
    """The peer broke the protocol: the connection ends with this close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Handshake:
    """What the endpoint needs from an upgrade request (header names lower case)."""

    __slots__ = ("headers", "path", "peer", "query", "subprotocols")

    def __init__(self, path: str, query: str, subprotocols: list[str], *,
                 headers: dict[str, str] | None = None, peer: str | None = None) -> None:
        self.path, self.query, self.subprotocols = path, query, subprotocols
        self.headers = headers or {}
        self.peer = peer

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @property
    def host(self) -> str:
        return self.headers.get("host", "")

    @property
    def forwarded_for(self) -> str | None:
        return self.headers.get("x-forwarded-for")

    @property
    def scheme(self) -> str:
        # behind a TLS-terminating proxy the browser's origin is https://
        return self.headers.get("x-forwarded-proto", "http").split(",")[0].strip() or "http"


class FrameSocket(Protocol):
    """A WebSocket as the endpoint sees it (wsproto on a Trio stream, or ASGI)."""

    last_read: float

    async def accept(self, subprotocol: str | None) -> None: ...
    async def refuse(self, status: int, body: dict[str, Any]) -> None: ...
    async def receive(self) -> str | bytes | None: ...
    async def send(self, frames: list[Frame | bytes]) -> None: ...
    def ping(self) -> bytes | None: ...
    async def close(self, code: int, reason: str) -> None: ...


def _declared_length(ws: WSConnection | Connection) -> int:
    """The payload length the header of the frame being received declares (0 if unknown):
    a frame announcing more than the message limit is refused at its header, not after the
    peer has trickled it in. wsproto has no public accessor for it."""
    conn = ws if isinstance(ws, Connection) else getattr(ws, "connection", None)
    decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
    header = getattr(decoder, "header", None)
    return int(getattr(header, "payload_len", 0) or 0)


def _frames(items: Iterable[Frame | bytes]) -> bytes:
    return b"".join(item if isinstance(item, bytes) else frame_of(item) for item in items)


class WsSocket:
    """A server WebSocket on a Trio stream: `handshake` (given the request head the listener
    read), then `receive` in the reader task; everything it sends goes through the outbox."""

    __slots__ = ("_closed_by_peer", "_fd", "_pending", "_ws", "broken", "close_wait",
                 "last_read", "max_message", "outbox", "send_stall", "stream")

    def __init__(self, stream: trio.SocketStream, *, max_message: int, send_stall: float,
                 close_wait: float) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno()
        self.max_message = max_message
        # A batch the peer does not take within send_stall marks it dead (its kernel buffer
        # is full and it stopped reading); the send is shielded until then so a frame is
        # never cut in half. After our close frame, close_wait for the peer's.
        self.send_stall = send_stall
        self.close_wait = close_wait
        # the handshake's WSConnection, then (accepted) only its wsproto Connection: the
        # handshake state (h11 connection, request, headers) is dropped with the upgrade
        self._ws: WSConnection | Connection = WSConnection(ConnectionType.SERVER)
        self._pending: list[Any] = []  # events read, not yet handled (a deque is 600 B)
        self._closed_by_peer: CloseConnection | None = None
        self.broken = False
        self.last_read = trio.current_time()
        # set by the endpoint: pongs go out through the outbox (the reader never writes)
        self.outbox: Outbox | None = None

    async def handshake(self, head: bytes | bytearray, *,
                        peer: str | None = None) -> Handshake | None:
        """Parse the upgrade request (head + whatever completes it); None if it is not a
        valid WebSocket request (a 400 has been sent). A bytearray `head` is emptied once
        parsed (the caller's buffer is not kept for the connection's life)."""
        ws = self._ws
        assert isinstance(ws, WSConnection)
        try:
            ws.receive_data(bytes(head))
            if isinstance(head, bytearray):
                head.clear()
            while True:
                for event in ws.events():
                    if isinstance(event, Request):
                        path, _, query = event.target.partition("?")
                        headers = {bytes(k).decode("latin-1").lower():
                                   bytes(v).decode("latin-1")
                                   for k, v in event.extra_headers}
                        headers["host"] = event.host
                        return Handshake(unquote(path), query, list(event.subprotocols),
                                         headers=headers, peer=peer)
                data = await self._receive_some()
                if not data:
                    return None
                ws.receive_data(data)
        except RemoteProtocolError as exc:
            await self._send_raw(ws.send(exc.event_hint) if exc.event_hint else b"")
            return None

    async def accept(self, subprotocol: str | None) -> None:
        ws = self._ws
        data = ws.send(AcceptConnection(subprotocol=subprotocol))
        if isinstance(ws, WSConnection) and ws.connection is not None:
            self._ws = ws.connection
        await self._send_raw(data)

    async def refuse(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        head = self._ws.send(RejectConnection(
            status_code=status, has_body=True,
            headers=[(b"content-type", b"application/json"),
                     (b"content-length", str(len(data)).encode())]))
        await self._send_raw(head + self._ws.send(RejectData(data=data)))

    async def receive(self) -> str | bytes | None:
        """The next whole message; None once the peer has closed or gone. Pings are
        answered (through the outbox), pongs only count as life. Raises Closing for a message
        over max_message (1009) or a protocol violation (1002)."""
        parts: list[Any] = []
        size = 0
        pending = self._pending
        while True:
            while pending:
                event = pending.pop(0)
                if isinstance(event, Message):
                    size += len(event.data)
                    if size > self.max_message or (
                            not event.frame_finished
                            and _declared_length(self._ws) > self.max_message):
                        raise Closing(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    if event.message_finished and not parts:
                        return event.data  # type: ignore[no-any-return]
                    parts.append(event.data)
                    if event.message_finished:
                        joiner = b"" if isinstance(event, BytesMessage) else ""
                        return joiner.join(parts)  # type: ignore[no-any-return]
                elif isinstance(event, Ping):
                    if self.outbox is not None:
                        self.outbox.put(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.OPEN:
                        # not a close frame: wsproto refused a frame (bad UTF-8, unmasked,
                        # reserved bits...); we close with its code (1002, 1007)
                        raise Closing(event.code, event.reason or "protocol error")
                    self._closed_by_peer = event
                    return None
                elif not isinstance(event, Pong):
                    continue
            try:
                data = await self._receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.last_read = trio.current_time()
            try:
                self._ws.receive_data(data or None)
                pending.extend(self._ws.events())
            except RemoteProtocolError as exc:
                raise Closing(CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}") from None

    async def send(self, frames: list[Frame | bytes]) -> None:
        """Send queued frames in one write (only the connection's writer calls this)."""
        await self._send_raw(_frames(frames))

    def ping(self) -> bytes | None:
        return PING_FRAME

    async def close(self, code: int, reason: str) -> None:
        """Close handshake (answer the peer's close, or send ours and wait briefly for the
        reply), then drop the TCP connection. Safe to call more than once."""
        ws = self._ws
        try:
            if self._closed_by_peer is not None:
                if ws.state.name == "REMOTE_CLOSING":
                    await self._send_raw(ws.send(self._closed_by_peer.response()))
            elif ws.state.name == "OPEN" and not self.broken:
                reason = reason.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
                await self._send_raw(ws.send(CloseConnection(code=code, reason=reason)))
                with trio.move_on_after(self.close_wait):
                    while not self.broken:
                        data = await self._receive_some()
                        if not data:
                            break
                        ws.receive_data(data)
                        if any(isinstance(e, CloseConnection) for e in ws.events()):
                            break
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError,
                RemoteProtocolError):
            pass
        finally:
            self.broken = True
            await trio.aclose_forcefully(self.stream)

    def write_now(self, data: bytes) -> int:
        """Write without waiting: bytes the kernel took (0 if its buffer is full, -1 if the
        peer is gone). Only for the flusher, when no write of the writer is in progress."""
        if self.broken:
            return -1
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return -1  # the writer's own send meets the error and ends the connection

    async def _receive_some(self) -> bytes:
        """What the socket has (b"" at EOF), as SocketStream.receive_some does it (one
        checkpoint) but read straight from the fd: fewer coroutine frames held by every
        idle socket's parked reader."""
        if self.stream.socket.fileno() < 0:
            raise trio.ClosedResourceError("socket closed")
        waited = False
        while True:
            try:
                data = os.read(self._fd, MAX_RECV)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)  # a checkpoint
                waited = True
                if self.stream.socket.fileno() < 0:
                    raise trio.ClosedResourceError("socket closed") from None
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            if not waited:
                await trio.lowlevel.checkpoint()
            return data

    async def _send_raw(self, data: bytes) -> None:
        """Write `data` whole. What the kernel takes at once is written directly (the usual
        case: no scheduling, no cancel scope); the rest, if its buffer is full, under a
        shield so a cancelled connection never leaves half a frame on the wire."""
        if self.broken or not data:
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            raise trio.BrokenResourceError("peer gone") from None
        if sent == len(data):
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_stall
            try:
                await self.stream.send_all(memoryview(data)[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True
        if scope.cancelled_caught:
            self.broken = True  # a frame may be cut: nothing more can go on this stream
        if self.broken:
            raise trio.BrokenResourceError("peer gone")


class AsgiSocket:
    """The same face over ASGI (Hypercorn): pings are Hypercorn's, frames go one by one."""

    __slots__ = ("_receive", "_send", "last_read")

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive, self._send = receive, send
        self.last_read = trio.current_time()

    async def accept(self, subprotocol: str | None) -> None:
        message: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol:
            message["subprotocol"] = subprotocol
        await self._send(message)

    async def refuse(self, status: int, body: dict[str, Any]) -> None:
        await self._send({"type": "websocket.http.response.start", "status": status,
                          "headers": [(b"content-type", b"application/json")]})
        await self._send({"type": "websocket.http.response.body",
                          "body": json.dumps(body).encode()})

    async def receive(self) -> str | bytes | None:
        message = await self._receive()
        self.last_read = trio.current_time()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def send(self, frames: list[Frame | bytes]) -> None:
        for item in frames:
            if isinstance(item, Frame):
                await self._send({"type": "websocket.send", "text": item.text})

    def ping(self) -> bytes | None:
        return None  # Hypercorn pings these itself (websocket_ping_interval)

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})
