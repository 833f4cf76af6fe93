"""What only the in-memory store has: its fault hook, cancellation before a call starts, and
Conflict where the SQL store lets its internal UniqueViolation out. Everything else it
shares with SQLite and PostgreSQL is in tests/contract/."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from chatsrv.adapters.storage.memory.calls import MemoryCallLog
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.errors import Conflict, Invalid, Unavailable
from chatsrv.domain.model import (
    CallRecord,
    ConversationType,
    Message,
    Role,
    User,
    new_id,
    utcnow,
)


async def user(store: MemoryStore) -> User:
    uid = new_id()
    return await store.create_user(user_id=uid, username=f"u{uid[:8]}",
                                   email=f"{uid}@example.com", display_name="u",
                                   password_hash="x", created_at=utcnow())


async def direct(store: MemoryStore, a: User, b: User) -> str:
    conv, _ = await store.create_conversation(
        conversation_id=new_id(), type=ConversationType.ONE_TO_ONE, name=None,
        created_by=a.id, members=[(a.id, Role.MEMBER), (b.id, Role.MEMBER)],
        direct_key=":".join(sorted((a.id, b.id))), created_at=utcnow())
    return conv.id


def draft(conv: str, sender: User, content: str = "hi", cmid: str | None = None) -> Message:
    return Message(id=new_id(), conversation_id=conv, seq=0, sender_id=sender.id,
                   content=content, message_type="text", client_msg_id=cmid,
                   created_at=utcnow())


async def test_a_fault_before_the_commit_stores_nothing_and_fires_once() -> None:
    store = MemoryStore()
    a, b = await user(store), await user(store)
    conv = await direct(store, a, b)
    store.fail_next("append_messages", Unavailable("database unavailable"))
    with pytest.raises(Unavailable):
        await store.append_messages([draft(conv, a, cmid="k")])
    assert await store.list_messages(conv, limit=10) == []
    [(stored, created)] = await store.append_messages([draft(conv, a, cmid="k")])
    assert created and stored.seq == 1


async def test_a_fault_after_the_commit_stores_and_still_raises() -> None:
    # the reply to a COMMIT lost: the client retries with the same client_msg_id
    store = MemoryStore()
    a, b = await user(store), await user(store)
    conv = await direct(store, a, b)
    store.fail_next("append_messages", Unavailable("connection lost"), committed=True)
    first = draft(conv, a, cmid="k")
    with pytest.raises(Unavailable):
        await store.append_messages([first])
    [(stored, created)] = await store.append_messages([draft(conv, a, cmid="k")])
    assert not created and stored.id == first.id


async def test_faults_queue_per_method_and_names_are_checked() -> None:
    store = MemoryStore()
    calls = MemoryCallLog(store)
    store.fail_next("ping", Unavailable("one"))
    store.fail_next("ping", Unavailable("two"))
    for expected in ("one", "two"):
        with pytest.raises(Unavailable, match=expected):
            await store.ping()
    await store.ping()
    with pytest.raises(ValueError):
        store.fail_next("append_mesages", Unavailable("typo"))
    with pytest.raises(ValueError):
        store.fail_next("record_call", Unavailable("not the store's"))
    calls.fail_next("record_call", Unavailable("down"))
    a, b = await user(store), await user(store)
    with pytest.raises(Unavailable):
        await calls.record_call(CallRecord(
            id="c1", conversation_id=None, caller_id=a.id, callee_id=b.id, media="audio",
            status="ringing", end_reason=None, started_at=utcnow()))
    assert await calls.get_call("c1") is None


async def test_a_call_cancelled_before_it_starts_changes_nothing() -> None:
    store = MemoryStore()
    a, b = await user(store), await user(store)
    conv = await direct(store, a, b)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append_messages([draft(conv, a)])
    assert scope.cancelled_caught
    assert (await store.get_conversation(conv)).last_seq == 0  # type: ignore[union-attr]


async def test_a_refused_draft_refuses_the_whole_batch() -> None:
    store = MemoryStore()
    a, b = await user(store), await user(store)
    conv = await direct(store, a, b)
    with pytest.raises(Invalid):
        await store.append_messages([draft(conv, a, "fine"), draft(conv, b, "nul \x00")])
    taken = draft(conv, a)
    await store.append_messages([taken])
    with pytest.raises(Conflict):
        await store.append_messages([draft(conv, b), taken])
    assert [m.id for m in await store.list_messages(conv, limit=10)] == [taken.id]
    marks = await store.watermarks(conv)
    assert marks[b.id].read_seq == 0


async def test_ids_in_use_are_conflicts() -> None:
    # the SQL store lets its internal UniqueViolation out for these (the port says Conflict)
    store = MemoryStore()
    a, b = await user(store), await user(store)
    sid, later = new_id(), utcnow() + timedelta(days=1)
    await store.open_session(session_id=sid, user_id=a.id, token_hash="h", expires_at=later,
                             created_at=utcnow())
    with pytest.raises(Conflict):
        await store.open_session(session_id=sid, user_id=a.id, token_hash="other",
                                 expires_at=later, created_at=utcnow())
    with pytest.raises(Conflict):
        await store.open_session(session_id=new_id(), user_id=a.id, token_hash="h",
                                 expires_at=later, created_at=utcnow())
    with pytest.raises(Conflict):
        await store.add_refresh_token(token_hash="h", user_id=a.id, family_id=sid,
                                      expires_at=later)
    assert await store.live_sessions(a.id) == [sid]
    conv = await direct(store, a, b)
    for direct_key in (None, "another pair"):
        with pytest.raises(Conflict):
            await store.create_conversation(
                conversation_id=conv, type=ConversationType.GROUP, name="g",
                created_by=a.id, members=[(a.id, Role.ADMIN)], direct_key=direct_key,
                created_at=utcnow())
    assert (await store.get_conversation(conv)).type is ConversationType.ONE_TO_ONE  # type: ignore[union-attr]
