"""SQLite driver: stdlib sqlite3 on worker threads, WAL, one writer at a time.

The embedded default. One connection for writes (guarded by a Trio lock: SQLite allows one
writer anyway) and one for reads, which WAL lets proceed beside the writer.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import trio

from chatsrv.adapters.storage.base import Row, UniqueViolation

_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        # fixed width, so text order is time order
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    if isinstance(value, bool):
        return int(value)
    return value


def _params(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_param(a) for a in args)


def _run(db: sqlite3.Connection, sql: str, args: tuple[Any, ...], mode: str) -> Any:
    try:
        cur = db.execute(_translate(sql), args)
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise
    if mode == "all":
        return cur.fetchall()
    if mode == "row":
        return cur.fetchone()
    if mode == "val":
        row = cur.fetchone()
        return None if row is None else row[0]
    return None


class SqliteConn:
    def __init__(self, db: sqlite3.Connection, limiter: trio.CapacityLimiter) -> None:
        self._db = db
        self._limiter = limiter

    async def _call(self, sql: str, args: Sequence[Any], mode: str) -> Any:
        return await trio.to_thread.run_sync(
            _run, self._db, sql, _params(args), mode, limiter=self._limiter
        )

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._call(sql, args, "all")  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._call(sql, args, "row")  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(sql, args, "val")

    async def execute(self, sql: str, *args: Any) -> None:
        await self._call(sql, args, "none")

    async def executescript(self, script: str) -> None:
        """Run a multi-statement script inside the current transaction (sqlite3's own
        executescript would commit first)."""
        for statement in split_statements(script):
            await self.execute(statement)


def split_statements(script: str) -> list[str]:
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return [s for s in statements if s.strip(" ;\n")]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power loss
    # can drop the last transactions.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._write_lock = trio.Lock()
        self._writer = SqliteConn(writer, trio.CapacityLimiter(1))
        self._reader = SqliteConn(reader, trio.CapacityLimiter(1))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteConn]:
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._writer.execute("ROLLBACK")
                raise
            with trio.CancelScope(shield=True):
                await self._writer.execute("COMMIT")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqliteConn]:
        yield self._reader


@asynccontextmanager
async def open_sqlite(path: Path) -> AsyncIterator[SqliteDatabase]:
    """Open (creating if needed) the database file; closes both connections on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = await trio.to_thread.run_sync(_connect, path)
    reader = await trio.to_thread.run_sync(_connect, path)
    try:
        yield SqliteDatabase(writer, reader)
    finally:
        writer.close()
        reader.close()
