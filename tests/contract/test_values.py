"""What the store refuses: Invalid, never a crash or a half-done change.

Most of it holds on every backend (integers past 64 bits, text that is not Unicode,
references to users or conversations that do not exist). The tests marked STRICT hold where the rule is
PostgreSQL's: SQLite stores text with NUL, reads a negative LIMIT as none and a negative
OFFSET as 0, compares ids as text (a non-UUID is simply not found, another spelling of a
UUID neither) and folds only ASCII letters in lower(). The in-memory store follows
PostgreSQL, the production backend, so a service test fails where production would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from chatsrv.domain.errors import Conflict, Invalid
from chatsrv.domain.model import ConversationType, Role, new_id, utcnow
from chatsrv.domain.ports import Store
from tests.contract.test_store import make_conversation, make_user, send

STRICT = pytest.mark.parametrize("backend", ["memory", "postgres"])
TOO_BIG = 2**63


@pytest.mark.parametrize("call", [
    lambda s, conv: s.list_messages(conv, limit=TOO_BIG),
    lambda s, conv: s.list_messages(conv, limit=10, offset=TOO_BIG),
    lambda s, conv: s.list_messages(conv, limit=10, before_seq=TOO_BIG),
    lambda s, conv: s.list_messages(conv, limit=10, after_seq=-TOO_BIG - 1),
    lambda s, conv: s.search_users("a", limit=TOO_BIG),
    lambda s, conv: s.list_users("", limit=TOO_BIG),
    lambda s, conv: s.revoked_sessions_since(utcnow(), limit=TOO_BIG),
], ids=["limit", "offset", "before_seq", "after_seq", "search limit", "list_users limit",
        "revoked limit"])
async def test_integers_past_64_bits_are_invalid(
        store: Store, call: Callable[[Store, str], Awaitable[object]]) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    with pytest.raises(Invalid):
        await call(store, conv)
    # in range, the same calls answer
    assert len(await store.list_messages(conv, limit=TOO_BIG - 1, before_seq=TOO_BIG - 1)) == 0


async def test_watermarks_past_64_bits_stop_at_the_last_message(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    await send(store, conv, a)
    _, after = await store.advance_watermarks(conv, b.id, delivered_to=TOO_BIG * 4,
                                              read_to=TOO_BIG)
    assert (after.delivered_seq, after.read_seq) == (1, 1)


async def test_members_must_exist(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    group = await make_conversation(store, a, b, group=True)
    with pytest.raises(Invalid):
        await store.add_members(group, [(new_id(), Role.MEMBER)], at=utcnow())
    with pytest.raises(Invalid):
        await store.add_members(new_id(), [(a.id, Role.MEMBER)], at=utcnow())
    assert sorted(await store.member_ids(group)) == sorted([a.id, b.id])
    cid = new_id()
    with pytest.raises(Invalid):  # nothing of it is stored
        await store.create_conversation(
            conversation_id=cid, type=ConversationType.GROUP, name="g", created_by=a.id,
            members=[(a.id, Role.ADMIN), (new_id(), Role.MEMBER)], direct_key=None,
            created_at=utcnow())
    assert await store.get_conversation(cid) is None
    assert cid not in await store.conversation_positions(a.id)
    with pytest.raises(Invalid):
        await store.create_conversation(
            conversation_id=new_id(), type=ConversationType.GROUP, name="g",
            created_by=new_id(), members=[], direct_key=None, created_at=utcnow())


async def test_sessions_and_tokens_belong_to_users_that_exist(store: Store) -> None:
    nobody, sid = new_id(), new_id()
    with pytest.raises(Invalid):
        await store.open_session(session_id=sid, user_id=nobody, token_hash=f"x-{sid}",
                                 expires_at=utcnow() + timedelta(days=1), created_at=utcnow())
    assert await store.get_session(sid) is None
    assert (await store.use_refresh_token(f"x-{sid}", now=utcnow())).grant is None
    with pytest.raises(Invalid):
        await store.add_refresh_token(token_hash=f"y-{sid}", user_id=nobody, family_id=sid,
                                      expires_at=utcnow() + timedelta(days=1))


@STRICT
async def test_text_with_nul_is_invalid(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    with pytest.raises(Invalid):
        await send(store, conv, a, "a\x00b")
    assert (await store.get_conversation(conv)).last_seq == 0  # type: ignore[union-attr]
    uid = new_id()
    with pytest.raises(Invalid):
        await store.create_user(user_id=uid, username=f"n\x00{uid[:8]}", email=f"{uid}@x",
                                display_name="n", password_hash="x", created_at=utcnow())
    assert await store.get_user(uid) is None
    with pytest.raises(Invalid):
        await store.search_users("a\x00", limit=5)


async def test_text_that_is_not_unicode_is_invalid(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    with pytest.raises(Invalid):
        await send(store, conv, a, "half a pair \ud800")


@STRICT
async def test_negative_limits_and_offsets_are_invalid(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    await send(store, conv, a)
    with pytest.raises(Invalid):
        await store.list_messages(conv, limit=-1)
    with pytest.raises(Invalid):
        await store.list_messages(conv, limit=5, offset=-1)
    with pytest.raises(Invalid):
        await store.search_users("", limit=-1)


@STRICT
async def test_ids_are_uuids_whatever_their_spelling(store: Store) -> None:
    a = await make_user(store)
    with pytest.raises(Invalid):
        await store.get_user("not-a-uuid")
    with pytest.raises(Invalid):
        await store.get_conversation("abc")
    got = await store.get_user(a.id.upper())
    assert got is not None and got.id == a.id


@STRICT
async def test_usernames_are_unique_beyond_ascii(store: Store) -> None:
    tag = new_id()[:8]
    await make_user(store, f"Ärger{tag}")
    with pytest.raises(Conflict) as exc:
        await make_user(store, f"ärger{tag}")
    assert exc.value.code == "username_taken"
    found = await store.find_login(f"ÄRGER{tag}")
    assert found is not None and found[0].username == f"Ärger{tag}"
