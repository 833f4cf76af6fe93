"""SQLite's write lock held by another process: errors within DB_TIMEOUT, then recovery."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import trio

from chatsrv.config import Settings
from tests.conftest import start_server


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def test_a_sqlite_write_lock_held_elsewhere_gives_errors_within_the_deadline(
        settings: Settings, aio_loop: None, nursery: trio.Nursery, tmp_path: Path) -> None:
    """Another process holds SQLite's write lock past DB_TIMEOUT: senders get `unavailable`
    within the deadline (not a 30 s hang, not a dead node), and once the lock is released the
    resend of the same client_msg_id is stored once."""
    settings = dataclasses.replace(settings, db_timeout=0.5)
    server = await start_server(nursery, settings)
    client = server.client()
    a, b = await client.register(), await client.register()
    cid = await client.conversation(a, b)
    holder = sqlite3.connect(settings.sqlite_path, isolation_level=None,
                             check_same_thread=False)
    async with client.ws(a) as wa:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        started = trio.current_time()
        reply = await wa.request("chat_message", {"conversation_id": cid, "content": "locked",
                                                  "client_msg_id": "l-1"}, "message_ack")
        waited = trio.current_time() - started
        assert reply["type"] == "error" and reply["payload"]["code"] == "unavailable", reply
        assert waited < 3 * settings.db_timeout
        holder.execute("ROLLBACK")
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "locked",
                                                "client_msg_id": "l-1"}, "message_ack")
        assert ack["type"] == "message_ack" and ack["payload"]["seq"] == 1, ack
    holder.close()
    r = await client.http.get(f"/api/conversations/{cid}/messages", headers=b.headers)
    assert [m["content"] for m in r.json()["messages"]] == ["locked"]
    await client.aclose()
    server.shutdown.set()
