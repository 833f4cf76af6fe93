"""PostgreSQL driver: asyncpg under trio-asyncio, touched only here.

Each operation runs whole on the asyncio side, on one pooled asyncpg connection, in one
Trio→asyncio crossing. triopg wraps every single asyncpg call in its own crossing; measured
here that is 100-400 µs per call, several times the query itself, so the hot path drives
asyncpg's pool directly and triopg serves the cold path (the start-up readiness probe).

Needs the trio-asyncio loop opened in app.main. Connection attempts are retried until
`retry_deadline`, so a container that starts before PostgreSQL still comes up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
import triopg
from trio_asyncio import aio_as_trio

from chatsrv.adapters.storage.base import Op, Query, T, UniqueViolation, drive_async
from chatsrv.domain.errors import Unavailable

log = logging.getLogger(__name__)

_UNAVAILABLE = (OSError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.AdminShutdownError)


async def _execute(conn: asyncpg.Connection, q: Query) -> Any:  # runs on asyncio
    if q.mode == "all":
        return await conn.fetch(q.sql, *q.args)
    if q.mode == "one":
        return await conn.fetchrow(q.sql, *q.args)
    if q.mode == "val":
        return await conn.fetchval(q.sql, *q.args)
    await conn.execute(q.sql, *q.args)
    return None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default resets the session (one more round trip per
    operation); nothing here changes session state (no SET, LISTEN or session locks)."""


class PostgresDatabase:
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _run_aio(self, op: Op[T], transaction: bool) -> T:  # runs on asyncio
        async with self._pool.acquire() as conn:
            if not transaction:
                return await drive_async(op, lambda q: _execute(conn, q))
            async with conn.transaction():
                return await drive_async(op, lambda q: _execute(conn, q))

    async def run(self, op: Op[T], *, write: bool = True, atomic: bool = True) -> T:
        try:
            return await aio_as_trio(self._run_aio)(op, write and atomic)  # type: ignore[no-any-return]
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise UniqueViolation(exc.constraint_name or str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise Unavailable("database unavailable") from exc


async def wait_for_postgres(dsn: str, *, deadline: float) -> None:
    """Block until PostgreSQL accepts a connection, or raise Unavailable after `deadline` s."""
    delay = 0.2
    with trio.move_on_after(deadline):
        while True:
            try:
                async with triopg.connect(dsn) as conn:
                    await conn.fetchval("SELECT 1")
                return
            except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
                log.warning("PostgreSQL not reachable yet (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
    raise Unavailable(f"PostgreSQL not reachable within {deadline:g}s")


@asynccontextmanager
async def open_postgres(
    dsn: str, *, pool_size: int, retry_deadline: float = 0.0
) -> AsyncIterator[PostgresDatabase]:
    """Own a connection pool for the block; closed (shielded, bounded) on exit."""
    if retry_deadline > 0:
        await wait_for_postgres(dsn, deadline=retry_deadline)
    try:
        pool = await aio_as_trio(asyncpg.create_pool)(
            dsn, min_size=min(2, pool_size), max_size=pool_size, reset=_keep_session)
    except _UNAVAILABLE as exc:
        raise Unavailable("database unavailable") from exc
    try:
        yield PostgresDatabase(pool)
    finally:
        with trio.move_on_after(5, shield=True) as scope:
            await aio_as_trio(pool.close)()
        if scope.cancelled_caught:
            pool.terminate()
