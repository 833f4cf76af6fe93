"""The rules, run on the in-memory store and the in-process router, on the autojump clock:
messaging and group commit, receipts, presence grace, typing expiry, calls (ring timeout,
glare, busy under concurrent offers), the acker's order. No sockets, no sleeps: a test that
waits 45 s of ring time takes microseconds."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from chatsrv.domain.errors import Conflict, NotFound, Unavailable
from chatsrv.domain.model import Device, User
from chatsrv.protocol import frames as f
from tests.unit.conftest import GRACE, RING, Inbox, World

# ------------------------------------------------------------------ messaging


async def test_a_send_is_stored_then_fanned_out_to_everyone_but_the_sending_device(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    phone, laptop, other = world.connect(a), world.connect(a), world.connect(b)
    msg, created = await world.messaging.send(a.id, conversation_id=cid, content="hi",
                                              client_msg_id="m1", origin=phone)
    assert created and msg.seq == 1
    assert [m.content for m in other.of("new_message")] == ["hi"]
    assert [m.content for m in laptop.of("new_message")] == ["hi"]
    assert phone.of("new_message") == []
    again, created = await world.messaging.send(a.id, conversation_id=cid, content="hi",
                                                client_msg_id="m1")
    assert not created and again.id == msg.id  # a resend, not a second message
    assert len(other.of("new_message")) == 1


async def test_concurrent_sends_share_commits_with_gap_free_seqs_in_send_order(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    inbox = world.connect(b)
    pendings = [await world.messaging.submit(a.id, conversation_id=cid, content=f"m{i}")
                for i in range(50)]
    for p in pendings:
        await p.done.wait()
    seqs = [world.messaging.result(p)[0].seq for p in pendings]
    assert seqs == list(range(1, 51))
    assert [m.seq for m in inbox.of("new_message")] == seqs  # live order is seq order
    assert world.commits.batches < 50  # they shared transactions


async def test_an_outsider_cannot_send_and_a_failed_batch_fails_only_its_senders(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b, x = await world.user(), await world.user(), await world.user()
    cid = await world.conversation(a, b)
    with pytest.raises(NotFound):
        await world.messaging.send(x.id, conversation_id=cid, content="intrude")
    world.store.fail_next("append_messages", Unavailable("database down"))
    with pytest.raises(Unavailable):
        await world.messaging.send(a.id, conversation_id=cid, content="lost?",
                                   client_msg_id="r1")
    msg, created = await world.messaging.send(a.id, conversation_id=cid, content="lost?",
                                              client_msg_id="r1")
    assert created and msg.seq == 1  # nothing was stored by the failed batch


async def test_a_commit_whose_reply_was_lost_is_found_again_by_its_client_msg_id(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    world.store.fail_next("append_messages", Unavailable("reply lost"), committed=True)
    with pytest.raises(Unavailable):  # the sender never got an ack...
        await world.messaging.send(a.id, conversation_id=cid, content="once",
                                   client_msg_id="c1")
    msg, created = await world.messaging.send(a.id, conversation_id=cid, content="once",
                                              client_msg_id="c1")
    assert not created and msg.seq == 1  # ...and the resend finds it: stored exactly once


# ------------------------------------------------------------------ receipts


async def test_receipts_move_watermarks_forward_only_and_tell_the_members(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    sender = world.connect(a)
    for i in range(3):
        await world.messaging.send(a.id, conversation_id=cid, content=f"m{i}")
    marks = await world.messaging.receipt(b.id, status="delivered", conversation_id=cid,
                                          up_to_seq=3)
    assert (marks.delivered_seq, marks.read_seq) == (3, 0)
    marks = await world.messaging.receipt(b.id, status="read", conversation_id=cid,
                                          up_to_seq=2)
    assert (marks.delivered_seq, marks.read_seq) == (3, 2)
    await world.messaging.receipt(b.id, status="read", conversation_id=cid, up_to_seq=1)
    statuses = [(s.status, s.up_to_seq) for s in sender.of("message_status")]
    assert statuses == [("delivered", 3), ("read", 2)]  # the step back sent nothing
    marks = await world.messaging.receipt(b.id, status="read", conversation_id=cid,
                                          up_to_seq=99)
    assert marks.read_seq == 3  # never past the last message


# ------------------------------------------------------------------ presence


async def test_presence_goes_offline_only_after_the_grace_and_a_reconnect_does_not_flap(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    await world.conversation(a, b)
    watcher = world.connect(b)
    first = Inbox(a.id)
    await world.presence.connected(first)
    assert [p.status for p in watcher.of("presence_update")] == ["online"]
    world.presence.disconnected(first)
    await trio.sleep(GRACE / 2)
    again = Inbox(a.id)
    await world.presence.connected(again)  # a reload within the grace
    await trio.sleep(GRACE * 3)
    assert [p.status for p in watcher.of("presence_update")] == ["online"]
    world.presence.disconnected(again)
    await trio.sleep(GRACE - 0.01)  # mock time: deterministic to the millisecond
    assert [p.status for p in watcher.of("presence_update")] == ["online"]
    await trio.sleep(0.02)
    assert [p.status for p in watcher.of("presence_update")] == ["online", "offline"]
    off = watcher.of("presence_update")[-1]
    assert off.status == "offline" and off.last_seen
    assert (await world.store.get_user(a.id)).last_seen is not None  # type: ignore[union-attr]


# ------------------------------------------------------------------ calls


async def pair_on_call(world: World) -> tuple[Inbox, Inbox, Inbox, str]:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    caller, phone, laptop = world.connect(a), world.connect(b), world.connect(b)
    return caller, phone, laptop, cid


async def test_an_unanswered_call_is_missed_at_the_ring_timeout(
world: World, autojump_clock: trio.testing.MockClock) -> None:
    caller, phone, laptop, cid = await pair_on_call(world)
    offered = await world.calls.offer(caller.device, f.CallOfferIn(offer="sdp",
                                                                   conversation_id=cid))
    assert offered.ringing and len(phone.of("call_offer")) == len(laptop.of("call_offer")) == 1
    began = trio.current_time()
    await world.calls.run_leg(offered.call_id, caller.device)  # the caller's leg
    assert trio.current_time() - began == pytest.approx(RING, abs=0.01)
    assert [(e.status, e.reason) for e in caller.of("call_end")] == [("missed", "timeout")]
    assert [e.status for e in phone.of("call_end")] == ["missed"]
    record = await world.history.get_call(offered.call_id)
    assert record is not None and record.status == "missed"


async def test_the_first_device_to_answer_wins_and_hanging_up_ends_it_for_both(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    caller, phone, laptop, cid = await pair_on_call(world)
    offered = await world.calls.offer(caller.device, f.CallOfferIn(offer="sdp",
                                                                   conversation_id=cid))
    async with trio.open_nursery() as legs:
        await legs.start(world.calls.run_leg, offered.call_id, caller.device)
        call_id = await world.calls.answer(laptop.device, f.CallAnswerIn(offered.call_id, "a"))
        await legs.start(world.calls.run_leg, call_id, laptop.device)
        assert [x.callee_id for x in caller.of("call_answer")] == [laptop.user_id]
        assert phone.of("call_answered_elsewhere") and not laptop.of("call_answered_elsewhere")
        with pytest.raises(Conflict):
            await world.calls.answer(phone.device, f.CallAnswerIn(offered.call_id, "late"))
        await trio.sleep(RING * 2)  # answered: the ring timeout no longer applies
        await world.calls.end(caller.device, f.CallReasonIn(call_id))
    assert [e.reason for e in laptop.of("call_end")] == ["hangup"]
    assert caller.of("call_end") == []  # the one who hung up is not told
    assert world.calls.active_calls() == 0


async def test_a_callee_who_disconnects_ends_the_call_for_the_caller(
world: World, autojump_clock: trio.testing.MockClock) -> None:
    caller, phone, _, cid = await pair_on_call(world)
    offered = await world.calls.offer(caller.device, f.CallOfferIn(offer="sdp",
                                                                   conversation_id=cid))
    async with trio.open_nursery() as legs:
        await legs.start(world.calls.run_leg, offered.call_id, caller.device)
        await world.calls.answer(phone.device, f.CallAnswerIn(offered.call_id, "a"))
        phone_socket = trio.CancelScope()  # the phone's connection, as its nursery would be
        legs.start_soon(_leg_until_cancelled, world, offered.call_id, phone.device,
                        phone_socket)
        await trio.sleep(1)
        phone_socket.cancel()  # the phone's socket closed
    assert [e.reason for e in caller.of("call_end")] == ["disconnected"]


async def _leg_until_cancelled(world: World, call_id: str, device: Device,
                               scope: trio.CancelScope) -> None:
    with scope:
        await world.calls.run_leg(call_id, device)


@pytest.mark.parametrize("smaller_calls_first", [True, False])
async def test_glare_keeps_one_call_the_same_on_both_sides(
        world: World, autojump_clock: trio.testing.MockClock, smaller_calls_first: bool) -> None:
    u, v = sorted([await world.user(), await world.user()], key=lambda x: x.id)
    a, b = (u, v) if smaller_calls_first else (v, u)  # a calls first, then b calls a
    cid = await world.conversation(a, b)
    wa, wb = world.connect(a), world.connect(b)
    first = await world.calls.offer(wa.device, f.CallOfferIn(offer="sdp", conversation_id=cid))
    second = await world.calls.offer(wb.device, f.CallOfferIn(offer="sdp", conversation_id=cid))
    # the call placed by the smaller user id survives, whoever called first
    if smaller_calls_first:  # the later offer is refused on the spot
        loser = second
        assert not second.ringing and second.reply.reason == "glare"
        assert second.reply.kept_call_id == first.call_id
    else:  # the later offer wins: the ringing call ends for both sides
        loser = first
        assert second.ringing
        for inbox in (wa, wb):
            ended = [e for e in inbox.of("call_end") if e.call_id == first.call_id]
            assert [(e.reason, e.kept_call_id) for e in ended] == [("glare", second.call_id)]
    assert world.calls.active_calls() == 1
    with pytest.raises(NotFound):  # the loser is over
        await world.calls.ice(wa.device, f.IceCandidateIn(loser.call_id, {"candidate": "x"}))


async def test_concurrent_offers_to_one_callee_make_one_call_and_busy_for_the_rest(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    callee = await world.user()
    world.connect(callee)
    callers = [await world.user() for _ in range(5)]
    for c in callers:
        await world.conversation(c, callee)
    outcomes: list[Any] = []

    async def offer(c: User) -> None:
        outcomes.append(await world.calls.offer(Inbox(c.id).device,
                                                f.CallOfferIn(offer="sdp",
                                                              recipient_id=callee.id)))

    async with trio.open_nursery() as nursery:
        for c in callers:
            nursery.start_soon(offer, c)
    assert sum(o.ringing for o in outcomes) == 1
    assert sorted(o.reply.TYPE for o in outcomes if not o.ringing) == ["call_reject"] * 4
    assert all(o.reply.reason == "busy" for o in outcomes if not o.ringing)
