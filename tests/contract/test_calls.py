"""The call-history contract (CallLog): the same tests in memory, on SQLite and on PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import trio

from chatsrv.domain.errors import Conflict, Invalid
from chatsrv.domain.model import CallClaim, CallRecord, User, new_id, utcnow
from chatsrv.domain.ports import CallLog, Store
from tests.contract.test_store import make_conversation, make_user


def ringing(caller: User, callee: User, *, conversation_id: str | None, at: timedelta,
            media: str = "audio") -> CallRecord:
    return CallRecord(id=f"call-{new_id()}", conversation_id=conversation_id,
                      caller_id=caller.id, callee_id=callee.id, media=media,
                      status="ringing", end_reason=None, started_at=utcnow() - at)


async def test_a_call_is_recorded_answered_and_finished(store: Store, call_log: CallLog) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    call = ringing(a, b, conversation_id=conv, at=timedelta(seconds=30), media="video")
    await call_log.record_call(call)
    assert await call_log.get_call(call.id) == call
    answered = call.started_at + timedelta(seconds=5)
    await call_log.mark_answered(call.id, answered)
    got = await call_log.get_call(call.id)
    assert got is not None and got.status == "answered" and got.answered_at == answered
    ended = answered + timedelta(seconds=20)
    await call_log.finish_call(call.id, status="ended", end_reason="hangup",
                               answered_at=answered, ended_at=ended)
    assert await call_log.get_call(call.id) == replace(
        call, status="ended", end_reason="hangup", answered_at=answered, ended_at=ended)
    assert await call_log.get_call(f"call-{new_id()}") is None


async def test_record_call_keeps_the_start_only(store: Store, call_log: CallLog) -> None:
    # a call is recorded as it starts; answer and end come from mark_answered/finish_call
    a, b = await make_user(store), await make_user(store)
    call = replace(ringing(a, b, conversation_id=None, at=timedelta(0)),
                   end_reason="ignored", answered_at=utcnow(), ended_at=utcnow())
    await call_log.record_call(call)
    assert await call_log.get_call(call.id) == replace(call, end_reason=None,
                                                       answered_at=None, ended_at=None)


async def test_a_call_id_is_recorded_once(store: Store, call_log: CallLog) -> None:
    a, b = await make_user(store), await make_user(store)
    call = ringing(a, b, conversation_id=None, at=timedelta(0))
    await call_log.record_call(call)
    with pytest.raises(Conflict) as exc:
        await call_log.record_call(replace(call, caller_id=b.id, callee_id=a.id))
    assert exc.value.code == "call_exists"
    assert await call_log.get_call(call.id) == call


async def test_list_calls_pages_newest_first_on_either_side(store: Store,
                                                           call_log: CallLog) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab, ac = await make_conversation(store, a, b), await make_conversation(store, a, c)
    bc = await make_conversation(store, b, c)
    calls = [ringing(a, b, conversation_id=ab, at=timedelta(minutes=50)),
             ringing(b, a, conversation_id=ab, at=timedelta(minutes=40)),
             ringing(a, c, conversation_id=ac, at=timedelta(minutes=30)),
             ringing(b, c, conversation_id=bc, at=timedelta(minutes=20)),  # not a's
             ringing(c, a, conversation_id=None, at=timedelta(minutes=10))]
    for call in calls:
        await call_log.record_call(call)
    now = utcnow()
    first = await call_log.list_calls(a.id, before=now, limit=2)
    assert first == [calls[4], calls[2]]
    second = await call_log.list_calls(a.id, before=first[-1].started_at, limit=2)
    assert second == [calls[1], calls[0]]
    assert await call_log.list_calls(a.id, before=second[-1].started_at, limit=2) == []
    assert await call_log.list_calls(c.id, before=now, limit=10) == [calls[4], calls[3],
                                                                    calls[2]]
    assert await call_log.list_calls(new_id(), before=now, limit=10) == []
    assert await call_log.list_calls(a.id, before=now, limit=0) == []


@pytest.mark.parametrize("bad", [
    {"id": "x" * 65}, {"id": ""}, {"media": "fax"},
    {"caller_id": new_id()}, {"callee_id": new_id()}, {"conversation_id": new_id()},
], ids=["id too long", "empty id", "media", "unknown caller", "unknown callee",
        "unknown conversation"])
async def test_record_call_refuses_what_the_schema_refuses(
        store: Store, call_log: CallLog, bad: dict[str, str]) -> None:
    a, b = await make_user(store), await make_user(store)
    call = replace(ringing(a, b, conversation_id=None, at=timedelta(0)), **bad)
    with pytest.raises(Invalid):
        await call_log.record_call(call)
    if call.id:
        assert await call_log.get_call(call.id) is None
    assert await call_log.list_calls(a.id, before=utcnow(), limit=10) == []


async def test_a_call_claims_both_users_and_blocks_others_until_released(
        store: Store, call_log: CallLog) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    first = CallClaim(call_id=f"c-{new_id()}", caller_id=a.id, callee_id=b.id, owner="node-x")
    assert await call_log.claim_call(first) == []
    assert await call_log.call_owner(first.call_id) == "node-x"
    blocked = await call_log.claim_call(CallClaim(f"c-{new_id()}", c.id, b.id, "node-y"))
    assert [x.call_id for x in blocked] == [first.call_id]  # b is busy
    await call_log.mark_claim_answered(first.call_id)
    again = await call_log.claim_call(CallClaim(f"c-{new_id()}", b.id, a.id, "node-y"))
    assert {x.answered for x in again} == {True}
    await call_log.release_call(first.call_id)
    assert await call_log.call_owner(first.call_id) is None
    assert await call_log.claim_call(CallClaim(f"c-{new_id()}", c.id, b.id, "node-y")) == []


async def test_of_concurrent_claims_on_one_callee_exactly_one_wins(
        store: Store, call_log: CallLog) -> None:
    callee = await make_user(store)
    callers = [await make_user(store) for _ in range(6)]
    results: list[list[CallClaim]] = []

    async def claim(u: User) -> None:
        results.append(await call_log.claim_call(
            CallClaim(f"c-{new_id()}", u.id, callee.id, "node-x")))

    async with trio.open_nursery() as nursery:
        for u in callers:
            nursery.start_soon(claim, u)
    assert sum(r == [] for r in results) == 1


async def test_a_winning_call_replaces_a_losing_one_and_a_dead_owner_releases_all(
        store: Store, call_log: CallLog) -> None:
    a, b = await make_user(store), await make_user(store)
    loser = CallClaim(f"c-{new_id()}", b.id, a.id, "node-b")
    assert await call_log.claim_call(loser) == []
    winner = CallClaim(f"c-{new_id()}", a.id, b.id, "node-a")
    assert await call_log.claim_call(winner, replacing=loser.call_id) == []
    assert await call_log.call_owner(loser.call_id) is None
    assert await call_log.release_owner("node-a") == [winner.call_id]
    assert await call_log.call_owner(winner.call_id) is None
