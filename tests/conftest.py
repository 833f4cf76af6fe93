"""Shared fixtures: real PostgreSQL (a fresh database per run), SQLite in tmp, real servers.

PostgreSQL tests need a server (CHATSRV_TEST_PG, default postgresql://postgres@127.0.0.1:5432).
Outside CI they skip loudly when it is unreachable; under CI=true they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio_asyncio

from bench.server import LOAD_TEST_LIMITS
from chatsrv.adapters.storage.migrate import migrate
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.app import Node, serve_node
from chatsrv.config import Settings, from_overrides
from chatsrv.wiring import open_database
from tests.helpers import Client

PG_ADMIN_DSN = os.environ.get("CHATSRV_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgres"]


def _unreachable(what: str, exc: BaseException) -> None:
    message = f"{what} unreachable ({exc!r})"
    if IN_CI:
        pytest.fail(f"{message}: CI must run every backend", pytrace=False)
    pytest.skip(f"!!! SKIPPED: {message}; start it to run these tests")


@contextmanager
def fresh_pg_database(prefix: str = "chatsrv_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for the block, dropped afterwards. Yields its DSN;
    skips (fails under CI) when PostgreSQL is unreachable."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        _unreachable("PostgreSQL", exc)
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for this test run, dropped afterwards. Yields its DSN."""
    with fresh_pg_database() as dsn:
        yield dsn


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    database_url = request.getfixturevalue("pg_database") if backend == "postgres" else None
    return from_overrides(Settings(
        http_host="127.0.0.1", http_port=0, database_url=database_url, data_dir=tmp_path,
        jwt_secret="test-secret-" + "x" * 40, bcrypt_rounds=4, presence_grace=0.2,
        typing_ttl=1.0, embedded=database_url is None, rate_per_second=1000.0,
        rate_burst=1000.0, connect_retry_deadline=5.0, shutdown_deadline=3.0,
        # short: Hypercorn's ping task (sockets on its ASGI path) notices a close only when it wakes
        heartbeat_interval=1.0,
        # a supervised task that failed starts again at once (tests/e2e/test_supervision.py)
        task_restart_delay=0.0,
    ), LOAD_TEST_LIMITS)


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


@pytest.fixture
async def store(settings: Settings, aio_loop: None) -> AsyncIterator[SqlStore]:
    async with open_database(settings) as db:
        await migrate(db)
        yield SqlStore(db)


class Server:
    def __init__(self, node: Node, settings: Settings, shutdown: trio.Event) -> None:
        url = node.addresses[0]
        self.services = node.services
        self.url = url
        self.ws_url = url.replace("http://", "ws://") + "/api/ws"
        self.settings = settings
        self.shutdown = shutdown

    def client(self) -> Client:
        return Client(self)


async def start_server(nursery: trio.Nursery, settings: Settings) -> Server:
    shutdown = trio.Event()
    node = await nursery.start(partial(serve_node, settings, bind="127.0.0.1:0",
                                       shutdown=shutdown))
    return Server(node, settings, shutdown)


@pytest.fixture
async def server(settings: Settings, aio_loop: None, nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = await start_server(nursery, settings)
    yield srv
    srv.shutdown.set()


@pytest.fixture
async def client(server: Server):  # type: ignore[no-untyped-def]
    c = server.client()
    yield c
    await c.aclose()
