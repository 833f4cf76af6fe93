"""The WebSocket transport itself, with a raw wsproto client on a TCP socket: heartbeat,
fragments, oversized messages, bad handshakes, and an upgrade on a kept-alive HTTP
connection (served through Hypercorn's ASGI path rather than the front's)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from tests.conftest import Server, start_server
from tests.helpers import Client, pair


class RawWs:
    """A WebSocket client that does only what it is told (no automatic pongs)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []
        self.pings = 0
        self.closed: CloseConnection | None = None
        self._sending = trio.Lock()  # a reader task answering pings may send meanwhile

    async def _send(self, data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(data)

    async def handshake(self, target: str) -> Any:
        await self._send(self.ws.send(Request(host="localhost", target=target)))
        while True:
            events = await self._more()
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection | RejectConnection):
                    self.events = events[i + 1:]  # frames that came in the same read
                    return event

    async def send(self, frame: dict[str, Any] | str, *, finished: bool = True) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self._send(self.ws.send(TextMessage(data=text, message_finished=finished)))

    async def frame(self, *, answer_pings: bool = False) -> dict[str, Any] | None:
        """The next whole text frame; None when the server closed the connection."""
        while True:
            if not self.events:
                self.events = await self._more()
            event = self.events.pop(0)
            if isinstance(event, Ping):
                self.pings += 1
                if answer_pings:
                    await self._send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = event
                return None
            elif isinstance(event, Message):
                return json.loads(event.data)  # type: ignore[no-any-return]

    async def expect(self, type_: str) -> dict[str, Any]:
        """The next frame of this type (others, e.g. presence, are skipped)."""
        while (frame := await self.frame()) is not None:
            if frame["type"] == type_:
                return frame
        raise AssertionError(f"closed while waiting for {type_}: {self.closed}")

    async def _more(self) -> list[Any]:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())


@asynccontextmanager
async def raw_ws(server: Server, token: str) -> AsyncIterator[RawWs]:
    url = urlsplit(server.url)
    stream = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 80)
    async with stream:
        ws = RawWs(stream)
        accepted = await ws.handshake(f"/api/ws?token={token}")
        assert isinstance(accepted, AcceptConnection), accepted
        ready = await ws.frame()
        assert ready is not None and ready["type"] == "ready"
        yield ws


async def _until_closed(ws: RawWs, *, answer_pings: bool) -> None:
    while await ws.frame(answer_pings=answer_pings) is not None:
        pass


async def test_quiet_sockets_are_pinged_and_silent_ones_dropped(server: Server) -> None:
    settings = replace(server.settings, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, settings)
        client = srv.client()
        a = await client.register()
        async with raw_ws(srv, a.token) as live, raw_ws(srv, a.token) as silent, \
                trio.open_nursery() as readers:
            pongs: list[dict[str, Any]] = []
            ponged = trio.Event()

            async def answer_pings() -> None:
                while (frame := await live.frame(answer_pings=True)) is not None:
                    if frame["type"] == "pong":
                        pongs.append(frame)
                        ponged.set()

            readers.start_soon(answer_pings)
            with trio.fail_after(5):
                await _until_closed(silent, answer_pings=False)
            assert silent.pings >= 2
            assert silent.closed is not None and silent.closed.code == 1001
            # the socket that answered its pings all along is still served
            await live.send({"type": "ping", "payload": {}, "ref": "p"})
            with trio.fail_after(5):
                await ponged.wait()
            assert pongs[0]["ref"] == "p" and live.pings >= 2
            assert live.closed is None
            readers.cancel_scope.cancel()
        assert srv.services.metrics.connections_timed_out == 1
        await client.aclose()
        srv.shutdown.set()


async def test_fragmented_messages_are_reassembled(client: Client, server: Server) -> None:
    a, _b, cid = await pair(client)
    async with raw_ws(server, a.token) as ws:
        frame = json.dumps({"type": "chat_message", "ref": "f",
                            "payload": {"conversation_id": cid, "content": "in two parts"}})
        half = len(frame) // 2
        await ws.send(frame[:half], finished=False)
        await ws.send(frame[half:])
        ack = await ws.expect("message_ack")
        assert ack["ref"] == "f"


async def test_a_message_far_over_the_cap_closes_with_1009(client: Client,
                                                            server: Server) -> None:
    a = await client.register()
    cap = server.settings.max_frame_bytes * 16
    async with raw_ws(server, a.token) as ws:
        # sent in fragments: the server stops at the cap rather than buffering the rest
        chunk = "x" * (cap // 4)
        try:
            for _ in range(6):
                await ws.send(chunk, finished=False)
        except trio.BrokenResourceError:
            pass  # the server may already have dropped the connection
        with trio.fail_after(5):
            await _until_closed(ws, answer_pings=True)
        assert ws.closed is not None and ws.closed.code == 1009
    # the server goes on
    async with raw_ws(server, a.token) as ws:
        await ws.send({"type": "ping", "payload": {}})
        await ws.expect("pong")


def _masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame built by hand (for frames a well-behaved library will not send)."""
    assert len(payload) < 126
    key = os.urandom(4) if mask else b""
    body = bytes(c ^ key[i % 4] for i, c in enumerate(payload)) if mask else payload
    return bytes([(0x80 if fin else 0) | opcode, (0x80 if mask else 0) | len(payload)]) + key + body


async def test_protocol_violations_close_with_1002_or_1007_and_the_server_goes_on(
        client: Client, server: Server) -> None:
    a = await client.register()
    cases = [
        (_masked(0x1, b'{"type":"ping","payload":{"x":"\xff"}}'), 1007),  # invalid UTF-8
        (_masked(0x1, b'{"type":"ping","payload":{}}', mask=False), 1002),  # unmasked
        (_masked(0x3, b"x"), 1002),  # reserved opcode
        (_masked(0x9, b"x", fin=False), 1002),  # fragmented control frame
    ]
    for frame, code in cases:
        async with raw_ws(server, a.token) as ws:
            await ws.stream.send_all(frame)
            with trio.fail_after(5):
                await _until_closed(ws, answer_pings=True)
            assert ws.closed is not None and ws.closed.code == code, (frame, ws.closed)
    async with raw_ws(server, a.token) as ws:
        await ws.send({"type": "ping", "payload": {}})
        await ws.expect("pong")


async def test_a_bad_upgrade_request_gets_400(server: Server) -> None:
    url = urlsplit(server.url)
    async with await trio.open_tcp_stream(url.hostname or "", url.port or 80) as stream:
        await stream.send_all(b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                              b"Upgrade: websocket\r\n\r\n")  # no key, no version
        response = await stream.receive_some(65536)
    assert response.startswith(b"HTTP/1.1 400"), response


async def test_upgrade_on_a_kept_alive_http_connection(client: Client, server: Server) -> None:
    """The front hands a plain HTTP connection to Hypercorn; a WebSocket upgrade that comes
    on it later reaches the same endpoint through ASGI."""
    a, b, cid = await pair(client)
    url = urlsplit(server.url)
    async with await trio.open_tcp_stream(url.hostname or "", url.port or 80) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response:
            response += await stream.receive_some(65536)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += await stream.receive_some(65536)
        ws = RawWs(stream)
        accepted = await ws.handshake(f"/api/ws?token={a.token}")
        assert isinstance(accepted, AcceptConnection)
        ready = await ws.frame()
        assert ready is not None and ready["type"] == "ready"
        async with client.ws(b) as wb:
            await ws.send({"type": "chat_message", "ref": 1,
                           "payload": {"conversation_id": cid, "content": "via ASGI"}})
            await ws.expect("message_ack")
            got = await wb.expect("new_message")
            assert got["payload"]["content"] == "via ASGI"
