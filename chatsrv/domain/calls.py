"""Call sessions: a pure state machine, time passed in.

    ringing ──answer──▶ answered ──end──▶ ended
       │                   └─(a participant's connection closes)─▶ ended
       ├─reject──▶ rejected        ├─callee busy──▶ busy
       ├─caller ends──▶ cancelled  ├─ring timeout / callee offline──▶ missed
       └─signalling impossible──▶ failed

Every terminal state is final: later events are refused, so a late answer after a timeout,
or a second device answering, cannot revive a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from chatsrv.domain.errors import Conflict, NotFound


class CallStatus(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    MISSED = "missed"
    REJECTED = "rejected"
    BUSY = "busy"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({CallStatus.ENDED, CallStatus.MISSED, CallStatus.REJECTED,
                      CallStatus.BUSY, CallStatus.FAILED, CallStatus.CANCELLED})
MEDIA = ("audio", "video")


@dataclass(slots=True)
class CallSession:
    id: str
    caller_id: str
    callee_id: str
    conversation_id: str | None
    media: str
    started_at: float
    ring_deadline: float
    caller_session: str
    status: CallStatus = CallStatus.RINGING
    callee_session: str | None = None  # the device that answered
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    ringing_sessions: set[str] = field(default_factory=set)

    @property
    def over(self) -> bool:
        return self.status in TERMINAL

    def involves(self, user_id: str) -> bool:
        return user_id in (self.caller_id, self.callee_id)

    def other(self, user_id: str) -> str:
        return self.callee_id if user_id == self.caller_id else self.caller_id

    def answer(self, user_id: str, session_id: str, *, now: float) -> None:
        """The first callee device to answer wins. Raises NotFound for a non-callee and
        Conflict when the call is no longer ringing (answered elsewhere, over)."""
        if user_id != self.callee_id:
            raise NotFound("call not found")
        if self.status is not CallStatus.RINGING:
            raise Conflict(f"call is {self.status.value}", code="call_not_ringing")
        if now >= self.ring_deadline:
            self._finish(CallStatus.MISSED, "timeout", now)
            raise Conflict("call is missed", code="call_not_ringing")
        self.status = CallStatus.ANSWERED
        self.callee_session = session_id
        self.answered_at = now

    def reject(self, user_id: str, reason: str | None, *, now: float) -> None:
        if user_id != self.callee_id:
            raise NotFound("call not found")
        if self.status is not CallStatus.RINGING:
            raise Conflict(f"call is {self.status.value}", code="call_not_ringing")
        status = CallStatus.BUSY if reason == "busy" else CallStatus.REJECTED
        self._finish(status, reason or "rejected", now)

    def end(self, user_id: str, reason: str | None, *, now: float) -> None:
        """Either side hangs up. Before an answer, the caller cancels and a callee rejects."""
        if not self.involves(user_id):
            raise NotFound("call not found")
        if self.over:
            raise Conflict(f"call is {self.status.value}", code="call_over")
        if self.status is CallStatus.RINGING:
            if user_id == self.caller_id:
                self._finish(CallStatus.CANCELLED, reason or "cancelled", now)
            else:
                self._finish(CallStatus.REJECTED, reason or "rejected", now)
        else:
            self._finish(CallStatus.ENDED, reason or "hangup", now)

    def timeout(self, *, now: float) -> bool:
        """Ring deadline passed without an answer: missed. True if this changed the state."""
        if self.status is CallStatus.RINGING and now >= self.ring_deadline:
            self._finish(CallStatus.MISSED, "timeout", now)
            return True
        return False

    def drop(self, user_id: str, *, now: float) -> bool:
        """A participant's connection closed. True if this ended the call."""
        if self.over or not self.involves(user_id):
            return False
        if self.status is CallStatus.RINGING:
            if user_id == self.caller_id:
                self._finish(CallStatus.CANCELLED, "caller_disconnected", now)
                return True
            return False  # other callee devices may still answer; the ring timeout decides
        self._finish(CallStatus.ENDED, "disconnected", now)
        return True

    def unreachable(self, *, now: float) -> None:
        """No callee device is online: missed at once."""
        self._finish(CallStatus.MISSED, "offline", now)

    def _finish(self, status: CallStatus, reason: str, now: float) -> None:
        self.status = status
        self.end_reason = reason
        self.ended_at = now


def glare_winner(call_a: CallSession, call_b: CallSession) -> CallSession:
    """Two users calling each other at once: keep one call, deterministically on both
    sides — the one placed by the smaller user id."""
    return call_a if call_a.caller_id < call_b.caller_id else call_b
