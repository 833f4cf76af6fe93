"""How long one message commit takes on PostgreSQL at a light rate, with and without
trio-asyncio: the numbers behind "Why latency_1to1 misses" in RESULTS.md.

    .venv/bin/python -m bench.commit_probe [--dsn postgresql://postgres@127.0.0.1/postgres]

Creates a scratch database (dropped at the end) with chatsrv's schema, one user and one
conversation, then commits one message (the group commit's statement, a batch of one)
every `--gap` seconds, `--count` times, three ways:
- plain asyncio + asyncpg (no Trio at all), a process of its own, a pool set up as
  chatsrv's;
- through chatsrv's storage (Trio → trio-asyncio → asyncpg), as the server does;
- `SELECT 1` both ways, for the cost of a round trip alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import trio
import trio_asyncio

from chatsrv.adapters.storage.messages import APPEND_BATCH_PG, append_batch_args
from chatsrv.adapters.storage.migrate import migrate
from chatsrv.adapters.storage.postgres import _keep_session, open_postgres
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.domain.model import ConversationType, Message, Role, new_id


def _report(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{name:<44} p50 {statistics.median(ms):6.2f} ms   p90 {ms[int(len(ms) * 0.9)]:6.2f} ms")


async def _setup(dsn: str) -> tuple[str, str]:
    async with trio_asyncio.open_loop(), open_postgres(dsn, pool_size=2, command_timeout=10) as db:
        await migrate(db)
        store = SqlStore(db)
        now = datetime.now(UTC)
        user = await store.create_user(user_id=new_id(), username=f"probe{uuid.uuid4().hex[:8]}",
                                       email=f"{uuid.uuid4().hex[:8]}@probe.example.com",
                                       password_hash="x", display_name="probe", created_at=now)
        conv, _ = await store.create_conversation(
            conversation_id=new_id(), type=ConversationType.GROUP, name="probe",
            created_by=user.id, members=[(user.id, Role.ADMIN)], direct_key=None,
            created_at=now)
        return user.id, conv.id


def _draft(user_id: str, cid: str) -> Message:
    """One message as the server commits it (a batch of one)."""
    return Message(id=new_id(), conversation_id=cid, seq=0, sender_id=user_id,
                   content="probe", message_type="text", client_msg_id=new_id(),
                   created_at=datetime.now(UTC))


async def _through_chatsrv(dsn: str, user_id: str, cid: str, count: int, gap: float) -> None:
    async with trio_asyncio.open_loop(), open_postgres(dsn, pool_size=2, command_timeout=10) as db:
        store = SqlStore(db)
        commits, selects = [], []
        for _ in range(count):
            await trio.sleep(gap)
            draft = _draft(user_id, cid)
            t = time.perf_counter()
            await store.append_messages([draft])
            commits.append(time.perf_counter() - t)
            await trio.sleep(gap)
            t = time.perf_counter()
            await store.ping()
            selects.append(time.perf_counter() - t)
        _report("commit, Trio + trio-asyncio + asyncpg", commits)
        _report("SELECT 1, Trio + trio-asyncio + asyncpg", selects)


def _plain_asyncio(dsn: str, user_id: str, cid: str, count: int, gap: float) -> None:
    async def run() -> None:
        # as chatsrv's pool: no session reset on release (one round trip less)
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2, reset=_keep_session)
        commits, selects = [], []
        for _ in range(count):
            await asyncio.sleep(gap)
            t = time.perf_counter()
            async with pool.acquire() as conn:
                await conn.fetch(APPEND_BATCH_PG, *append_batch_args([_draft(user_id, cid)]))
            commits.append(time.perf_counter() - t)
            await asyncio.sleep(gap)
            t = time.perf_counter()
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            selects.append(time.perf_counter() - t)
        await pool.close()
        _report("commit, plain asyncio + asyncpg", commits)
        _report("SELECT 1, plain asyncio + asyncpg", selects)

    asyncio.run(run())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL to create the scratch database in")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--gap", type=float, default=0.05, help="seconds between operations")
    p.add_argument("--part", choices=("all", "plain"), default="all", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--ids", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part == "plain":  # the plain-asyncio half, in a process without Trio
        _plain_asyncio(args.target, *args.ids, args.count, args.gap)
        return 0
    name = f"chatsrv_probe_{uuid.uuid4().hex[:8]}"
    admin = args.dsn
    base, q, query = admin.partition("?")  # ?host=/var/run/postgresql: a Unix socket
    target = base.rsplit("/", 1)[0] + "/" + name + q + query

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        user_id, cid = trio.run(_setup, target)
        subprocess.run([sys.executable, "-m", "bench.commit_probe", "--part", "plain",
                        "--target", target, "--ids", user_id, cid, "--count", str(args.count),
                        "--gap", str(args.gap)], check=True)
        trio.run(_through_chatsrv, target, user_id, cid, args.count, args.gap)
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
