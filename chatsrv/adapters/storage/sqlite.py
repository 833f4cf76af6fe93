"""SQLite driver: stdlib sqlite3 on worker threads, WAL, one writer at a time.

The embedded default. One connection for writes (guarded by a Trio lock: SQLite allows one
writer anyway) and one for reads, which WAL lets proceed beside the writer. Each operation
runs whole on the connection's thread: one thread hop per transaction.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import trio

from chatsrv.adapters.storage.base import Op, Query, T, UniqueViolation, drive_sync

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


def _execute(db: sqlite3.Connection, q: Query) -> Any:
    if q.mode == "script":
        # sqlite3's own executescript would commit first; run statement by statement instead
        for statement in split_statements(q.sql):
            db.execute(statement)
        return None
    cur = db.execute(_translate(q.sql), tuple(_param(a) for a in q.args))
    if q.mode == "all":
        return cur.fetchall()
    if q.mode == "one":
        return cur.fetchone()
    if q.mode == "val":
        row = cur.fetchone()
        return None if row is None else row[0]
    return None


def _run_in_thread(db: sqlite3.Connection, op: Op[T], begin: str) -> T:
    db.execute(begin)
    try:
        result = drive_sync(op, lambda q: _execute(db, q))
    except BaseException as exc:
        db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise
    db.execute("COMMIT")
    return result


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a message is on disk before its ack, even across an OS crash or power loss
    # (NORMAL would only survive a process crash). Group commit amortises the fsync.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._writer = writer
        self._reader = reader
        # one thread each: a sqlite3 connection is used by one thread at a time
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)

    async def run(self, op: Op[T], *, write: bool = True, atomic: bool = True) -> T:
        if write:
            return await trio.to_thread.run_sync(
                _run_in_thread, self._writer, op, "BEGIN IMMEDIATE", limiter=self._write_limiter)
        return await trio.to_thread.run_sync(
            _run_in_thread, self._reader, op, "BEGIN", limiter=self._read_limiter)


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
