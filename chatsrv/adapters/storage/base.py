"""What the SQL store needs from a database driver: a transaction and four query verbs.

SQL is written once, in PostgreSQL's `$1` parameter style; the SQLite driver rewrites the
placeholders to SQLite's numbered `?1` form. Rows are mappings by column name on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = Mapping[str, Any]


class UniqueViolation(Exception):
    """A unique constraint failed; `constraint` names the index or column(s) involved."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class Conn(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> None: ...


class Database(Protocol):
    dialect: str

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """One transaction: committed when the block exits normally, rolled back otherwise.
        Raises UniqueViolation for unique-constraint failures, Unavailable when unreachable."""
        ...

    def read(self) -> AbstractAsyncContextManager[Conn]:
        """A connection for reads (may be a snapshot-free autocommit connection)."""
        ...
