"""The push store (subscriptions, mutes, outbox) in memory, on SQLite and PostgreSQL: collapse, mutes
and mentions, leases that let exactly one sender hold a row, versions, retries."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import trio

from chatsrv.adapters.push.memory import MemoryPushStore
from chatsrv.adapters.storage.push import SqlPushStore
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.domain.model import User, new_id, utcnow
from chatsrv.domain.ports import Store
from chatsrv.domain.push import WEBHOOK, PushDraft, PushItem, Recipient, Settlement
from tests.contract.test_store import make_conversation, make_user

PushStore = SqlPushStore | MemoryPushStore


@pytest.fixture
def push(store: Store) -> PushStore:
    if isinstance(store, SqlStore):
        return SqlPushStore(store.db)
    return MemoryPushStore()


async def _subscribed(push: PushStore, user: User) -> str:
    sub = await push.save_subscription(user_id=user.id, endpoint=f"https://p.example/{new_id()}",
                                       p256dh="k", auth="a", now=utcnow())
    return sub.id


async def _enqueue(push: PushStore, conv: str, sender: User, body: str,
                   *recipients: Recipient, webhook: bool = False, delay: float = 0) -> int:
    now = utcnow()
    draft = PushDraft(conv, new_id(), sender.id, "Ann", body, recipients)
    return await push.enqueue([draft], webhook=webhook, now=now,
                              due_at=now + timedelta(seconds=delay))


async def claim_of(push: PushStore, *users: User, at: datetime | None = None
                   ) -> list[PushItem]:
    """Claim what is due, and keep this test's rows (PostgreSQL: the run's tests share a
    database)."""
    now = at or utcnow()
    ids = {u.id for u in users}
    got = await push.claim_due(now=now, lease_until=now + timedelta(seconds=30), limit=1000)
    return [i for i in got if i.user_id in ids]


async def test_messages_collapse_into_one_row_per_target(store: Store,
                                                         push: PushStore) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    sub = await _subscribed(push, b)
    for text in ("one", "two", "three"):
        assert await _enqueue(push, conv, a, text, Recipient(b.id, False), webhook=True) == 2
    items = await claim_of(push, b)
    assert sorted(i.target for i in items) == sorted([sub, WEBHOOK])
    assert {(i.count, i.body, i.version) for i in items} == {(3, "three", 3)}
    web = next(i for i in items if i.target == sub)
    assert web.subscription is not None and web.subscription.user_id == b.id


async def test_muted_members_get_only_mentions(store: Store, push: PushStore) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b, c, group=True)
    await _subscribed(push, b)
    await _subscribed(push, c)
    await push.set_mute(conv, b.id, None)
    await push.set_mute(conv, c.id, utcnow() - timedelta(seconds=1))  # over already
    assert await _enqueue(push, conv, a, "hi", Recipient(b.id, False),
                          Recipient(c.id, False)) == 1
    assert await push.pending(b.id) == 0 and await push.pending(c.id) == 1
    assert await _enqueue(push, conv, a, "@b", Recipient(b.id, True)) == 1
    items = await claim_of(push, b, c)
    assert {(i.user_id, i.mentioned) for i in items} == {(b.id, True), (c.id, False)}
    await push.clear_mute(conv, b.id)
    assert await push.mutes(b.id) == {}


async def test_a_lease_lets_one_sender_hold_a_row(store: Store, push: PushStore) -> None:
    # (PostgreSQL: the run's tests share a database; rows of others are claimed alongside)
    a = await make_user(store)
    users = [await make_user(store) for _ in range(12)]
    for u in users:
        conv = await make_conversation(store, a, u)
        await _subscribed(push, u)
        await _enqueue(push, conv, a, "x", Recipient(u.id, False))
    mine = {u.id for u in users}
    now = utcnow()
    held: list[str] = []

    async def sender() -> None:  # claims until nothing is left, as a node's sender does
        while got := await push.claim_due(now=now, lease_until=now + timedelta(seconds=30),
                                          limit=3):
            held.extend(i.user_id for i in got if i.user_id in mine)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(sender)
    assert sorted(held) == sorted(mine)  # every row once, none twice
    later = now + timedelta(seconds=31)  # the leases ended (their senders died)
    again = await push.claim_due(now=later, lease_until=later + timedelta(seconds=30),
                                 limit=1000)
    assert {i.user_id for i in again} >= mine


async def test_finish_keeps_a_row_that_changed_while_sent(store: Store,
                                                          push: PushStore) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    await _subscribed(push, b)
    await _enqueue(push, conv, a, "one", Recipient(b.id, False))
    [item] = await claim_of(push, b)
    await _enqueue(push, conv, a, "two", Recipient(b.id, False))  # while it is sent
    await push.settle([Settlement(item, "finish")])
    [again] = await claim_of(push, b)  # kept, and due at once
    assert (again.count, again.body) == (1, "two")  # only what came after the push
    await push.settle([Settlement(again, "finish")])
    assert await push.pending(b.id) == 0


async def test_retry_waits_and_a_gone_subscription_takes_its_rows(
        store: Store, push: PushStore) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    sub = await _subscribed(push, b)
    await _enqueue(push, conv, a, "one", Recipient(b.id, False))
    now = utcnow()
    [item] = await claim_of(push, b, at=now)
    due = now + timedelta(seconds=60)
    await push.settle([Settlement(item, "retry", 1, due)])
    early = await push.claim_due(now=now + timedelta(seconds=59),
                                 lease_until=now + timedelta(seconds=90), limit=1000)
    assert item.id not in {i.id for i in early}
    retried = await push.claim_due(now=due, lease_until=due + timedelta(seconds=30), limit=1000)
    assert [i.attempts for i in retried if i.id == item.id] == [1]
    [gone] = [i for i in retried if i.id == item.id]
    await push.settle([Settlement(gone, "gone")])  # the push service said 410
    assert await push.pending(b.id) == 0 and await push.list_subscriptions(b.id) == []
    assert await push.delete_subscription(sub) is False


async def test_an_endpoint_is_one_subscription(store: Store, push: PushStore) -> None:
    a, b = await make_user(store), await make_user(store)
    first = await push.save_subscription(user_id=a.id, endpoint="https://p.example/e1",
                                         p256dh="k1", auth="a1", now=utcnow())
    again = await push.save_subscription(user_id=b.id, endpoint="https://p.example/e1",
                                         p256dh="k2", auth="a2", now=utcnow())
    assert again.id == first.id and again.created_at == first.created_at
    assert await push.list_subscriptions(a.id) == []
    [mine] = await push.list_subscriptions(b.id)
    assert (mine.user_id, mine.p256dh) == (b.id, "k2")
    assert await push.delete_subscription(first.id, user_id=a.id) is False
    assert await push.delete_subscription(first.id, user_id=b.id) is True
