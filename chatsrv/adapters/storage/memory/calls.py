"""Call history and call claims in memory: the CallLog port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from chatsrv.adapters.storage.memory.base import (
    _atomic,
    _count,
    _Faults,
    _opt_text,
    _refused,
    _text,
    _ts,
    _uuid,
)
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import CallClaim, CallRecord

MEDIA = ("audio", "video")


class MemoryCallLog(_Faults):
    """Implements domain.ports.CallLog in memory, beside a MemoryStore whose users and
    conversations its calls name (as the calls table beside the others)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._calls: dict[str, CallRecord] = {}
        self._claims: dict[str, CallClaim] = {}  # user id -> the call holding them

    @_atomic
    def record_call(self, call: CallRecord) -> None:
        """Record a call as it starts: its status and started_at (as on SQL, the record's
        answer and end are left for mark_answered and finish_call). Raises Conflict
        `call_exists` for an id in use, Invalid for an id not of 1-64 characters, a media
        other than audio or video, or users and conversations that do not exist."""
        if not 1 <= len(_text(call.id)) <= 64:
            raise _refused("a call id has 1-64 characters")
        if call.media not in MEDIA:
            raise _refused("media must be audio or video")
        _text(call.status)
        if call.id in self._calls:
            raise Conflict("call_id is already in use", code="call_exists")
        conv = (None if call.conversation_id is None
                else self._store._existing_conversation(call.conversation_id))
        self._calls[call.id] = CallRecord(
            id=call.id, conversation_id=conv,
            caller_id=self._store._existing_user(call.caller_id),
            callee_id=self._store._existing_user(call.callee_id), media=call.media,
            status=call.status, end_reason=None, started_at=_ts(call.started_at))

    @_atomic
    def claim_call(self, claim: CallClaim, *, replacing: str | None = None) -> list[CallClaim]:
        users = sorted({_uuid(claim.caller_id, "caller_id"), _uuid(claim.callee_id, "callee_id")})
        for uid in users:
            self._store._existing_user(uid)
        if replacing is not None:
            self._drop_claims(lambda c: c.call_id == replacing)
        standing = [self._claims[u] for u in users if u in self._claims]
        if standing:
            return standing
        for uid in users:
            self._claims[uid] = replace(claim, answered=False)
        return []

    @_atomic
    def mark_claim_answered(self, call_id: str) -> None:
        for uid, c in self._claims.items():
            if c.call_id == call_id:
                self._claims[uid] = replace(c, answered=True)

    @_atomic
    def release_call(self, call_id: str) -> None:
        self._drop_claims(lambda c: c.call_id == call_id)

    @_atomic
    def release_owner(self, owner: str) -> list[str]:
        released = sorted({c.call_id for c in self._claims.values() if c.owner == owner})
        self._drop_claims(lambda c: c.owner == owner)
        return released

    @_atomic
    def release_all_claims(self) -> None:
        self._claims.clear()

    @_atomic
    def call_owner(self, call_id: str) -> str | None:
        return next((c.owner for c in self._claims.values() if c.call_id == call_id), None)

    def _drop_claims(self, which: Callable[[CallClaim], bool]) -> None:
        for uid in [u for u, c in self._claims.items() if which(c)]:
            del self._claims[uid]

    @_atomic
    def mark_answered(self, call_id: str, at: datetime) -> None:
        call = self._calls.get(_text(call_id))
        if call is not None:
            self._calls[call_id] = replace(call, status="answered", answered_at=_ts(at))

    @_atomic
    def finish_call(self, call_id: str, *, status: str, end_reason: str | None,
                    answered_at: datetime | None, ended_at: datetime) -> None:
        call = self._calls.get(_text(call_id))
        _text(status)
        _opt_text(end_reason)
        if call is not None:
            self._calls[call_id] = replace(
                call, status=status, end_reason=end_reason, ended_at=_ts(ended_at),
                answered_at=None if answered_at is None else _ts(answered_at))

    @_atomic
    def get_call(self, call_id: str) -> CallRecord | None:
        return self._calls.get(_text(call_id))

    @_atomic
    def list_calls(self, user_id: str, *, before: datetime, limit: int) -> list[CallRecord]:
        """The user's calls (either side) started before `before`, newest first."""
        uid = _uuid(user_id, "user_id")
        limit = _count(limit, "LIMIT")
        before = _ts(before)
        mine = [c for c in self._calls.values()
                if uid in (c.caller_id, c.callee_id) and c.started_at < before]
        mine.sort(key=lambda c: c.started_at, reverse=True)
        return mine[:limit]


if TYPE_CHECKING:  # satisfies its port (checked by mypy)
    from chatsrv.domain.ports import CallLog

    _calls: CallLog = MemoryCallLog(MemoryStore())
