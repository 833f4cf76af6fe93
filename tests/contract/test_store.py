"""The storage contract: the same tests in memory, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
import trio_asyncio

from chatsrv.adapters.storage.migrate import migrate
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.domain.errors import Conflict, NotFound
from chatsrv.domain.model import (
    NO_ID,
    ConversationType,
    RefreshOutcome,
    Role,
    User,
    Watermarks,
    new_id,
    utcnow,
)
from chatsrv.domain.ports import Store
from tests.conftest import BACKENDS


async def make_user(store: Store, name: str | None = None) -> User:
    uid = new_id()
    name = name or f"u{uid[:8]}"
    return await store.create_user(user_id=uid, username=name, email=f"{name}@example.com",
                                   display_name=name, password_hash="x", created_at=utcnow())


async def make_conversation(store: Store, *users: User, group: bool = False) -> str:
    conv, created = await store.create_conversation(
        conversation_id=new_id(), type=ConversationType.GROUP if group else ConversationType.ONE_TO_ONE,
        name="g" if group else None, created_by=users[0].id,
        members=[(u.id, Role.ADMIN if i == 0 else Role.MEMBER) for i, u in enumerate(users)],
        direct_key=None if group else ":".join(sorted(u.id for u in users)),
        created_at=utcnow(),
    )
    assert created
    return conv.id


async def send(store: Store, conv: str, sender: User, text: str = "hi",
               client_msg_id: str | None = None):  # type: ignore[no-untyped-def]
    return await store.append_message(
        message_id=new_id(), conversation_id=conv, sender_id=sender.id, content=text,
        message_type="text", client_msg_id=client_msg_id, created_at=utcnow())


@pytest.mark.parametrize("backend", BACKENDS)  # a schema is the SQL adapters' own
async def test_migrations_are_idempotent(store: Store) -> None:
    assert isinstance(store, SqlStore)
    assert await migrate(store.db) == []


async def test_usernames_and_emails_are_unique_case_insensitively(store: Store) -> None:
    await make_user(store, "alice_x")
    with pytest.raises(Conflict) as exc:
        await make_user(store, "ALICE_X")
    assert exc.value.code in ("username_taken", "email_taken")  # both are (backends differ)

    async def register(username: str, email: str) -> None:
        await store.create_user(user_id=new_id(), username=username, email=email,
                                display_name=username, password_hash="x", created_at=utcnow())

    other = new_id()[:8]
    with pytest.raises(Conflict) as exc:
        await register("Alice_X", f"{other}@example.com")
    assert (exc.value.code, exc.value.details) == ("username_taken", {"field": "username"})
    with pytest.raises(Conflict) as exc:
        await register(f"u{other}", "ALICE_x@Example.COM")
    assert (exc.value.code, exc.value.details) == ("email_taken", {"field": "email"})
    assert await store.find_login(f"{other}@example.com") is None
    assert await store.find_login(f"u{other}") is None


async def test_find_login_by_email_or_username(store: Store) -> None:
    u = await make_user(store)
    by_email = await store.find_login(u.email.upper())
    by_name = await store.find_login(u.username)
    assert by_email and by_email[0].id == u.id
    assert by_name and by_name[0].id == u.id
    assert await store.find_login("nobody@example.com") is None


async def test_search_escapes_wildcards(store: Store) -> None:
    h = new_id()[:12]
    underscore = await make_user(store, f"a_{h}")
    await make_user(store, f"ab{h}")  # would match "a_…" if "_" were a LIKE wildcard
    assert [x.id for x in await store.search_users(f"a_{h}", limit=10)] == [underscore.id]
    assert await store.search_users(f"%{h}%zz", limit=10) == []


async def test_direct_conversation_is_one_per_pair_even_when_racing(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    key = ":".join(sorted((a.id, b.id)))
    results = []

    async def create(creator: User) -> None:
        conv, created = await store.create_conversation(
            conversation_id=new_id(), type=ConversationType.ONE_TO_ONE, name=None,
            created_by=creator.id, members=[(a.id, Role.MEMBER), (b.id, Role.MEMBER)],
            direct_key=key, created_at=utcnow())
        results.append((conv.id, created))

    async with trio.open_nursery() as n:
        for creator in (a, b, a, b):
            n.start_soon(create, creator)
    assert len({cid for cid, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_concurrent_sends_get_gap_free_unique_seqs(store: Store) -> None:
    users = [await make_user(store) for _ in range(5)]
    conv = await make_conversation(store, *users, group=True)
    seqs: list[int] = []

    async def sender(u: User) -> None:
        for _ in range(10):
            m, created = await send(store, conv, u)
            assert created
            seqs.append(m.seq)

    async with trio.open_nursery() as n:
        for u in users:
            n.start_soon(sender, u)
    assert sorted(seqs) == list(range(1, 51))
    page = await store.list_messages(conv, limit=100, after_seq=0)
    assert [m.seq for m in page] == list(range(1, 51))


async def test_client_msg_id_makes_sends_idempotent_even_concurrently(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    results = []

    async def attempt() -> None:
        results.append(await send(store, conv, a, "once", client_msg_id="c-1"))

    async with trio.open_nursery() as n:
        for _ in range(6):
            n.start_soon(attempt)
    assert len({m.id for m, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert (await store.get_conversation(conv)).last_seq == 1  # type: ignore[union-attr]


async def test_outsider_cannot_append(store: Store) -> None:
    a, b, outsider = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    with pytest.raises(NotFound):
        await send(store, conv, outsider)
    assert (await store.get_conversation(conv)).last_seq == 0  # type: ignore[union-attr]


async def test_watermarks_move_forward_only_and_never_past_last_seq(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    for _ in range(5):
        await send(store, conv, a)
    _, after = await store.advance_watermarks(conv, b.id, delivered_to=3, read_to=0)
    assert after == Watermarks(3, 0)
    _, after = await store.advance_watermarks(conv, b.id, delivered_to=1, read_to=2)
    assert after == Watermarks(3, 2)
    _, after = await store.advance_watermarks(conv, b.id, delivered_to=0, read_to=99)
    assert after == Watermarks(5, 5)
    marks = await store.watermarks(conv)
    assert marks[b.id] == Watermarks(5, 5)
    assert marks[a.id] == Watermarks(5, 5)  # the sender has read what they sent


async def test_list_conversations_has_last_message_and_unread(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    for i in range(3):
        await send(store, conv, a, f"m{i}")
    await store.advance_watermarks(conv, b.id, delivered_to=3, read_to=1)
    [summary] = await store.list_conversations(b.id)
    assert summary.unread == 2
    assert summary.last_message is not None and summary.last_message.content == "m2"
    [mine] = await store.list_conversations(a.id)
    assert mine.unread == 0


async def test_history_paging(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    for i in range(10):
        await send(store, conv, a, f"m{i}")
    newest = await store.list_messages(conv, limit=3)
    assert [m.seq for m in newest] == [10, 9, 8]
    assert [m.seq for m in await store.list_messages(conv, limit=3, offset=3)] == [7, 6, 5]
    assert [m.seq for m in await store.list_messages(conv, limit=2, before_seq=5)] == [4, 3]
    assert [m.seq for m in await store.list_messages(conv, limit=2, after_seq=8)] == [9, 10]


async def test_refresh_tokens_rotate_and_replay_revokes_the_session(store: Store) -> None:
    u = await make_user(store)
    later = utcnow() + timedelta(days=1)
    sid = new_id()
    await store.open_session(session_id=sid, user_id=u.id, token_hash="h1", expires_at=later,
                             created_at=utcnow())
    outcome = await store.use_refresh_token("h1", now=utcnow())
    assert outcome.grant is not None and outcome.grant.user_id == u.id
    assert outcome.grant.family_id == sid and outcome.replayed is None
    await store.add_refresh_token(token_hash="h2", user_id=u.id, family_id=sid,
                                  expires_at=later)
    replay = await store.use_refresh_token("h1", now=utcnow())
    assert replay.grant is None and replay.replayed == sid
    assert (await store.use_refresh_token("h2", now=utcnow())).grant is None  # revoked too
    info = await store.get_session(sid)
    assert info is not None and info.revoked_at is not None
    revoked = await store.revoked_sessions_since(utcnow() - timedelta(minutes=1), limit=10)
    assert sid in [s for s, _ in revoked]


async def test_of_concurrent_refreshes_exactly_one_wins(store: Store) -> None:
    u = await make_user(store)
    sid = new_id()
    await store.open_session(session_id=sid, user_id=u.id, token_hash="once",
                             expires_at=utcnow() + timedelta(days=1), created_at=utcnow())
    outcomes = []

    async def refresh() -> None:
        outcomes.append(await store.use_refresh_token("once", now=utcnow()))

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(refresh)
    assert sum(o.grant is not None for o in outcomes) == 1
    # the others were replays: the session is gone, so the winner's chain is dead too
    assert (await store.get_session(sid)).revoked_at is not None  # type: ignore[union-attr]


async def test_expired_refresh_token_is_refused(store: Store) -> None:
    u = await make_user(store)
    await store.open_session(session_id=new_id(), user_id=u.id, token_hash="old",
                             expires_at=utcnow() - timedelta(seconds=1), created_at=utcnow())
    outcome = await store.use_refresh_token("old", now=utcnow())
    assert outcome.grant is None and outcome.replayed is None


async def test_admin_flags_deactivation_and_search(store: Store) -> None:
    u = await make_user(store)
    await store.set_admin(u.id, True)
    assert (await store.find_user(u.username.upper())).is_admin  # type: ignore[union-attr]
    assert (await store.find_user(u.id)).id == u.id  # type: ignore[union-attr]
    await store.set_deactivated(u.id, utcnow())
    assert await store.search_users(u.username, limit=5) == []
    listed = await store.list_users(u.username, limit=5)
    assert [x.id for x in listed] == [u.id] and not listed[0].active
    await store.set_deactivated(u.id, None)
    assert [x.id for x in await store.search_users(u.username, limit=5)] == [u.id]


async def test_members_contacts_and_positions(store: Store) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b, c, group=True)
    await send(store, conv, b)
    assert set(await store.contacts(a.id)) == {b.id, c.id}
    positions = await store.conversation_positions(c.id)
    assert positions[conv][0] == 1 and positions[conv][1] == Watermarks(0, 0)
    assert await store.remove_member(conv, c.id) == (True, None)
    assert set(await store.member_ids(conv)) == {a.id, b.id}
    assert await store.add_members(conv, [(c.id, Role.MEMBER), (a.id, Role.MEMBER)],
                                   at=utcnow()) == [c.id]
    # a member who joins starts at the end: nothing said before is theirs to tick
    assert (await store.conversation_positions(c.id))[conv] == (1, Watermarks(1, 1))


async def test_the_last_admin_leaving_makes_the_oldest_member_admin(store: Store) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b, c, group=True)  # a is the only admin
    left, heir = await store.remove_member(conv, a.id)
    assert left and heir in (b.id, c.id)
    roles = {m.user_id: m.role for m in (await store.get_conversation(conv)).members}  # type: ignore[union-attr]
    assert roles[heir] is Role.ADMIN
    assert await store.remove_member(conv, a.id) == (False, None)


async def test_arrivals_of_several_users_in_one_call(store: Store) -> None:
    a, b, c, lone = (await make_user(store), await make_user(store), await make_user(store),
                     await make_user(store))
    group = await make_conversation(store, a, b, c, group=True)
    direct = await make_conversation(store, a, b)
    await send(store, group, b)
    await send(store, group, b)
    await store.advance_watermarks(group, a.id, delivered_to=1, read_to=1)
    got = await store.arrivals([a.id, c.id, lone.id])
    assert set(got) == {a.id, c.id, lone.id}
    assert got[a.id].positions == {group: (2, Watermarks(1, 1)), direct: (0, Watermarks(0, 0))}
    assert sorted(got[a.id].contacts) == sorted([b.id, c.id])
    assert got[c.id].positions == {group: (2, Watermarks(0, 0))}
    assert sorted(got[c.id].contacts) == sorted([a.id, b.id])
    assert got[lone.id].positions == {} and got[lone.id].contacts == []
    # the same answers as the one-user lookups
    assert got[a.id].positions == await store.conversation_positions(a.id)
    assert sorted(got[a.id].contacts) == sorted(await store.contacts(a.id))


async def test_last_seen_persists(store: Store) -> None:
    u = await make_user(store)
    at = utcnow()
    await store.set_last_seen(u.id, at)
    got = await store.get_user(u.id)
    assert got is not None and got.last_seen is not None
    assert abs((got.last_seen - at).total_seconds()) < 0.01


async def test_group_commit_batch_has_an_outcome_per_draft(store: Store) -> None:
    from chatsrv.domain.model import Message

    a, b, c, outsider = [await make_user(store) for _ in range(4)]
    ab = await make_conversation(store, a, b)
    bc = await make_conversation(store, b, c)
    earlier, _ = await send(store, ab, a, "earlier", client_msg_id="k-old")

    def draft(conv: str, sender: User, text: str, cmid: str | None = None) -> Message:
        return Message(id=new_id(), conversation_id=conv, seq=0, sender_id=sender.id,
                       content=text, message_type="text", client_msg_id=cmid,
                       created_at=utcnow())

    drafts = [draft(ab, a, "one"), draft(bc, c, "x"), draft(ab, outsider, "intruder"),
              draft(ab, b, "two", "k-new"), draft(ab, a, "dup", "k-old"), draft(bc, b, "y")]
    outcomes = await store.append_messages(drafts)
    assert [(o[0].content, o[0].seq, o[1]) if isinstance(o, tuple) else "nf" for o in outcomes] == [
        ("one", 2, True), ("x", 1, True), "nf", ("two", 3, True), ("earlier", 1, False),
        ("y", 2, True)]
    assert outcomes[4][0].id == earlier.id  # type: ignore[index]
    marks = await store.watermarks(ab)
    assert marks[a.id].read_seq == 2 and marks[b.id].read_seq == 3


async def test_group_commit_same_client_id_twice_in_one_batch(store: Store) -> None:
    from chatsrv.domain.model import Message

    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    drafts = [Message(id=new_id(), conversation_id=conv, seq=0, sender_id=a.id, content="same",
                      message_type="text", client_msg_id="twice", created_at=utcnow())
              for _ in range(2)]
    first, second = await store.append_messages(drafts)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert first[0].id == second[0].id and [first[1], second[1]] == [True, False]
    assert (await store.get_conversation(conv)).last_seq == 1  # type: ignore[union-attr]


async def test_get_users_leaves_unknown_ids_out(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    got = await store.get_users([a.id, new_id(), b.id, a.id])
    assert sorted(u.id for u in got) == sorted([a.id, b.id])
    assert await store.get_users([new_id()]) == []
    assert await store.get_users([]) == []


async def test_arrivals_of_nobody_and_of_unknown_users(store: Store) -> None:
    assert await store.arrivals([]) == {}
    stranger = new_id()
    got = await store.arrivals([stranger])
    assert got[stranger].positions == {} and got[stranger].contacts == []


async def test_list_conversations_most_recent_activity_first(store: Store) -> None:
    a, b, c, d = [await make_user(store) for _ in range(4)]
    t0 = utcnow() - timedelta(hours=1)

    async def conv(*users: User, at: timedelta) -> str:
        made, _ = await store.create_conversation(
            conversation_id=new_id(), type=ConversationType.GROUP, name="g",
            created_by=users[0].id, members=[(u.id, Role.MEMBER) for u in users],
            direct_key=None, created_at=t0 + at)
        return made.id

    async def say(conversation_id: str, at: timedelta) -> None:
        await store.append_message(
            message_id=new_id(), conversation_id=conversation_id, sender_id=a.id,
            content="hi", message_type="text", client_msg_id=None, created_at=t0 + at)

    quiet = await conv(a, b, at=timedelta(minutes=0))
    talked_long_ago = await conv(a, c, at=timedelta(minutes=1))
    await say(talked_long_ago, timedelta(minutes=2))
    new_and_silent = await conv(a, d, at=timedelta(minutes=3))
    talked_last = await conv(a, b, c, at=timedelta(minutes=0, seconds=30))
    await say(talked_last, timedelta(minutes=4))
    summaries = await store.list_conversations(a.id)
    assert [s.conversation.id for s in summaries] == [
        talked_last, new_and_silent, talked_long_ago, quiet]
    assert {m.user_id for m in summaries[0].conversation.members} == {a.id, b.id, c.id}
    assert summaries[1].last_message is None
    assert [s.conversation.id for s in await store.list_conversations(d.id)] == [new_and_silent]


async def test_get_message_and_history_edges(store: Store) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    sent = [(await send(store, conv, a, f"m{i}"))[0] for i in range(3)]
    assert await store.get_message(sent[1].id) == sent[1]
    assert await store.get_message(new_id()) is None
    assert await store.list_messages(new_id(), limit=10) == []
    assert await store.list_messages(conv, limit=0) == []
    assert await store.list_messages(conv, limit=10, offset=3) == []
    assert await store.list_messages(conv, limit=10, before_seq=1) == []
    assert await store.list_messages(conv, limit=10, after_seq=3) == []
    # a cursor wins over offset; after_seq over before_seq
    assert [m.seq for m in await store.list_messages(conv, limit=10, offset=2,
                                                     before_seq=99)] == [3, 2, 1]
    assert [m.seq for m in await store.list_messages(conv, limit=10, before_seq=3,
                                                     after_seq=1)] == [2, 3]
    assert [m.content for m in await store.list_messages(conv, limit=10, after_seq=0)] == [
        "m0", "m1", "m2"]


async def test_a_repeated_client_msg_id_returns_the_stored_message_in_any_conversation(
        store: Store) -> None:
    # (sender, client_msg_id) is unique per sender, not per conversation
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab, ac = await make_conversation(store, a, b), await make_conversation(store, a, c)
    first, created = await send(store, ab, a, "first", client_msg_id="k")
    again, created_again = await send(store, ac, a, "second", client_msg_id="k")
    assert created and not created_again
    assert again == first and again.conversation_id == ab
    assert (await store.get_conversation(ac)).last_seq == 0  # type: ignore[union-attr]


async def test_watermarks_of_outsiders_and_of_all_my_conversations(store: Store) -> None:
    a, b, c, lone = [await make_user(store) for _ in range(4)]
    direct = await make_conversation(store, a, b)
    group = await make_conversation(store, a, b, c, group=True)
    await send(store, group, b)
    await send(store, group, b)
    await store.advance_watermarks(group, a.id, delivered_to=2, read_to=1)
    with pytest.raises(NotFound):
        await store.advance_watermarks(direct, c.id, delivered_to=1, read_to=1)
    with pytest.raises(NotFound):
        await store.advance_watermarks(new_id(), a.id, delivered_to=1, read_to=1)
    assert await store.watermarks_of_my_conversations(a.id) == {
        direct: {a.id: Watermarks(0, 0), b.id: Watermarks(0, 0)},
        group: {a.id: Watermarks(2, 1), b.id: Watermarks(2, 2), c.id: Watermarks(0, 0)},
    }
    assert await store.watermarks_of_my_conversations(lone.id) == {}
    assert await store.watermarks(new_id()) == {}


async def test_sessions_logout_revocation_and_live_sessions(store: Store) -> None:
    u = await make_user(store)
    later = utcnow() + timedelta(days=1)
    tag = new_id()
    s1, s2, s3 = new_id(), new_id(), new_id()
    for sid, token in ((s1, "t1"), (s2, "t2"), (s3, "t3")):
        await store.open_session(session_id=sid, user_id=u.id, token_hash=f"{token}-{tag}",
                                 expires_at=later, created_at=utcnow())
    assert sorted(await store.live_sessions(u.id)) == sorted([s1, s2, s3])
    # logout: the session of the refresh token; its tokens are dead, and not a replay
    assert await store.revoke_by_refresh_token(f"t1-{tag}", at=utcnow(),
                                               reason="logout") == s1
    assert await store.use_refresh_token(f"t1-{tag}", now=utcnow()) == RefreshOutcome(None)
    assert await store.revoke_by_refresh_token(f"none-{tag}", at=utcnow(),
                                               reason="logout") is None
    # revoke_sessions names those that were live until now
    at = utcnow()
    assert await store.revoke_sessions([s1, s2, new_id()], at=at, reason="password") == [s2]
    assert await store.revoke_sessions([s2], at=utcnow(), reason="password") == []
    assert await store.live_sessions(u.id) == [s3]
    assert (await store.use_refresh_token(f"t2-{tag}", now=utcnow())).grant is None
    info = await store.get_session(s2)
    assert info is not None and info.revoked_at == at  # the first revocation stands
    assert await store.get_session(new_id()) is None
    assert await store.use_refresh_token(f"unknown-{tag}", now=utcnow()) == RefreshOutcome(None)


async def test_revoked_sessions_since_oldest_first_from_a_point(store: Store) -> None:
    u = await make_user(store)
    t0 = utcnow() + timedelta(days=3650)  # after every other test's revocations
    sids = [new_id() for _ in range(3)]
    for sid in sids:
        await store.open_session(session_id=sid, user_id=u.id, token_hash=f"r-{sid}",
                                 expires_at=t0, created_at=utcnow())
    for i, sid in reversed(list(enumerate(sids))):  # the order of revoking is not the order
        await store.revoke_sessions([sid], at=t0 + timedelta(seconds=i), reason="test")
    since = t0 + timedelta(seconds=1)
    assert await store.revoked_sessions_since(since, limit=10) == [
        (sids[1], t0 + timedelta(seconds=1)), (sids[2], t0 + timedelta(seconds=2))]
    assert await store.revoked_sessions_since(since, limit=1) == [
        (sids[1], t0 + timedelta(seconds=1))]


async def test_sessions_revoked_together_are_paged_by_id(store: Store) -> None:
    """A password change revokes many sessions at one instant: paging must not loop."""
    u = await make_user(store)
    t0 = utcnow() + timedelta(days=3660)  # after every other test's revocations
    sids = sorted(new_id() for _ in range(5))
    for sid in sids:
        await store.open_session(session_id=sid, user_id=u.id, token_hash=f"t-{sid}",
                                 expires_at=t0, created_at=utcnow())
    await store.revoke_sessions(sids, at=t0, reason="password_changed")
    seen: list[str] = []
    since, after = t0, NO_ID
    for _ in range(5):
        page = await store.revoked_sessions_since(since, after_id=after, limit=2)
        seen += [sid for sid, _ in page]
        if len(page) < 2:
            break
        after, since = page[-1]
    assert seen == sids


async def test_session_info_follows_the_account(store: Store) -> None:
    u = await make_user(store)
    sid = new_id()
    await store.open_session(session_id=sid, user_id=u.id, token_hash=f"i-{sid}",
                             expires_at=utcnow() + timedelta(days=1), created_at=utcnow())
    info = await store.get_session(sid)
    assert info is not None and info.user_id == u.id and info.user_active
    assert not info.is_admin and info.revoked_at is None
    await store.set_admin(u.id, True)
    await store.set_deactivated(u.id, utcnow())
    info = await store.get_session(sid)
    assert info is not None and info.is_admin and not info.user_active


async def test_set_password_changes_what_login_finds(store: Store) -> None:
    u = await make_user(store)
    await store.set_password(u.id, "new-hash")
    found = await store.find_login(u.email)
    assert found is not None and found[1] == "new-hash"


async def test_find_user_by_email_and_list_users_by_username(store: Store) -> None:
    tag = new_id()[:8]
    names = [f"{tag}c", f"{tag}a", f"{tag}b"]
    users = {n: await make_user(store, n) for n in names}
    assert (await store.find_user(f"{tag}A@EXAMPLE.COM")).id == users[f"{tag}a"].id  # type: ignore[union-attr]
    assert await store.find_user(f"nobody-{tag}") is None
    assert await store.find_user(new_id()) is None
    listed = await store.list_users(tag, limit=10)
    assert [u.username for u in listed] == sorted(names)
    assert [u.username for u in await store.list_users(tag, limit=2)] == sorted(names)[:2]
    assert [u.username for u in await store.search_users(tag, limit=10)] == sorted(names)
    everyone = await store.list_users("", limit=10_000)
    assert {u.id for u in users.values()} <= {u.id for u in everyone}


async def test_the_store_answers_ping(store: Store) -> None:
    await store.ping()


async def test_letters_beyond_ascii_are_one_name_in_any_case(store: Store) -> None:
    name = f"Ärger{new_id()[:6]}"
    await store.create_user(user_id=new_id(), username=name, email=f"{name}@example.com",
                            display_name="Ä", password_hash="x", created_at=utcnow())
    with pytest.raises(Conflict):
        await store.create_user(user_id=new_id(), username=name.lower(),
                                email=f"other{name}@example.com", display_name="ä",
                                password_hash="x", created_at=utcnow())
    assert [u.username for u in await store.search_users(name.lower(), limit=5)] == [name]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_operations_leave_no_timers_behind_on_postgres(store: Store) -> None:
    """asyncpg re-armed a 300 s idle-connection timer on every pool release; trio-asyncio
    keeps cancelled timers until they are due, so each operation left one behind for five
    minutes (the soak's RSS climbed ~100 B per message). The pool is made without it."""
    a, b = await make_user(store), await make_user(store)
    cid = await make_conversation(store, a, b)
    for _ in range(50):
        await store.list_messages(cid, limit=1)
        await store.advance_watermarks(cid, a.id, delivered_to=0, read_to=0)
    loop = trio_asyncio.current_loop.get()
    idle_timers = [t for t in loop._timers  # trio-asyncio's heap: what grew
                   if "inactive" in getattr(t._callback, "__name__", "")]
    assert idle_timers == []
