"""Message changes (issue 14): the pure rules (emoji, mentions, cursor, edit window) and the
ChangeService on the in-memory store and router."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import trio.testing

from chatsrv.adapters.storage.memory_changes import MemoryChanges
from chatsrv.domain.changes import (
    check_emoji,
    decode_cursor,
    edit_window_open,
    encode_cursor,
    mentioned_names,
)
from chatsrv.domain.errors import Conflict, Forbidden, Invalid, NotFound
from chatsrv.domain.model import utcnow
from chatsrv.protocol import frames as f
from chatsrv.services.changes import ChangeService
from tests.unit.conftest import World


@pytest.mark.parametrize("emoji", ["👍", "👍🏽", "🇫🇷", "👩‍💻", "❤️", "1️⃣", "é", "e\u0301",
                                   "🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F",
                                   ":+1:", ":thumbs_up:", ":e-mail:"])
def test_one_grapheme_or_a_short_code_is_an_emoji(emoji: str) -> None:
    assert check_emoji(emoji) == emoji


@pytest.mark.parametrize("emoji", ["", " ", "ab", "👍👍", "🇫", "🇫🇷🇫", "\u0301", "\u200d",
                                   "👩\u200d", "\n", ":Big:", "::", ":a b:",
                                   ":" + "a" * 31 + ":", "👩‍👩‍👧‍👦" * 2, "\ud800"])
def test_anything_else_is_refused_with_the_field(emoji: str) -> None:
    with pytest.raises(Invalid) as exc:
        check_emoji(emoji)
    assert exc.value.details["field"] == "emoji"


def test_a_long_zwj_sequence_over_32_bytes_is_refused() -> None:
    family = "👨‍👩‍👧‍👦"  # 25 bytes: fine
    assert check_emoji(family) == family
    with pytest.raises(Invalid):
        check_emoji(family + "\u200d👦\u200d👦")  # 39 bytes, one cluster


def test_mentions_are_names_after_an_at_sign_not_in_addresses() -> None:
    assert mentioned_names("hi @Alice_1, @bob. and mail@carol.org @Alice_1 @xy") == [
        "alice_1", "bob"]
    assert mentioned_names("no at signs") == []
    assert mentioned_names("@dot.name. end") == ["dot.name"]
    assert len(mentioned_names(" ".join(f"@user{i}" for i in range(80)))) == 50


def test_cursors_round_trip_and_strangers_are_refused() -> None:
    assert decode_cursor(encode_cursor(0)) == 0
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ("", "12", "c", "c-1", "cx", "c" + "9" * 19, "c1 "):
        with pytest.raises(Invalid):
            decode_cursor(bad)


def test_the_edit_window() -> None:
    sent = utcnow()
    assert edit_window_open(sent, now=sent + timedelta(days=365), window=0)
    assert edit_window_open(sent, now=sent + timedelta(seconds=60), window=60)
    assert not edit_window_open(sent, now=sent + timedelta(seconds=61), window=60)


async def test_edit_delete_and_react_tell_every_device_and_ack_the_acting_one(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    phone, laptop, other = world.connect(a), world.connect(a), world.connect(b)
    msg, _ = await world.messaging.send(a.id, conversation_id=cid, content="helo")
    edited = await world.changes.edit(a.id, msg.id, "hello", origin=phone, ref="e1")
    assert edited.content == "hello" and edited.seq == msg.seq
    assert [x.content for x in other.of("message_edited")] == ["hello"]
    assert [x.content for x in laptop.of("message_edited")] == ["hello"]
    [ack] = [x for x in phone.frames if x.type == "message_edited"]
    assert ack.ref == "e1"  # the acting device: once, with its ref
    await world.changes.react(b.id, msg.id, "👍", True, origin=other, ref="r1")
    await world.changes.react(b.id, msg.id, "👍", True, origin=other, ref="r2")
    assert len(phone.of("reaction_update")) == 1  # the repeat changed nothing
    assert [x.ref for x in other.frames if x.type == "reaction_update"] == ["r1", "r2"]
    page, _ = await world.messaging.history(b.id, cid, limit=10)
    assert [(r.emoji, r.count, r.me) for r in page[0].reactions] == [("👍", 1, True)]
    with pytest.raises(Forbidden):
        await world.changes.delete(b.id, msg.id)  # a 1:1: nobody is a group admin
    await world.changes.delete(a.id, msg.id)
    assert len(other.of("message_deleted")) == 1
    page, _ = await world.messaging.history(b.id, cid, limit=10)
    assert (page[0].content, page[0].reactions) == ("", ())
    with pytest.raises(Conflict):
        await world.changes.edit(a.id, msg.id, "again")
    with pytest.raises(Conflict):
        await world.changes.react(b.id, msg.id, "👍", True)
    again = await world.changes.delete(a.id, msg.id, origin=phone, ref="d2")
    assert again.deleted_at is not None and len(other.of("message_deleted")) == 1
    outsider = await world.user()
    with pytest.raises(NotFound):
        await world.changes.react(outsider.id, msg.id, "👍", True)


async def test_an_edit_after_the_window_is_refused(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await world.user(), await world.user()
    cid = await world.conversation(a, b)
    msg, _ = await world.messaging.send(a.id, conversation_id=cid, content="x")
    world.store._messages[msg.id] = replace(  # sent two minutes ago
        world.store._messages[msg.id], created_at=utcnow() - timedelta(minutes=2))
    strict = ChangeService(world.store, MemoryChanges(world.store), world.router,  # type: ignore[arg-type]
                           world.messaging._members, max_content_chars=10, edit_window=60,
                           page_size=10)
    with pytest.raises(Forbidden) as exc:
        await strict.edit(a.id, msg.id, "y")
    assert exc.value.code == "edit_window_closed"


async def test_changes_since_pages_and_ends_at_the_newest_change(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    a, b, c = await world.user(), await world.user(), await world.user()
    cid = await world.conversation(a, b)
    elsewhere = await world.conversation(a, c)
    start = await world.changes.cursor()
    messages = [(await world.messaging.send(a.id, conversation_id=cid, content=f"m{i}"))[0]
                for i in range(3)]
    for m in messages:
        await world.changes.react(a.id, m.id, "🙂", True)
    theirs, _ = await world.messaging.send(a.id, conversation_id=elsewhere, content="x")
    await world.changes.react(c.id, theirs.id, "🙂", True)
    small = ChangeService(world.store, MemoryChanges(world.store), world.router,  # type: ignore[arg-type]
                          world.messaging._members, max_content_chars=10, edit_window=0,
                          page_size=2)
    first = await small.changes_since(b.id, start)
    assert first.has_more and len(first.changes) == 2
    rest = await small.changes_since(b.id, first.cursor)
    assert not rest.has_more and len(rest.changes) == 1
    assert [x.payload["message_id"] for x in first.changes + rest.changes] == [
        m.id for m in messages]
    # the last page's cursor is past changes of conversations b is not in: nothing left
    assert rest.cursor == await world.changes.cursor()
    assert (await small.changes_since(b.id, rest.cursor)).changes == []


def test_frames_carry_the_new_fields() -> None:
    assert {"edit_message", "delete_message", "reaction"} <= set(f.INBOUND)
    assert {"message_edited", "message_deleted", "reaction_update"} <= set(f.OUTBOUND)
    frame = f.decode_frame('{"type": "reaction", "payload": {"message_id": "m", "emoji": "x"}}')
    assert isinstance(frame, f.Reaction) and frame.payload.add is True
