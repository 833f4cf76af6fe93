"""The contract suite runs on every Store: in memory, on SQLite and on the real PostgreSQL.

`backend` is overridden here (the e2e servers in ../conftest.py still run on the SQL
backends only); a test about the SQL adapters alone narrows it with
`@pytest.mark.parametrize("backend", BACKENDS)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
import trio_asyncio

from chatsrv.adapters.storage.base import Database
from chatsrv.adapters.storage.blocks import SqlBlocks
from chatsrv.adapters.storage.calls import SqlCallLog
from chatsrv.adapters.storage.changes import SqlChanges
from chatsrv.adapters.storage.memory.blocks import MemoryBlocks
from chatsrv.adapters.storage.memory.calls import MemoryCallLog
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory_changes import MemoryChanges
from chatsrv.adapters.storage.migrate import migrate
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.config import Settings
from chatsrv.domain.ports import Blocks, CallLog, MessageChanges, Store
from chatsrv.wiring import open_database
from tests.conftest import BACKENDS

CONTRACT_BACKENDS = ["memory", *BACKENDS]
T = TypeVar("T")


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sql_settings(backend: str, request: pytest.FixtureRequest) -> Settings | None:
    """The SQL backends' settings (resolved before Trio starts); None in memory."""
    return None if backend == "memory" else request.getfixturevalue("settings")


@pytest.fixture
async def store(sql_settings: Settings | None) -> AsyncIterator[Store]:
    if sql_settings is None:
        yield MemoryStore()
        return
    async with trio_asyncio.open_loop(), open_database(sql_settings) as db:
        await migrate(db)
        yield SqlStore(db)


def beside(store: Store, memory: Callable[[MemoryStore], T], sql: Callable[[Database], T]) -> T:
    """A port's adapter on the same data as `store`: in memory, or on its database."""
    if isinstance(store, MemoryStore):
        return memory(store)
    assert isinstance(store, SqlStore)
    return sql(store.db)


@pytest.fixture
def call_log(store: Store) -> CallLog:
    """The call history beside `store`, on the same tables."""
    return beside(store, MemoryCallLog, SqlCallLog)


@pytest.fixture
def changes(store: Store) -> MessageChanges:
    """Message changes beside `store`, on the same tables (issue 14)."""
    return beside(store, MemoryChanges, SqlChanges)


@pytest.fixture
def blocks(store: Store) -> Blocks:
    """Blocks and privacy settings beside `store`, on the same tables."""
    return beside(store, MemoryBlocks, SqlBlocks)
