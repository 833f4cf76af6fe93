"""services/push.py on the in-memory stores and the in-process router, on the autojump
clock: the delay, retries on the back-off schedule (and Retry-After), giving up, gone
subscriptions, the bounded queue. The push service is a scripted transport (the HTTP side
is tested end to end in tests/e2e/test_push.py)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from chatsrv.adapters.memory import LocalDirectory, LocalRouter
from chatsrv.adapters.push.http import Outcome
from chatsrv.adapters.push.memory import MemoryPushStore
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.model import Message, User, new_id
from chatsrv.domain.push import PushSubscription
from chatsrv.services.membership import MembershipCache
from chatsrv.services.push import PushService
from tests.contract.test_store import make_conversation, make_user

BASE = datetime(2026, 1, 1, tzinfo=UTC)
P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"


def trio_now() -> datetime:
    return BASE + timedelta(seconds=trio.current_time())


@dataclass
class Scripted:
    """Answers from a script (default: sent); records when each push was attempted."""

    answers: deque[Outcome] = field(default_factory=deque)
    calls: list[tuple[float, dict[str, object]]] = field(default_factory=list)

    async def web_push(self, sub: PushSubscription, payload: dict[str, object], *,
                       topic: str, ttl: int, urgency: str) -> Outcome:
        self.calls.append((trio.current_time(), payload))
        await trio.lowlevel.checkpoint()
        return self.answers.popleft() if self.answers else Outcome("sent", 201)

    async def webhook(self, url: str, payload: dict[str, object]) -> Outcome:
        return await self.web_push(None, payload, topic="", ttl=0, urgency="")  # type: ignore[arg-type]


@dataclass
class PushWorld:
    service: PushService
    store: MemoryStore
    outbox: MemoryPushStore
    transport: Scripted
    alice: User
    bob: User
    conv: str

    def message(self, content: str) -> Message:
        return Message(id=new_id(), conversation_id=self.conv, seq=1, sender_id=self.alice.id,
                       content=content, message_type="text", client_msg_id=None,
                       created_at=trio_now())


def _service(store: MemoryStore, outbox: MemoryPushStore, transport: Scripted,
             **changes: Any) -> PushService:
    options: dict[str, Any] = dict(
        public_key="k", delay=10.0, redact=False, webhook_url=None, allow_insecure=False,
        ttl=60, http_timeout=5.0, max_attempts=5, retry_delay=2.0, retry_max_delay=60.0,
        poll_interval=1.0, concurrency=4, queue_size=16, max_subscriptions=5, clock=trio_now)
    options.update(changes)
    return PushService(outbox, store, MembershipCache(store, ttl=5.0), LocalRouter(),
                       LocalDirectory(), transport, **options)


@pytest.fixture
async def world(nursery: trio.Nursery, request: pytest.FixtureRequest
                ) -> AsyncIterator[PushWorld]:
    store, outbox, transport = MemoryStore(), MemoryPushStore(), Scripted()
    changes = getattr(request, "param", {})
    service = _service(store, outbox, transport, **changes)
    alice, bob = await make_user(store), await make_user(store)
    conv = await make_conversation(store, alice, bob)
    await service.subscribe(bob.id, endpoint="https://push.example/bob", p256dh=P256DH,
                            auth="BTBZMqHH6r4Tts7J_aSIgg")
    await nursery.start(service.run_enqueue)
    await nursery.start(service.run_sender)
    yield PushWorld(service, store, outbox, transport, alice, bob, conv)
    nursery.cancel_scope.cancel()


async def settled(w: PushWorld, messages: int = 1) -> None:
    """Until the messages went past the outbox writer and the outbox is empty again (on
    the autojump clock: polling costs no real time)."""
    while w.service.counts["messages"] < messages or await w.outbox.pending():  # noqa: ASYNC110
        await trio.sleep(0.5)


async def test_a_push_waits_for_the_delay(world: PushWorld,
                                          autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    world.service.notify_nowait(world.message("hi"))
    await settled(world)
    [(at, payload)] = world.transport.calls
    assert 10.0 <= at - start < 11.5  # PUSH_DELAY, then the next poll at the latest
    assert payload["body"] == "hi" and payload["count"] == 1


async def test_retries_follow_the_back_off_then_succeed(
        world: PushWorld, autojump_clock: trio.testing.MockClock) -> None:
    world.transport.answers.extend([Outcome("retry", 500)] * 3)
    world.service.notify_nowait(world.message("hi"))
    await settled(world)
    times = [at for at, _ in world.transport.calls]
    assert len(times) == 4
    for n, (a, b) in enumerate(itertools.pairwise(times), start=1):
        base = 2.0 * 2 ** (n - 1)  # PUSH_RETRY_DELAY doubling, jittered 0.5-1.5x
        assert 0.5 * base <= b - a < 1.5 * base + 1.0  # (+ one poll interval)
    assert world.service.counts["sent"] == 1 and world.service.counts["retry"] == 3


async def test_retry_after_is_honoured(world: PushWorld,
                                       autojump_clock: trio.testing.MockClock) -> None:
    world.transport.answers.append(Outcome("retry", 429, retry_after=30.0))
    world.service.notify_nowait(world.message("hi"))
    await settled(world)
    first, second = (at for at, _ in world.transport.calls)
    assert 30.0 <= second - first < 31.5


@pytest.mark.parametrize("world", [{"max_attempts": 3}], indirect=True)
async def test_a_push_is_given_up_after_max_attempts(
        world: PushWorld, autojump_clock: trio.testing.MockClock) -> None:
    world.transport.answers.extend([Outcome("retry", 503)] * 10)
    world.service.notify_nowait(world.message("hi"))
    await settled(world)
    assert len(world.transport.calls) == 3 and world.service.counts["given_up"] == 1


async def test_gone_deletes_the_subscription(world: PushWorld,
                                             autojump_clock: trio.testing.MockClock) -> None:
    world.transport.answers.append(Outcome("gone", 410))
    world.service.notify_nowait(world.message("hi"))
    await settled(world)
    assert await world.service.subscriptions(world.bob.id) == []


async def test_a_member_online_at_commit_is_not_queued(
        world: PushWorld, autojump_clock: trio.testing.MockClock) -> None:
    @dataclass
    class Socket:
        user_id: str
        connection_id: str = "c1"

        def send_nowait(self, event: object) -> None:
            pass

    router = world.service._router  # the service's own LocalRouter
    router.attach(Socket(world.bob.id))  # type: ignore[arg-type]
    world.service.notify_nowait(world.message("hi"))
    await trio.sleep(20)
    assert world.transport.calls == [] and await world.outbox.pending() == 0
    assert world.service.counts["messages"] == 1


async def test_the_queue_is_bounded_and_counts_what_it_drops(
        autojump_clock: trio.testing.MockClock) -> None:
    store, outbox = MemoryStore(), MemoryPushStore()
    service = _service(store, outbox, Scripted(), queue_size=2)
    alice = await make_user(store)
    for _ in range(5):  # nobody drains it: the enqueue task is not running
        service.notify_nowait(Message(id=new_id(), conversation_id=new_id(), seq=1,
                                      sender_id=alice.id, content="x", message_type="text",
                                      client_msg_id=None, created_at=trio_now()))
    assert service.counts["dropped"] == 3
