"""A lean WebSocket client for the generator: the cost per received frame is what limits a
Python load generator on this 2-core machine, not the server.

trio-websocket runs a reader task per socket that hands every message through a memory
channel (two scheduler passes per frame) and parses it with wsproto's event machinery: about
50-100 µs of generator CPU per frame here, so one core reads ~15,000 frames/s and the
fan-out scenarios measured the generator. This client has no task of its own: `recv()`
reads the socket only when its queue of parsed frames is empty, and parses every server
frame that arrived in that read with a few slices (server frames are never masked). Frames
it sends are built by wsproto (masked, as RFC 6455 requires of clients). Closing and errors
surface as trio_websocket.ConnectionClosed, so the scenarios do not care which client runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from collections import deque
from typing import Any

import msgspec
import trio
from trio_websocket import CloseReason, ConnectionClosed, HandshakeError
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Pong, TextMessage

from chatsrv.protocol import frames

MAX_RECV = 262144
EAGER_READS = 16  # reads in a row without yielding to other tasks
_envelope = msgspec.json.Decoder(frames.Envelope).decode
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class LeanWs:
    """One client socket (see the module doc). `closed` once either side closed it."""

    __slots__ = ("_buf", "_conn", "_done", "_drained", "_eager", "_fd", "_frames", "_parts", "_reading",
                 "_sending", "close_reason", "ready", "stream", "user")

    def __init__(self, stream: trio.SocketStream, user: Any) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno()
        self._eager = 0
        self._drained = False  # the last read emptied the socket
        self.user = user
        self.ready: dict[str, Any] = {}
        self._conn = Connection(ConnectionType.CLIENT)
        self._buf = bytearray()
        self._frames: deque[tuple[bytes, int]] = deque()
        self._parts: list[bytes] = []
        self._sending = trio.Lock()  # pongs from recv() and sends of the scenario
        self.close_reason: CloseReason | None = None
        self._done = trio.Event()  # close_reason is set
        self._reading = False  # a task is in get_message (close() then lets it read)

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    async def handshake(self, host: str, target: str) -> None:
        key = base64.b64encode(os.urandom(16))
        await self.stream.send_all(
            b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
            b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            more = await self.stream.receive_some(MAX_RECV)
            if not more:
                raise HandshakeError("connection closed during the handshake")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            raise HandshakeError(lines[0].decode("latin-1"))
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        accept = next((v.strip() for n, _, v in (line.partition(b":") for line in lines[1:])
                       if n.strip().lower() == b"sec-websocket-accept"), b"")
        if accept != expected:
            raise HandshakeError("bad Sec-WebSocket-Accept")
        self._buf += rest
        self._parse(time.perf_counter_ns())

    async def send(self, text: str) -> None:
        if self.close_reason is not None:
            raise ConnectionClosed(self.close_reason)
        try:
            await self._write(self._conn.send(TextMessage(data=text)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._gone(1006, "send failed")
            raise ConnectionClosed(self.close_reason) from None

    async def _write(self, data: bytes) -> None:
        """Write `data` whole: straight to the socket when no other write is under way and
        the kernel takes it (no scheduling), else through trio."""
        try:
            self._sending.acquire_nowait()
        except trio.WouldBlock:
            async with self._sending:
                await self.stream.send_all(data)
            return
        try:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            if sent < len(data):
                await self.stream.send_all(memoryview(data)[sent:])
        finally:
            self._sending.release()

    async def recv(self) -> tuple[frames.Envelope, int]:
        """The next frame and when it was read (perf_counter_ns). Raises ConnectionClosed."""
        data, t = await self.get_message()
        return _envelope(data), t

    async def get_message(self) -> tuple[bytes, int]:
        """The next text frame's payload and when it was read (perf_counter_ns)."""
        while not self._frames:
            if self.close_reason is not None:
                raise ConnectionClosed(self.close_reason)
            data = await self._read()
            if not data:
                self._gone(1006, "connection lost")
                continue
            self._buf += data
            await self._parse_and_answer(time.perf_counter_ns())
        return self._frames.popleft()

    async def _read(self) -> bytes:
        """What the socket has (b"" once it is closed). Read straight from the socket while
        it has data, yielding to the other tasks every EAGER_READS reads; after a read that
        emptied it, wait for trio's word before the next (no read that is bound to fail)."""
        self._reading = True
        try:
            while True:
                if self._drained:
                    await trio.lowlevel.wait_readable(self._fd)
                    self._eager = 0
                try:
                    data = os.read(self._fd, MAX_RECV)
                except BlockingIOError:
                    self._drained = True
                    continue
                except OSError:
                    return b""
                self._drained = len(data) < MAX_RECV
                if not self._drained:
                    self._eager += 1
                    if self._eager >= EAGER_READS:
                        self._eager = 0
                        await trio.lowlevel.checkpoint()
                return data
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        finally:
            self._reading = False

    async def _parse_and_answer(self, t: int) -> None:
        for opcode, payload in self._parse(t):
            if opcode == 0x9:  # ping (not answered once our close is on its way)
                if self._conn.state is ConnectionState.OPEN:
                    await self._write(self._conn.send(Pong(payload=payload)))
            elif opcode == 0x8:  # close: answer it, then the socket is done
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                if self._conn.state is ConnectionState.OPEN:  # else it answers ours
                    with trio.move_on_after(1):
                        await self._write(self._conn.send(
                            CloseConnection(code=1000 if code == 1005 else code)))
                self._gone(code, reason)
                await self.stream.aclose()

    def _parse(self, t: int) -> list[tuple[int, bytes]]:
        """Move every whole data frame in the buffer to the queue; returns control frames."""
        buf = self._buf
        size = len(buf)
        pos = 0
        control = []
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode & 0x8:
                control.append((opcode, payload))
            elif b0 & 0x80:  # FIN
                if self._parts:
                    payload = b"".join([*self._parts, payload])
                    self._parts.clear()
                self._frames.append((payload, t))
            else:
                self._parts.append(payload)
        del buf[:pos]
        return control

    def _gone(self, code: int, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = CloseReason(code, reason)
            self._done.set()

    async def close(self, deadline: float = 5.0) -> None:
        """Close handshake, bounded; the TCP stream is closed whatever happens."""
        with trio.move_on_after(deadline, shield=True):
            try:
                if self.close_reason is None:
                    await self._write(self._conn.send(CloseConnection(code=1000)))
                if self._reading:  # another task reads: it will see the server's close
                    await self._done.wait()
                while self.close_reason is None:
                    await self.get_message()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._gone(1000, "")
        await self.stream.aclose()

    async def cut(self) -> None:
        try:
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
        self._gone(1006, "cut")
        await self.stream.aclose()
