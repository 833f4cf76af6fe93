"""How the SQL store talks to a database: operations as generators of queries.

An operation is a plain generator that yields `Query` objects and receives their results,
then returns its value:

    def get_user(user_id):
        row = yield one(GET_USER, user_id)
        return None if row is None else _user(row)

A driver runs the whole operation in ONE hop to wherever the database lives: the SQLite
driver on its worker thread, the PostgreSQL driver on the asyncio side of trio-asyncio. So
a transaction of five statements costs one Trio↔thread or Trio↔asyncio crossing, not ten
(a crossing costs 100-400 µs here, more than the query). Operations hold no I/O of their
own, so the same one runs on both backends.

SQL is written once, in PostgreSQL's `$1` parameter style; the SQLite driver rewrites the
placeholders to SQLite's numbered `?1` form. Rows are mappings by column name on both.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

Row = Mapping[str, Any]
T = TypeVar("T")
Mode = Literal["all", "one", "val", "exec", "script"]


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    args: tuple[Any, ...]
    mode: Mode


def rows(sql: str, *args: Any) -> Query:
    """Yields a list of rows."""
    return Query(sql, args, "all")


def one(sql: str, *args: Any) -> Query:
    """Yields the first row or None."""
    return Query(sql, args, "one")


def val(sql: str, *args: Any) -> Query:
    """Yields the first column of the first row, or None."""
    return Query(sql, args, "val")


def exec_(sql: str, *args: Any) -> Query:
    """Yields None."""
    return Query(sql, args, "exec")


def script(sql: str) -> Query:
    """Several statements without parameters (migrations)."""
    return Query(sql, (), "script")


Op = Generator[Query, Any, T]


class UniqueViolation(Exception):
    """A unique constraint failed; `constraint` names the index or column(s) involved.
    The transaction was rolled back."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class Database(Protocol):
    dialect: str

    async def run(self, op: Op[T], *, write: bool = True, atomic: bool = True) -> T:
        """Run one operation. `write`: in one transaction, committed when the operation
        returns and rolled back if it raises. Reads see one consistent snapshot too.
        `atomic=False` lets each statement commit on its own where that saves round trips
        (PostgreSQL; for operations whose every statement is atomic by itself).

        Raises UniqueViolation for unique-constraint failures and
        domain.errors.Unavailable when the database cannot be reached. Not cancellable
        half-way on SQLite (the thread finishes the transaction); on PostgreSQL a
        cancellation rolls the transaction back.
        """
        ...


def drive_sync(op: Op[T], execute: Any) -> T:
    """Run an operation with a blocking `execute(query) -> result`."""
    try:
        query = next(op)
        while True:
            query = op.send(execute(query))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def drive_async(op: Op[T], execute: Any) -> T:
    """Run an operation with an async `execute(query) -> result` (on any event loop)."""
    try:
        query = next(op)
        while True:
            query = op.send(await execute(query))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
