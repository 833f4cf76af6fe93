"""Schema migrations: numbered plain SQL files in sql/<dialect>/, recorded in
schema_migrations, each applied once in its own transaction."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import trio

from chatsrv.adapters.storage.base import Database, Op, exec_, script, val

log = logging.getLogger(__name__)

_CREATE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL
)"""
# Nodes starting together must not apply the same migration twice.
_PG_LOCK = "SELECT pg_advisory_xact_lock(774411)"


def sql_dir() -> Path:
    """sql/ ships inside the wheel as chatsrv/sql; in a source checkout it is at the top."""
    here = Path(__file__).resolve()
    packaged = here.parents[2] / "sql"
    if packaged.is_dir():
        return packaged
    return here.parents[3] / "sql"


def migration_files(dialect: str) -> list[Path]:
    folder = sql_dir() / dialect
    return sorted(p for p in folder.glob("*.sql") if p.name[:3].isdigit())


async def migrate(db: Database) -> list[str]:
    """Apply pending migrations; returns the versions applied now (idempotent)."""
    applied_now: list[str] = []

    def create() -> Op[None]:
        yield exec_(_CREATE)

    def apply(version: str, sql: str) -> Op[bool]:
        if db.dialect == "postgres":
            yield exec_(_PG_LOCK)
        done = yield val("SELECT 1 FROM schema_migrations WHERE version = $1", version)
        if done:
            return False
        yield script(sql)
        yield exec_("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    version, datetime.now(UTC))
        return True

    await db.run(create())
    for path in migration_files(db.dialect):
        sql = await trio.Path(path).read_text()
        if await db.run(apply(path.stem, sql)):
            applied_now.append(path.stem)
            log.info("applied migration %s", path.stem)
    return applied_now
