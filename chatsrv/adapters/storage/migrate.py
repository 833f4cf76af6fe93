"""Schema migrations: numbered plain SQL files in sql/<dialect>/, recorded in
schema_migrations, each applied once in its own transaction."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chatsrv.adapters.storage.base import Database

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
    async with db.transaction() as conn:
        await conn.execute(_CREATE)
    for path in migration_files(db.dialect):
        version = path.stem
        async with db.transaction() as conn:
            if db.dialect == "postgres":
                await conn.execute(_PG_LOCK)
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", version
            )
            if done:
                continue
            script: Any = path.read_text()
            await conn.executescript(script)  # type: ignore[attr-defined]
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                version, datetime.now(UTC),
            )
            applied_now.append(version)
            log.info("applied migration %s", version)
    return applied_now
