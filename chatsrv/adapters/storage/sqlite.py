"""SQLite driver: stdlib sqlite3 on worker threads, WAL, one writer at a time.

The embedded default. One connection for writes (guarded by a Trio lock: SQLite allows one
writer anyway) and one for reads, which WAL lets proceed beside the writer. Each operation
runs whole on the connection's thread: one thread hop per transaction.

Deadline: every operation finishes within `timeout` (DB_TIMEOUT), waiting for its turn
included. A thread cannot be cancelled from Trio, so the deadline is enforced inside it:
SQLite's busy timeout (another process holding the write lock) is set to what is left, and
a progress handler interrupts a statement that runs past it. The thread's part is shielded,
so an operation that committed is never reported as failed.

Failures are mapped here, the same way as on PostgreSQL: a locked, busy, full or failing
database and a missed deadline are Unavailable; values SQLite refuses (integers over 64
bits, text that is not UTF-8, a constraint) are Invalid.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import trio

from chatsrv.adapters.storage.base import Op, Query, T, UniqueViolation, drive_sync
from chatsrv.domain.errors import Invalid, Unavailable
from chatsrv.tasks import StartupError

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


class _Deadline:
    """The progress handler of one connection: interrupts a statement past `at`."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = float("inf")

    def __call__(self) -> int:
        return 1 if time.monotonic() > self.at else 0


def _run_in_thread(db: sqlite3.Connection, deadline: _Deadline, op: Op[T], begin: str,
                   seconds: float) -> T:
    deadline.at = time.monotonic() + seconds
    try:
        db.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")
        db.execute(begin)
        try:
            result = drive_sync(op, lambda q: _execute(db, q))
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise Invalid(f"the database refused a value: {exc}") from exc
    except sqlite3.OperationalError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if "interrupted" in str(exc):
            raise Unavailable(f"database did not answer within {seconds:g}s "
                              "(DB_TIMEOUT)") from exc
        raise Unavailable(f"database unavailable: {exc}") from exc
    except (OverflowError, UnicodeEncodeError, sqlite3.DataError) as exc:
        raise Invalid(f"the database refused a value: {exc}") from exc
    finally:
        deadline.at = float("inf")


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def _connect(path: Path) -> tuple[sqlite3.Connection, _Deadline]:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    # SQLite's own lower() folds ASCII only: "Ärger" and "ärger" were two usernames here and
    # one on PostgreSQL. Python's, as PostgreSQL's, folds every letter (the unique indexes on
    # lower(username) and lower(email) use it; migration 004 rebuilt them).
    db.create_function("lower", 1, _lower, deterministic=True)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a message is on disk before its ack, even across an OS crash or power loss
    # (NORMAL would only survive a process crash). Group commit amortises the fsync.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    deadline = _Deadline()
    db.set_progress_handler(deadline, 10_000)  # every 10k VM steps: ~1 µs per call
    return db, deadline


class _Lane:
    """One connection, the lock that takes turns on it, and its thread limiter."""

    def __init__(self, db: sqlite3.Connection, deadline: _Deadline, begin: str) -> None:
        self.db, self.deadline, self.begin = db, deadline, begin
        self.lock = trio.Lock()
        self.limiter = trio.CapacityLimiter(1)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, writer: tuple[sqlite3.Connection, _Deadline],
                 reader: tuple[sqlite3.Connection, _Deadline], *, timeout: float) -> None:
        self._timeout = timeout
        self._writer = _Lane(*writer, "BEGIN IMMEDIATE")
        self._reader = _Lane(*reader, "BEGIN")

    async def run(self, op: Op[T], *, write: bool = True, atomic: bool = True) -> T:
        lane = self._writer if write else self._reader
        deadline = trio.current_time() + self._timeout
        with trio.move_on_at(deadline) as waiting:
            await lane.lock.acquire()  # cancelled: not acquired (Trio's guarantee)
        if waiting.cancelled_caught:
            raise Unavailable(f"database busy: no turn within {self._timeout:g}s (DB_TIMEOUT)")
        try:
            left = max(0.001, deadline - trio.current_time())
            with trio.CancelScope(shield=True):  # bounded by `left` inside the thread
                result: T = await trio.to_thread.run_sync(
                    _run_in_thread, lane.db, lane.deadline, op, lane.begin, left,
                    limiter=lane.limiter)
        finally:
            lane.lock.release()
        return result

    def close(self) -> None:
        self._writer.db.close()
        self._reader.db.close()


@asynccontextmanager
async def open_sqlite(path: Path, *, op_deadline: float) -> AsyncIterator[SqliteDatabase]:
    """Open (creating if needed) the database file; closes both connections on exit.
    Every operation finishes within `op_deadline` seconds (DB_TIMEOUT). Raises
    StartupError when the file cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await trio.to_thread.run_sync(_connect, path)
        reader = await trio.to_thread.run_sync(_connect, path)
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(f"cannot open the SQLite database {path}: {exc}") from exc
    db = SqliteDatabase(writer, reader, timeout=op_deadline)
    try:
        yield db
    finally:
        db.close()
