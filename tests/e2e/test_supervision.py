"""A failure injected into each of a node's long-lived tasks: the node keeps serving.

Every background task runs under tasks.supervised (restarted after a failure, counted in
/metrics) and handles its own work items at a narrower boundary. Each test makes one call
inside one task fail once, as a bug nobody foresaw would, then checks what a user notices:
the next message is acked and delivered, presence still changes, connects still work.
Cluster tasks (node watch, Redis listener and heartbeat, peer links) are in
tests/cluster/test_supervision.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from chatsrv.config import Settings
from chatsrv.domain.presence import PresenceBook
from chatsrv.transport.outbox import Outbox
from chatsrv.transport.websocket import WsSocket
from tests.conftest import Server, start_server
from tests.faults import fail_once
from tests.helpers import pair


async def metric(server: Server, task: str) -> int:
    """Failures of the tasks whose name starts with `task`, as /metrics shows them."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        text = (await http.get("/metrics")).text
    found = re.findall(rf'chatsrv_task_failures_total{{task="{task}[^"]*"}} (\d+)', text)
    return sum(int(n) for n in found)


async def test_a_commit_lane_failure_fails_its_batch_only(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client()
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        failed = fail_once(monkeypatch, server.services.commits, "_commit")
        reply = await wa.request("chat_message", {"conversation_id": cid, "content": "one",
                                                  "client_msg_id": "c-1"}, "message_ack")
        assert failed.is_set()
        assert reply["type"] == "error" and reply["payload"]["code"] == "internal", reply
        # the lane was restarted: the resend is stored once, acked and delivered
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "one",
                                                "client_msg_id": "c-1"}, "message_ack")
        assert ack["type"] == "message_ack" and ack["payload"]["seq"] == 1, ack
        await wb.expect("new_message", content="one")
    assert await metric(server, "commit-lane-") == 1
    r = await client.http.get(f"/api/conversations/{cid}/messages", headers=b.headers)
    assert [m["content"] for m in r.json()["messages"]] == ["one"]
    await client.aclose()


async def test_a_presence_failure_restarts_presence(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client()
    a, b, _ = await pair(client)
    async with client.ws(a) as wa:
        async with client.ws(b):
            await wa.expect("presence_update", user_id=b.id, status="online")
            failed = fail_once(monkeypatch, PresenceBook, "expire")
        # b's last socket closed: the grace runs out, expiry fails once, presence restarts
        # and still turns b offline
        off = await wa.expect("presence_update", user_id=b.id, status="offline")
        assert failed.is_set() and off["payload"]["last_seen"]
    assert await metric(server, "presence") == 1
    await client.aclose()


async def test_a_failed_arrival_lookup_refuses_one_connect_only(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client()
    a, _, _ = await pair(client)
    failed = fail_once(monkeypatch, server.services.arrivals, "_fetch_many")
    r = await client.http.get("/api/ws", params={"token": a.token}, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert failed.is_set() and r.status_code == 500 and r.json()["error"]["code"] == "internal"
    async with client.ws(a) as wa:  # the next connect is served
        assert wa.ready["payload"]["user_id"] == a.id  # type: ignore[attr-defined]
    await client.aclose()


async def test_a_flusher_failure_hands_the_frames_to_the_writer(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client()
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        failed = fail_once(monkeypatch, Outbox, "flush")
        await wa.request("chat_message", {"conversation_id": cid, "content": "flush me"},
                         "message_ack")
        await wb.expect("new_message", content="flush me")
        assert failed.is_set()
        await wa.send("chat_message", {"conversation_id": cid, "content": "and me"})
        await wb.expect("new_message", content="and me")
    await client.aclose()


@pytest.fixture
def quick_heartbeat(settings: Settings) -> Settings:
    return dataclasses.replace(settings, heartbeat_interval=0.2, heartbeat_timeout=1.0)


@pytest.fixture
async def hb_server(quick_heartbeat: Settings, aio_loop: None,
                    nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = await start_server(nursery, quick_heartbeat)
    yield srv
    srv.shutdown.set()


async def raw_upgrade(server: Server, token: str) -> trio.SocketStream:
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all((f"GET /api/ws?token={token} HTTP/1.1\r\nHost: x\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return stream


async def test_a_heartbeat_failure_restarts_the_ticker(
        hb_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = hb_server.client()
    a, _, _ = await pair(client)
    failed = fail_once(monkeypatch, WsSocket, "ping")
    stream = await raw_upgrade(hb_server, a.token)  # a client that never answers pings
    received = b""
    with trio.fail_after(10):
        # the restarted ticker pings this silent socket, then closes it: a close frame
        # (opcode 8) with 1001 and the reason
        while b"heartbeat timeout" not in received:
            data = await stream.receive_some(65536)
            assert data, f"closed without a close frame: {received[-200:]!r}"
            received += data
    assert failed.is_set() and b"\x89\x00" in received  # pinged after the restart
    assert await metric(hb_server, "ws-heartbeat") == 1
    await stream.aclose()
    await client.aclose()


async def test_an_orphan_asyncio_error_does_not_end_the_node(server: Server) -> None:
    """What asyncpg's reconnect raised when it raced a PostgreSQL shutdown: an error no one
    awaits, which trio-asyncio would re-raise into its loop's nursery (ending the node)."""
    import trio_asyncio

    loop = trio_asyncio.current_loop.get()
    loop.call_exception_handler({"message": "Future exception was never retrieved",
                                 "exception": ConnectionError("unexpected connection_lost()")})
    client = server.client()
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        await wa.request("chat_message", {"conversation_id": cid, "content": "still here"},
                         "message_ack")
        await wb.expect("new_message", content="still here")
    assert await metric(server, "asyncio") == 1
    await client.aclose()
