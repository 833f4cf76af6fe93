"""The call state machine, without Trio: time is a number passed in."""

from __future__ import annotations

import pytest

from chatsrv.domain.calls import CallSession, CallStatus, glare_winner
from chatsrv.domain.errors import Conflict, NotFound


def ringing(caller: str = "alice", callee: str = "bob", *, at: float = 0.0,
            ring: float = 45.0) -> CallSession:
    return CallSession(id=f"{caller}->{callee}", caller_id=caller, callee_id=callee,
                       conversation_id=None, media="audio", started_at=at,
                       ring_deadline=at + ring, caller_session="s-caller")


def test_answer_then_hangup_ends_the_call() -> None:
    c = ringing()
    c.answer("bob", "phone", now=3)
    assert c.status is CallStatus.ANSWERED and c.callee_session == "phone"
    assert c.answered_at == 3
    c.end("bob", None, now=60)
    assert (c.status, c.end_reason, c.ended_at) == (CallStatus.ENDED, "hangup", 60)


def test_first_device_wins_and_a_second_answer_is_refused() -> None:
    c = ringing()
    c.answer("bob", "phone", now=1)
    with pytest.raises(Conflict):
        c.answer("bob", "laptop", now=2)
    assert c.callee_session == "phone"


def test_only_the_callee_can_answer_or_reject() -> None:
    c = ringing()
    with pytest.raises(NotFound):
        c.answer("mallory", "x", now=1)
    with pytest.raises(NotFound):
        c.answer("alice", "x", now=1)
    with pytest.raises(NotFound):
        c.end("mallory", None, now=1)


def test_unanswered_call_times_out_as_missed_and_stays_missed() -> None:
    c = ringing(ring=45)
    assert not c.timeout(now=44.9)
    assert c.timeout(now=45)
    assert (c.status, c.end_reason) == (CallStatus.MISSED, "timeout")
    with pytest.raises(Conflict):
        c.answer("bob", "phone", now=46)
    assert not c.timeout(now=50)


def test_late_answer_after_deadline_is_missed() -> None:
    c = ringing(ring=10)
    with pytest.raises(Conflict):
        c.answer("bob", "phone", now=10.5)
    assert c.status is CallStatus.MISSED


def test_reject_and_busy() -> None:
    c = ringing()
    c.reject("bob", "declined", now=2)
    assert (c.status, c.end_reason) == (CallStatus.REJECTED, "declined")
    b = ringing()
    b.reject("bob", "busy", now=1)
    assert b.status is CallStatus.BUSY


def test_caller_hanging_up_while_ringing_cancels() -> None:
    c = ringing()
    c.end("alice", None, now=5)
    assert c.status is CallStatus.CANCELLED
    with pytest.raises(Conflict):
        c.end("bob", None, now=6)


def test_callee_hanging_up_while_ringing_rejects() -> None:
    c = ringing()
    c.end("bob", None, now=5)
    assert c.status is CallStatus.REJECTED


def test_disconnects() -> None:
    c = ringing()
    assert not c.drop("bob", now=1)  # a ringing device going away: others may answer
    assert c.status is CallStatus.RINGING
    assert c.drop("alice", now=2)
    assert (c.status, c.end_reason) == (CallStatus.CANCELLED, "caller_disconnected")
    d = ringing()
    d.answer("bob", "phone", now=1)
    assert d.drop("bob", now=9)
    assert (d.status, d.end_reason) == (CallStatus.ENDED, "disconnected")
    assert not d.drop("alice", now=10)  # already over


def test_offline_callee_is_missed_at_once() -> None:
    c = ringing()
    c.unreachable(now=0)
    assert (c.status, c.end_reason) == (CallStatus.MISSED, "offline")


def test_glare_resolves_to_the_same_call_whichever_side_decides() -> None:
    a_calls_b = ringing("alice", "bob")
    b_calls_a = ringing("bob", "alice")
    assert glare_winner(a_calls_b, b_calls_a) is a_calls_b
    assert glare_winner(b_calls_a, a_calls_b) is a_calls_b
