"""One connection's Session on an in-memory socket, on the autojump clock: typing expires by
itself, pipelined messages are acked in send order, a frame after them waits for them, a
reader too slow for its outbox is cut with 1013."""

from __future__ import annotations

import gc
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from chatsrv.config import Settings
from chatsrv.domain.model import Arrival, Principal, User
from chatsrv.metrics import Metrics
from chatsrv.protocol.frames import Frame
from chatsrv.transport.outbox import Outbox
from chatsrv.transport.session import Session
from chatsrv.transport.session_deps import FrameRates, SessionDeps
from chatsrv.transport.ws import Expiries
from chatsrv.wiring import build_auth
from tests.unit.conftest import World

TTL = 6.0


class MemorySocket:
    """The FrameSocket face on two memory channels: what the client sends, what it got."""

    def __init__(self) -> None:
        self.last_read = 0.0
        self._incoming_send, self._incoming = trio.open_memory_channel[str | None](64)
        self.received: list[dict[str, Any]] = []
        self.arrived = trio.lowlevel.ParkingLot()
        self.closed_with: tuple[int, str] | None = None

    # the client's side
    async def client_send(self, type_: str, payload: dict[str, Any], ref: Any = None) -> None:
        await self._incoming_send.send(json.dumps({"type": type_, "payload": payload,
                                                   "ref": ref}))

    async def client_close(self) -> None:
        await self._incoming_send.send(None)

    def got(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f["type"] == type_]

    async def wait_for(self, type_: str, count: int = 1) -> list[dict[str, Any]]:
        while len(self.got(type_)) < count:
            await self.arrived.park()
        return self.got(type_)

    # FrameSocket
    async def accept(self, subprotocol: str | None) -> None:
        await trio.lowlevel.checkpoint()

    async def refuse(self, status: int, body: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()

    async def receive(self) -> str | bytes | None:
        data = await self._incoming.receive()
        self.last_read = trio.current_time()
        return data

    async def send(self, frames: list[Frame | bytes]) -> None:
        await trio.lowlevel.checkpoint()
        for item in frames:
            if isinstance(item, Frame):
                self.received.append(json.loads(item.text))
        self.arrived.unpark_all()

    def ping(self) -> bytes | None:
        return None

    async def close(self, code: int, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        self.closed_with = (code, reason)


def deps_for(world: World, settings: Settings) -> SessionDeps:
    auth, _, _ = build_auth(world.store, settings)  # type: ignore[arg-type]
    return SessionDeps(settings=settings, metrics=Metrics(), auth=auth,
                       messaging=world.messaging, presence=world.presence, calls=world.calls,
                       rates=FrameRates(rate=1000, burst=1000), bind=lambda s, p: None,
                       changes=world.changes)


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=tmp_path, jwt_secret="s" * 40, typing_ttl=TTL, outbox_size=16)


@pytest.fixture
async def session_of(world: World, settings: Settings
                     ) -> AsyncIterator[Any]:
    async with trio.open_nursery() as nursery:
        async def start(user: User, *, outbox: int | None = None) -> tuple[Session, MemorySocket]:
            sock = MemorySocket()
            principal = Principal(user.id, "s", False, 1e12)
            session = Session(deps_for(world, settings), sock,  # type: ignore[arg-type]
                              Outbox(outbox or settings.outbox_size), principal=principal,
                              arrival=Arrival({}, []), address="test")
            nursery.start_soon(session.run)
            await sock.wait_for("ready")
            return session, sock

        yield start
        nursery.cancel_scope.cancel()


async def test_typing_expires_after_the_ttl_without_a_refresh(
        world: World, session_of: Any, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    watcher = world.connect(b)
    _, sock = await session_of(a)
    await sock.client_send("typing", {"conversation_id": cid, "is_typing": True})
    await trio.sleep(TTL - 1)
    await sock.client_send("typing", {"conversation_id": cid, "is_typing": True})  # refresh
    await trio.sleep(TTL - 0.01)
    assert [t.is_typing for t in watcher.of("typing")] == [True]  # refreshed: still typing
    await trio.sleep(0.02)
    assert [t.is_typing for t in watcher.of("typing")] == [True, False]


async def test_pipelined_messages_are_acked_in_send_order_before_the_next_frame(
        world: World, session_of: Any, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    _, sock = await session_of(a, outbox=256)
    for i in range(40):  # more than MAX_IN_FLIGHT at once
        await sock.client_send("chat_message", {"conversation_id": cid, "content": f"m{i}"},
                               ref=i)
    await sock.client_send("ping", {}, ref="after")
    await sock.wait_for("pong")
    kinds = [(f["type"], f.get("ref")) for f in sock.received
             if f["type"] in ("message_ack", "pong", "error")]
    assert kinds == [("message_ack", i) for i in range(40)] + [("pong", "after")]
    assert [f["payload"]["seq"] for f in sock.got("message_ack")] == list(range(1, 41))


async def test_a_reader_too_slow_for_its_outbox_is_cut_with_1013(
        world: World, session_of: Any, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    session, sock = await session_of(b, outbox=8)
    session.sock.send = _never  # type: ignore[method-assign]  # the peer stopped reading
    for i in range(20):
        await world.messaging.send(a.id, conversation_id=cid, content=f"m{i}")
    assert session.close_code == 1013


async def _never(frames: list[Any]) -> None:
    await trio.sleep_forever()


class _Socket:
    """What Expiries reads of a Session."""

    def __init__(self, expires_at: float) -> None:
        self.expires_at = expires_at
        self.close_code: int | None = None


async def test_expiries_keep_no_closed_socket_alive() -> None:
    """A closed socket's Session is not held until its token would expire (every reconnect
    kept ~15 KB for the token's lifetime), and the heap stays near the live count."""
    expiries = Expiries()
    kept = _Socket(time.time() + 0.05)
    expiries.add(kept, kept.expires_at)  # type: ignore[arg-type]
    renewed = _Socket(time.time() + 900)
    expiries.add(renewed, renewed.expires_at)  # type: ignore[arg-type]
    renewed.expires_at += 900  # an `auth` frame: the old entry is stale
    expiries.add(renewed, renewed.expires_at)  # type: ignore[arg-type]
    probe = weakref.ref(gone := _Socket(time.time() + 900))
    expiries.add(gone, gone.expires_at)  # type: ignore[arg-type]
    del gone
    gc.collect()
    assert probe() is None  # the heap did not keep it
    for _ in range(1000):  # reconnects: each socket closed right after
        expiries.add(_Socket(time.time() + 900), time.time() + 900)  # type: ignore[arg-type]
    assert len(expiries) <= 2 * 64 + 3
    with trio.fail_after(5):
        assert await expiries.wait_due() == [kept]
