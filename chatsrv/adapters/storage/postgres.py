"""PostgreSQL driver: asyncpg under trio-asyncio, touched only here.

Each operation runs whole on the asyncio side, on one pooled asyncpg connection, in one
Trio→asyncio crossing. triopg wraps every single asyncpg call in its own crossing; measured
here that is 100-400 µs per call, several times the query itself, so the hot path drives
asyncpg's pool directly; triopg serves the cold path (the start-up probe).

Failures are mapped here, once, to what they mean (`ERRORS` below): a value the database
refuses is Invalid; a lost, shut-down, confused or exhausted connection, a deadlock, a full
disk or a missed deadline is Unavailable. A connection that failed for any reason other
than an ordinary SQL error is terminated, so the pool replaces it instead of handing out a
connection in an unknown protocol state (asyncpg's "cannot switch to state 11" after a
server-side terminate).

Every operation runs under `command_timeout` (DB_TIMEOUT): the Trio side's deadline, plus the same
deadline as asyncpg's own command and pool-acquire timeouts, so a hung (not refused)
PostgreSQL is `unavailable` after DB_TIMEOUT instead of freezing the commit lanes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import trio
import triopg
from trio_asyncio import aio_as_trio

from chatsrv.adapters.storage.base import Op, Query, T, UniqueViolation, drive_async
from chatsrv.domain.errors import Invalid, Unavailable
from chatsrv.tasks import StartupError, retry

log = logging.getLogger(__name__)

E = asyncpg.exceptions
# Transient: the server or the network will (probably) recover; retried at start-up.
_GONE = (OSError, TimeoutError, E.PostgresConnectionError, E.InterfaceError,
         E.InternalClientError, E.OperatorInterventionError, E.InsufficientResourcesError,
         E.TransactionRollbackError, E.ObjectInUseError)
# Values the database refuses: what the validation should already have stopped.
_REFUSED = (E.DataError, E.IntegrityConstraintViolationError)
# Permanent at start-up: a database that does not exist, credentials refused.
_PERMANENT = (E.InvalidCatalogNameError, E.InvalidAuthorizationSpecificationError,
              E.InvalidPasswordError)


async def _execute(conn: asyncpg.Connection, q: Query, command_timeout: float) -> Any:  # asyncio
    if q.mode == "all":
        return await conn.fetch(q.sql, *q.args, timeout=command_timeout)
    if q.mode == "one":
        return await conn.fetchrow(q.sql, *q.args, timeout=command_timeout)
    if q.mode == "val":
        return await conn.fetchval(q.sql, *q.args, timeout=command_timeout)
    await conn.execute(q.sql, *q.args, timeout=command_timeout)
    return None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default resets the session (one more round trip per
    operation); nothing here changes session state (no SET, LISTEN or session locks)."""


class PostgresDatabase:
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, *, command_timeout: float) -> None:
        self._pool = pool
        self._timeout = command_timeout

    async def _run_aio(self, op: Op[T], transaction: bool) -> T:  # runs on asyncio
        timeout = self._timeout
        conn = await self._pool.acquire(timeout=timeout)
        try:
            if not transaction:
                return await drive_async(op, lambda q: _execute(conn, q, timeout))
            async with conn.transaction():
                return await drive_async(op, lambda q: _execute(conn, q, timeout))
        except BaseException as exc:
            # An ordinary SQL error leaves the connection usable (the transaction was rolled
            # back); anything else (lost connection, timeout, cancellation, a confused
            # protocol state) may not: drop it, the pool opens a fresh one.
            if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, _GONE):
                conn.terminate()
            raise
        finally:
            await self._pool.release(conn)

    async def run(self, op: Op[T], *, write: bool = True, atomic: bool = True) -> T:
        try:
            with trio.fail_after(self._timeout):
                return await aio_as_trio(self._run_aio)(op, write and atomic)  # type: ignore[no-any-return]
        except E.UniqueViolationError as exc:
            raise UniqueViolation(exc.constraint_name or str(exc)) from exc
        except _REFUSED as exc:
            raise Invalid(f"the database refused a value: {exc}", code="invalid_request") from exc
        except trio.TooSlowError as exc:
            raise Unavailable(f"database did not answer within {self._timeout:g}s "
                              "(DB_TIMEOUT)") from exc
        except _GONE as exc:
            raise Unavailable(f"database unavailable ({type(exc).__name__})") from exc


def describe_dsn(dsn: str) -> str:
    """'PostgreSQL at host:port/db' without credentials, for error messages."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    return f"PostgreSQL at {host}:{parts.port or 5432}{parts.path or ''}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | trio.TooSlowError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def _probe(dsn: str, command_timeout: float) -> None:
    """One connection and `SELECT 1` through triopg (the cold path: a few crossings)."""
    async with triopg.connect(dsn, timeout=command_timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=command_timeout)


@asynccontextmanager
async def open_postgres(dsn: str, *, pool_size: int, command_timeout: float,
                        retry_deadline: float = 0.0) -> AsyncIterator[PostgresDatabase]:
    """Own a connection pool for the block; closed (shielded, bounded) on exit. Every
    operation on it runs under `command_timeout` (DB_TIMEOUT).

    Waits for PostgreSQL for up to `retry_deadline` seconds (connection refused, starting
    up, timing out); an unknown host, an unknown database or refused credentials fail at
    once. Raises StartupError naming the server.
    """
    where = describe_dsn(dsn)

    async def attempt() -> asyncpg.Pool:
        try:
            with trio.fail_after(command_timeout):
                await _probe(dsn, command_timeout)
                # max_inactive_connection_lifetime=0: asyncpg re-arms a 300 s timer on
                # every release to close idle connections; trio-asyncio keeps cancelled
                # timers in its heap until they are due, so that was a TimerHandle and a
                # loop turn per operation, held for 5 minutes (~100 B per message
                # retained, measured: the soak's RSS climbing). The pool stays at most
                # DB_POOL_SIZE connections; idle ones are not closed.
                return await aio_as_trio(asyncpg.create_pool)(
                    dsn, min_size=min(2, pool_size), max_size=pool_size, reset=_keep_session,
                    timeout=command_timeout, command_timeout=command_timeout,
                    max_inactive_connection_lifetime=0)
        except socket.gaierror as exc:
            raise StartupError(f"{where}: {_describe(exc)}") from exc
        except _PERMANENT as exc:
            raise StartupError(f"{where}: {_describe(exc)}") from exc

    pool = await retry(attempt, what=where, deadline=retry_deadline,
                       transient=(*_GONE, trio.TooSlowError, E.CannotConnectNowError),
                       describe=_describe)
    try:
        yield PostgresDatabase(pool, command_timeout=command_timeout)
    finally:
        with trio.move_on_after(command_timeout, shield=True) as scope:
            await aio_as_trio(pool.close)()
        if scope.cancelled_caught:
            pool.terminate()
