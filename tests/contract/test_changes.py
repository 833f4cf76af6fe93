"""The message-changes contract (MessageChanges, issue 14): the same tests in memory, on
SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import trio

from chatsrv.domain.changes import DELETED, EDITED, REACTION
from chatsrv.domain.model import Message, Reaction, User, new_id, utcnow
from chatsrv.domain.ports import MessageChanges, Store
from tests.contract.test_store import make_conversation, make_user, send


async def append(store: Store, conv: str, sender: User, text: str = "hi", *,
                 reply_to: str | None = None, mentions: tuple[str, ...] = ()) -> Message:
    [outcome] = await store.append_messages([Message(
        id=new_id(), conversation_id=conv, seq=0, sender_id=sender.id, content=text,
        message_type="text", client_msg_id=None, created_at=utcnow(), reply_to=reply_to,
        mentions=mentions)])
    assert isinstance(outcome, tuple)
    return outcome[0]


async def test_replies_and_mentions_are_stored_with_the_message(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    first, _ = await send(store, conv, a)
    reply = await append(store, conv, b, "@x yes", reply_to=first.id, mentions=(a.id,))
    got = await store.get_message(reply.id)
    assert got is not None and got.reply_to == first.id and got.mentions == (a.id,)
    assert got.edited_at is None and got.deleted_at is None and got.deleted_by is None
    [page] = await store.list_messages(conv, limit=1)
    assert page == got
    assert (await store.get_message(first.id)).mentions == ()  # type: ignore[union-attr]


async def test_an_edit_changes_the_content_and_is_logged(store: Store,
                                                         changes: MessageChanges) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    m, _ = await send(store, conv, a, "helo")
    before = await changes.last_change()
    at = utcnow()
    edited = await changes.edit_message(m.id, content="hello @b", mentions=[b.id], at=at)
    assert edited is not None
    assert (edited.content, edited.mentions, edited.edited_at, edited.seq) == (
        "hello @b", (b.id,), at, m.seq)
    assert await store.get_message(m.id) == edited
    assert (await store.conversation_positions(b.id))[conv][0] == 1  # no seq taken
    log = await changes.changes_since(b.id, before, limit=10)
    assert [(c.type, c.payload["content"], c.payload["mentions"]) for c in log] == [
        (EDITED, "hello @b", [b.id])]
    assert log[0].id == await changes.last_change() > before
    # a second edit supersedes the first in the log
    await changes.edit_message(m.id, content="hello!", mentions=[], at=utcnow())
    log = await changes.changes_since(b.id, before, limit=10)
    assert [(c.type, c.payload["content"]) for c in log] == [(EDITED, "hello!")]


async def test_a_delete_empties_the_message_and_supersedes_its_changes(
        store: Store, changes: MessageChanges) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    m = await append(store, conv, a, "secret @b", mentions=(b.id,))
    before = await changes.last_change()
    await changes.edit_message(m.id, content="secret 2", mentions=[b.id], at=utcnow())
    await changes.set_reaction(m.id, user_id=b.id, emoji="👍", add=True, at=utcnow())
    at = utcnow()
    deleted = await changes.delete_message(m.id, by=a.id, at=at)
    assert deleted is not None
    assert (deleted.content, deleted.mentions, deleted.deleted_at, deleted.deleted_by) == (
        "", (), at, a.id)
    assert await changes.reactions([m.id], b.id) == {}
    log = await changes.changes_since(a.id, before, limit=10)
    assert [c.type for c in log] == [DELETED]  # no old content left in the log
    assert log[0].payload == {"message_id": m.id, "conversation_id": conv, "seq": m.seq,
                              "deleted_at": log[0].payload["deleted_at"], "deleted_by": a.id}
    # deleted: no second delete, no edit, no reaction
    assert await changes.delete_message(m.id, by=a.id, at=utcnow()) is None
    assert await changes.edit_message(m.id, content="x", mentions=[], at=utcnow()) is None
    assert await changes.set_reaction(m.id, user_id=a.id, emoji="👍", add=True,
                                      at=utcnow()) is None
    assert await changes.last_change() == log[0].id
    assert await changes.mentions_unread(b.id) == {}


async def test_reactions_are_idempotent_and_counted_per_emoji(
        store: Store, changes: MessageChanges) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b, c, group=True)
    m, _ = await send(store, conv, a)
    before = await changes.last_change()
    t = utcnow()
    r = await changes.set_reaction(m.id, user_id=b.id, emoji="👍", add=True, at=t)
    assert r is not None and r[1:] == ({"👍": 1}, True)
    r = await changes.set_reaction(m.id, user_id=b.id, emoji="👍", add=True,
                                   at=t + timedelta(seconds=1))
    assert r is not None and r[1:] == ({"👍": 1}, False)  # twice counts once
    r = await changes.set_reaction(m.id, user_id=c.id, emoji=":tada:", add=True,
                                   at=t + timedelta(seconds=2))
    assert r is not None and r[1:] == ({"👍": 1, ":tada:": 1}, True)
    r = await changes.set_reaction(m.id, user_id=c.id, emoji="👍", add=True,
                                   at=t + timedelta(seconds=3))
    assert r is not None and r[1:] == ({"👍": 2, ":tada:": 1}, True)
    assert await changes.reactions([m.id], c.id) == {
        m.id: (Reaction("👍", 2, True), Reaction(":tada:", 1, True))}
    assert await changes.reactions([m.id], a.id) == {
        m.id: (Reaction("👍", 2, False), Reaction(":tada:", 1, False))}
    r = await changes.set_reaction(m.id, user_id=b.id, emoji="👍", add=False, at=utcnow())
    assert r is not None and r[1:] == ({"👍": 1, ":tada:": 1}, True)
    r = await changes.set_reaction(m.id, user_id=b.id, emoji="👍", add=False, at=utcnow())
    assert r is not None and r[2] is False
    log = await changes.changes_since(a.id, before, limit=10)
    assert [(x.type, x.payload["user_id"], x.payload["emoji"], x.payload["add"],
             x.payload["counts"]) for x in log] == [
        (REACTION, b.id, "👍", True, {"👍": 1}),
        (REACTION, c.id, ":tada:", True, {"👍": 1, ":tada:": 1}),
        (REACTION, c.id, "👍", True, {"👍": 2, ":tada:": 1}),
        (REACTION, b.id, "👍", False, {"👍": 1, ":tada:": 1})]
    assert [x.id for x in log] == sorted(x.id for x in log)
    assert await changes.reactions([new_id()], a.id) == {}


async def test_changes_are_only_of_my_conversations_in_order_and_paged(
        store: Store, changes: MessageChanges) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    bc = await make_conversation(store, b, c)
    before = await changes.last_change()
    m1, _ = await send(store, ab, a)
    m2, _ = await send(store, bc, c)
    m3, _ = await send(store, ab, b)
    for m in (m1, m2, m3):
        await changes.set_reaction(m.id, user_id=b.id, emoji="🙂", add=True, at=utcnow())
    assert [x.payload["message_id"] for x in
            await changes.changes_since(a.id, before, limit=10)] == [m1.id, m3.id]
    assert [x.payload["message_id"] for x in
            await changes.changes_since(c.id, before, limit=10)] == [m2.id]
    mine = await changes.changes_since(b.id, before, limit=10)
    assert [x.payload["message_id"] for x in mine] == [m1.id, m2.id, m3.id]
    first = await changes.changes_since(b.id, before, limit=2)
    rest = await changes.changes_since(b.id, first[-1].id, limit=2)
    assert first + rest == mine
    assert await changes.changes_since(b.id, mine[-1].id, limit=10) == []


async def test_concurrent_changes_get_distinct_ordered_ids(store: Store,
                                                           changes: MessageChanges) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    messages = [(await send(store, conv, a, f"m{i}"))[0] for i in range(6)]
    before = await changes.last_change()
    async with trio.open_nursery() as nursery:
        for m in messages:
            nursery.start_soon(lambda m=m: changes.set_reaction(
                m.id, user_id=b.id, emoji="👍", add=True, at=utcnow()))
    log = await changes.changes_since(a.id, before, limit=100)
    assert sorted(x.payload["message_id"] for x in log) == sorted(m.id for m in messages)
    assert [x.id for x in log] == list(range(before + 1, before + 7))


async def test_members_by_username_and_unread_mentions(store: Store,
                                                       changes: MessageChanges) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    found = await changes.member_ids_by_username(conv, [b.username.upper(), c.username,
                                                        "nobody_here"])
    assert found == {b.username.lower(): b.id}  # c is not a member
    assert await changes.member_ids_by_username(conv, []) == {}
    await append(store, conv, a, "@b one", mentions=(b.id,))
    await append(store, conv, a, "plain")
    third = await append(store, conv, a, "@b three", mentions=(b.id,))
    assert await changes.mentions_unread(b.id) == {conv: 2}
    assert await changes.mentions_unread(a.id) == {}
    await store.advance_watermarks(conv, b.id, delivered_to=2, read_to=2)
    assert await changes.mentions_unread(b.id) == {conv: 1}
    arrival = (await store.arrivals([b.id]))[b.id]
    assert arrival.mentions_unread == {conv: 1}
    assert arrival.changes_cursor == await changes.last_change()
    await changes.delete_message(third.id, by=a.id, at=utcnow())
    assert await changes.mentions_unread(b.id) == {}
    assert (await store.arrivals([b.id]))[b.id].changes_cursor == await changes.last_change()
