"""A small synchronous WebSocket client on a plain socket (wsproto), for fuzzing.

It can speak the protocol properly (`send_frame`, `send_text`, `ping`) and also write any
bytes at all after the handshake (`send_raw`), which a conforming client library refuses to
do. Every read has a deadline; a close from the server is reported as `Closed(code)`.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from tests.fuzz.node import Node

TIMEOUT = 10.0


@dataclass
class Closed:
    """The server closed the WebSocket (code None: TCP closed without a close frame)."""

    code: int | None
    reason: str = ""


class HandshakeRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake refused with {status}: {body[:200]!r}")
        self.status, self.body = status, body


class WsClient:
    def __init__(self, node: Node, token: str, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((node.host, node.port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.frames: list[dict[str, Any]] = []  # received, not yet taken
        self.closed: Closed | None = None
        deadline = time.monotonic() + timeout
        self.sock.sendall(self.ws.send(Request(host=f"{node.host}:{node.port}",
                                               target=f"/api/ws?token={token}")))
        refused: RejectConnection | None = None
        body = b""
        while True:
            for event in self._events(deadline):
                if isinstance(event, AcceptConnection):
                    ready = self.recv(deadline - time.monotonic())
                    assert ready["type"] == "ready", ready
                    self.ready = ready
                    return
                if isinstance(event, RejectConnection):
                    refused = event
                    if not event.has_body:
                        raise HandshakeRefused(event.status_code, b"")
                if isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and refused is not None:
                        raise HandshakeRefused(refused.status_code, body)

    # ------------------------------------------------------------------ sending

    def send_frame(self, type_: str, payload: Any = None, ref: Any = None) -> None:
        frame: dict[str, Any] = {"type": type_, "payload": {} if payload is None else payload}
        if ref is not None:
            frame["ref"] = ref
        self.send_text(json.dumps(frame))

    def send_text(self, text: str) -> None:
        """`text` as one text message; lone surrogates (from a JSON `\\ud800` escape read
        back) cannot be UTF-8, so they go as they would from a sloppy client: surrogatepass."""
        data = text.encode("utf-8", "surrogatepass")
        self.send_raw(client_frame(0x1, data))

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = self.closed or Closed(None, "send failed")

    # ------------------------------------------------------------------ receiving

    def recv(self, wait: float = TIMEOUT) -> dict[str, Any]:
        """The next frame; raises TimeoutError after `wait` s, or ConnectionError if closed."""
        deadline = time.monotonic() + wait
        while not self.frames:
            if self.closed is not None:
                raise ConnectionError(f"closed: {self.closed}")
            for _ in self._events(deadline):
                pass
        return self.frames.pop(0)

    def expect(self, type_: str, *, wait: float = TIMEOUT, **match: Any) -> dict[str, Any]:
        """The next frame of `type_` whose payload has `match` values (others are kept)."""
        deadline = time.monotonic() + wait
        seen = 0
        while True:
            for i in range(seen, len(self.frames)):
                f = self.frames[i]
                if f.get("type") == type_ and all(
                        (f.get("payload") or {}).get(k) == v for k, v in match.items()):
                    return self.frames.pop(i)
            seen = len(self.frames)
            if self.closed is not None:
                raise ConnectionError(f"closed while waiting for {type_}: {self.closed}")
            for _ in self._events(deadline):
                pass

    def until_ref(self, ref: str, *, wait: float = TIMEOUT) -> list[dict[str, Any]]:
        """Every frame up to and including the first whose `ref` is `ref` (taken)."""
        deadline = time.monotonic() + wait
        while True:
            for i, f in enumerate(self.frames):
                if f.get("ref") == ref:
                    taken, self.frames = self.frames[:i + 1], self.frames[i + 1:]
                    return taken
            if self.closed is not None:
                raise ConnectionError(f"closed: {self.closed}")
            for _ in self._events(deadline):
                pass

    def roundtrip(self, *, wait: float = TIMEOUT) -> list[dict[str, Any]]:
        """Send an app-level `ping` and wait for its `pong`: everything that came before it.
        Replies come in send order, so this also collects the replies to earlier frames."""
        ref = f"probe-{uuid.uuid4().hex[:8]}"
        self.send_frame("ping", {}, ref)
        frames = self.until_ref(ref, wait=wait)
        assert frames[-1]["type"] == "pong", frames[-1]
        return frames[:-1]

    def wait_closed(self, *, wait: float = TIMEOUT) -> Closed:
        """Read (and keep) frames until the server closes; its close code."""
        deadline = time.monotonic() + wait
        while self.closed is None:
            for _ in self._events(deadline):
                pass
        return self.closed

    def _events(self, deadline: float) -> list[Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("nothing from the server before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("nothing from the server before the deadline") from None
        except OSError:
            data = b""
        if not data:
            if self.closed is None:
                self.closed = Closed(None, "TCP closed")
            return []
        try:
            self.ws.receive_data(data)
            events = list(self.ws.events())
        except RemoteProtocolError as exc:
            self.closed = Closed(None, f"server broke the protocol: {exc}")
            return []
        for event in events:
            if isinstance(event, TextMessage) and event.message_finished:
                self.frames.append(json.loads(event.data))
            elif isinstance(event, Message):
                pass  # partial or binary: the server sends neither
            elif isinstance(event, Ping):
                self.send_raw(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = Closed(event.code, event.reason or "")
        return events

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                 rsv: int = 0, length: int | None = None) -> bytes:
    """One client frame, built by hand (RFC 6455 §5.2) so any field can be wrong: `length`
    overrides the declared payload length, `mask=False` sends it unmasked."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"
    stream = (key * (len(payload) // 4 + 1))[:len(payload)]
    masked = (int.from_bytes(payload) ^ int.from_bytes(stream)).to_bytes(len(payload))
    return head + key + masked


class Bystanders:
    """Two users in a conversation of their own, each on a socket. After anything hostile,
    `chat` shows they still talk: the sender's `message_ack` and the other's `new_message`."""

    def __init__(self, node: Node) -> None:
        from tests.fuzz.node import conversation, register, rest

        with rest(node) as http:
            self.a, self.b = register(http), register(http)
            self.conversation_id = conversation(http, self.a, self.b)
        self.ws_a = WsClient(node, self.a.token)
        self.ws_b = WsClient(node, self.b.token)
        self.sent = 0

    def chat(self, *, wait: float = TIMEOUT) -> None:
        self.sent += 1
        cmid = f"bystander-{uuid.uuid4().hex}"
        self.ws_a.send_frame("chat_message", {"conversation_id": self.conversation_id,
                                              "content": f"still here {self.sent}",
                                              "client_msg_id": cmid}, ref=cmid)
        replies = self.ws_a.until_ref(cmid, wait=wait)
        assert replies[-1]["type"] == "message_ack", replies[-1]
        got = self.ws_b.expect("new_message", wait=wait, client_msg_id=cmid)
        assert got["payload"]["content"] == f"still here {self.sent}"

    def close(self) -> None:
        self.ws_a.close()
        self.ws_b.close()

    def __enter__(self) -> Bystanders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
