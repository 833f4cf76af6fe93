"""Call history over SQL (PostgreSQL and SQLite alike): the CallLog port."""

from __future__ import annotations

from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, Row, UniqueViolation, exec_, one, rows
from chatsrv.adapters.storage.rows import opt_ts, ts
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import CallRecord

CALL_COLS = """id, conversation_id, caller_id, callee_id, media, status, end_reason, started_at,
answered_at, ended_at"""
INSERT_CALL = """INSERT INTO calls (id, conversation_id, caller_id, callee_id, media, status,
                   started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)"""
FINISH_CALL = """UPDATE calls SET status = $2, end_reason = $3, answered_at = $4, ended_at = $5
WHERE id = $1"""
ANSWER_CALL = "UPDATE calls SET status = 'answered', answered_at = $2 WHERE id = $1"
MY_CALLS = f"""SELECT {CALL_COLS} FROM calls WHERE (caller_id = $1 OR callee_id = $1)
AND started_at < $2 ORDER BY started_at DESC LIMIT $3"""
GET_CALL = f"SELECT {CALL_COLS} FROM calls WHERE id = $1"


def _call(r: Row) -> CallRecord:
    return CallRecord(
        id=str(r["id"]), conversation_id=None if r["conversation_id"] is None
        else str(r["conversation_id"]), caller_id=str(r["caller_id"]),
        callee_id=str(r["callee_id"]), media=r["media"], status=r["status"],
        end_reason=r["end_reason"], started_at=ts(r["started_at"]),
        answered_at=opt_ts(r["answered_at"]), ended_at=opt_ts(r["ended_at"]),
    )


class SqlCallLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_call(self, call: CallRecord) -> None:
        def op() -> Op[None]:
            yield exec_(INSERT_CALL, call.id, call.conversation_id, call.caller_id,
                        call.callee_id, call.media, call.status, call.started_at)

        try:
            await self.db.run(op())
        except UniqueViolation:
            raise Conflict("call_id is already in use", code="call_exists") from None

    async def mark_answered(self, call_id: str, at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(ANSWER_CALL, call_id, at)

        await self.db.run(op())

    async def finish_call(self, call_id: str, *, status: str, end_reason: str | None,
                          answered_at: datetime | None, ended_at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(FINISH_CALL, call_id, status, end_reason, answered_at, ended_at)

        await self.db.run(op())

    async def get_call(self, call_id: str) -> CallRecord | None:
        def op() -> Op[CallRecord | None]:
            row = yield one(GET_CALL, call_id)
            return None if row is None else _call(row)

        return await self.db.run(op(), write=False)

    async def list_calls(self, user_id: str, *, before: datetime, limit: int) -> list[CallRecord]:
        def op() -> Op[list[CallRecord]]:
            found = yield rows(MY_CALLS, user_id, before, limit)
            return [_call(r) for r in found]

        return await self.db.run(op(), write=False)
