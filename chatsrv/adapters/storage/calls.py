"""Call history over SQL (PostgreSQL and SQLite alike): the CallLog port."""

from __future__ import annotations

from datetime import datetime

from chatsrv.adapters.storage.base import (
    Database,
    Op,
    Row,
    UniqueViolation,
    exec_,
    one,
    rows,
    val,
)
from chatsrv.adapters.storage.rows import opt_ts, ts
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import CallClaim, CallRecord, utcnow

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

CLAIM_COLS = "call_id, caller_id, callee_id, owner, answered"
CLAIMS_OF = f"""SELECT {CLAIM_COLS} FROM call_claims WHERE user_id IN ($1, $2)
ORDER BY user_id"""
INSERT_CLAIM = """INSERT INTO call_claims (user_id, call_id, caller_id, callee_id, owner,
                         claimed_at)
VALUES ($1, $2, $3, $4, $5, $6)"""
DELETE_CLAIMS_OF_CALL = "DELETE FROM call_claims WHERE call_id = $1"
ANSWER_CLAIM = "UPDATE call_claims SET answered = TRUE WHERE call_id = $1"
OWNED_CALLS = "SELECT DISTINCT call_id FROM call_claims WHERE owner = $1"
DELETE_OWNED = "DELETE FROM call_claims WHERE owner = $1"
DELETE_ALL_CLAIMS = "DELETE FROM call_claims"
CALL_OWNER = "SELECT owner FROM call_claims WHERE call_id = $1 LIMIT 1"


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

    async def claim_call(self, claim: CallClaim, *,
                         replacing: str | None = None) -> list[CallClaim]:
        """Both users' rows inserted in user-id order (concurrent claims queue on the same
        first row, never deadlock); a unique violation means a concurrent claim won: its
        rows are read back and returned."""
        users = sorted({claim.caller_id, claim.callee_id})

        def op() -> Op[list[CallClaim]]:
            if replacing is not None:
                yield exec_(DELETE_CLAIMS_OF_CALL, replacing)
            found = yield rows(CLAIMS_OF, users[0], users[-1])
            if found:
                return [_claim(r) for r in found]
            now = utcnow()
            for uid in users:
                yield exec_(INSERT_CLAIM, uid, claim.call_id, claim.caller_id, claim.callee_id,
                            claim.owner, now)
            return []

        try:
            return await self.db.run(op())
        except UniqueViolation:
            def standing() -> Op[list[CallClaim]]:
                return [_claim(r) for r in (yield rows(CLAIMS_OF, users[0], users[-1]))]

            return await self.db.run(standing(), write=False)

    async def mark_claim_answered(self, call_id: str) -> None:
        def op() -> Op[None]:
            yield exec_(ANSWER_CLAIM, call_id)

        await self.db.run(op())

    async def release_call(self, call_id: str) -> None:
        def op() -> Op[None]:
            yield exec_(DELETE_CLAIMS_OF_CALL, call_id)

        await self.db.run(op())

    async def release_owner(self, owner: str) -> list[str]:
        def op() -> Op[list[str]]:
            released = [str(r["call_id"]) for r in (yield rows(OWNED_CALLS, owner))]
            yield exec_(DELETE_OWNED, owner)
            return released

        return await self.db.run(op())

    async def release_all_claims(self) -> None:
        def op() -> Op[None]:
            yield exec_(DELETE_ALL_CLAIMS)

        await self.db.run(op())

    async def call_owner(self, call_id: str) -> str | None:
        def op() -> Op[str | None]:
            owner = yield val(CALL_OWNER, call_id)
            return None if owner is None else str(owner)

        return await self.db.run(op(), write=False)

    async def list_calls(self, user_id: str, *, before: datetime, limit: int) -> list[CallRecord]:
        def op() -> Op[list[CallRecord]]:
            found = yield rows(MY_CALLS, user_id, before, limit)
            return [_call(r) for r in found]

        return await self.db.run(op(), write=False)


def _claim(r: Row) -> CallClaim:
    return CallClaim(call_id=str(r["call_id"]), caller_id=str(r["caller_id"]),
                     callee_id=str(r["callee_id"]), owner=str(r["owner"]),
                     answered=bool(r["answered"]))
