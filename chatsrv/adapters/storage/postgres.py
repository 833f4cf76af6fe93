"""PostgreSQL driver: a triopg (asyncpg) pool, touched only here.

Needs a trio-asyncio loop around it (opened once in app.main). Connection attempts are
retried until `retry_deadline` so a container that starts before PostgreSQL still comes up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
import triopg

from chatsrv.adapters.storage.base import Row, UniqueViolation
from chatsrv.domain.errors import Unavailable

log = logging.getLogger(__name__)

_UNAVAILABLE = (OSError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.InterfaceError)


class PgConn:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._conn.fetchrow(sql, *args)  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executescript(self, script: str) -> None:
        await self._conn.execute(script)


class PostgresDatabase:
    dialect = "postgres"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgConn]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield PgConn(conn)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise UniqueViolation(exc.constraint_name or str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise Unavailable("database unavailable") from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PgConn]:
        try:
            async with self._pool.acquire() as conn:
                yield PgConn(conn)
        except _UNAVAILABLE as exc:
            raise Unavailable("database unavailable") from exc


async def wait_for_postgres(dsn: str, *, deadline: float) -> None:
    """Block until PostgreSQL accepts a connection, or raise Unavailable after `deadline` s."""
    delay = 0.2
    with trio.move_on_after(deadline) as scope:
        while True:
            try:
                async with triopg.connect(dsn) as conn:
                    await conn.fetchval("SELECT 1")
                return
            except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
                log.warning("PostgreSQL not reachable yet (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
    if scope.cancelled_caught:
        raise Unavailable(f"PostgreSQL not reachable within {deadline:g}s")


@asynccontextmanager
async def open_postgres(
    dsn: str, *, pool_size: int, retry_deadline: float = 0.0
) -> AsyncIterator[PostgresDatabase]:
    """Own a connection pool for the block; the pool is closed (shielded) on exit."""
    if retry_deadline > 0:
        await wait_for_postgres(dsn, deadline=retry_deadline)
    pool = triopg.create_pool(dsn, min_size=min(2, pool_size), max_size=pool_size)
    await pool.__aenter__()
    try:
        yield PostgresDatabase(pool)
    finally:
        # triopg shields its close with no deadline; asyncpg's close waits for released
        # connections only, and every acquire here is scoped, so this returns promptly.
        await pool.__aexit__(None, None, None)
