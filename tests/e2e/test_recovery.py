"""Failure of the database under a running server: errors, not crashes; nothing acked lost."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import trio

from tests.conftest import Server


@pytest.fixture
def backend() -> str:
    return "postgres"


async def kill_backends(dsn: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(lambda: asyncio.run(go()))


async def test_lost_database_connections_give_errors_then_recover(server: Server) -> None:
    client = server.client()
    a, b = await client.register(), await client.register()
    cid = await client.conversation(a, b)
    acked: list[str] = []
    async with client.ws(a) as wa:
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "before",
                                                "client_msg_id": "m-0"}, "message_ack")
        acked.append(ack["payload"]["id"])
        assert await kill_backends(server.settings.database_url or "") > 0
        errors = 0
        with trio.fail_after(15):
            for i in range(1, 6):
                while True:
                    reply = await wa.request("chat_message", {
                        "conversation_id": cid, "content": f"after {i}",
                        "client_msg_id": f"m-{i}"}, "message_ack")
                    if reply["type"] == "message_ack":
                        acked.append(reply["payload"]["id"])
                        break
                    assert reply["payload"]["code"] == "unavailable", reply
                    errors += 1
                    await trio.sleep(0.1)
        assert (await wa.request("ping", {}, "pong"))["type"] == "pong"
    r = await client.http.get(f"/api/conversations/{cid}/messages", headers=b.headers)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["messages"]] == acked
    assert [m["seq"] for m in r.json()["messages"]] == list(range(1, 7))
    await client.aclose()

