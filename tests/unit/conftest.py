"""The in-memory node the service tests run on: the memory store, the in-process router,
the real services, the group committer and presence running in a nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from chatsrv.adapters.memory import LOCAL_INSTANCE, LocalDirectory, LocalRouter, NoBus
from chatsrv.adapters.storage.memory.calls import MemoryCallLog
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory_changes import MemoryChanges
from chatsrv.domain.model import ConversationType, Device, Role, User, new_id, utcnow
from chatsrv.metrics import Metrics
from chatsrv.protocol import frames as f
from chatsrv.services.calls import CallService
from chatsrv.services.changes import ChangeService
from chatsrv.services.commit import GroupCommitter
from chatsrv.services.membership import MembershipCache
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService

RING = 45.0
GRACE = 2.0


class Inbox:
    """A connection as the router sees it (the Subscriber port), keeping what it is sent."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.connection_id = new_id()
        self.frames: list[f.Frame] = []

    def send_nowait(self, event: f.Frame) -> None:
        self.frames.append(event)

    def of(self, type_: str) -> list[Any]:
        return [x.payload for x in self.frames if x.type == type_]

    @property
    def device(self) -> Device:
        return Device(self.user_id, self.connection_id)


@dataclass
class World:
    store: MemoryStore
    router: LocalRouter
    messaging: MessagingService
    presence: PresenceService
    calls: CallService
    commits: GroupCommitter
    history: MemoryCallLog
    nursery: trio.Nursery
    changes: ChangeService  # message changes (issue 14)

    async def user(self) -> User:
        name = f"u{new_id()[:8]}"
        return await self.store.create_user(user_id=new_id(), username=name,
                                            email=f"{name}@example.com", display_name=name,
                                            password_hash="x", created_at=utcnow())

    async def conversation(self, *users: User) -> str:
        group = len(users) > 2
        conv, _ = await self.store.create_conversation(
            conversation_id=new_id(),
            type=ConversationType.GROUP if group else ConversationType.ONE_TO_ONE,
            name="g" if group else None, created_by=users[0].id,
            members=[(u.id, Role.ADMIN if i == 0 else Role.MEMBER)
                     for i, u in enumerate(users)],
            direct_key=None if group else ":".join(sorted(u.id for u in users)),
            created_at=utcnow())
        return conv.id

    def connect(self, user: User) -> Inbox:
        inbox = Inbox(user.id)
        self.router.attach(inbox)
        return inbox


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    router = LocalRouter()
    directory = LocalDirectory()
    members = MembershipCache(store, ttl=5.0)  # type: ignore[arg-type]
    commits = GroupCommitter(store, Metrics(), max_batch=64, queue_size=256, writers=2)  # type: ignore[arg-type]
    changes = ChangeService(store, MemoryChanges(store), router, members,  # type: ignore[arg-type]
                            max_content_chars=4000, edit_window=0, page_size=200)
    messaging = MessagingService(store, router, members, commits,  # type: ignore[arg-type]
                                 max_content_chars=4000, history_max_limit=100,
                                 history_default_limit=50, sync_page_size=200,
                                 changes=changes)
    presence = PresenceService(store, router, directory, grace=GRACE,  # type: ignore[arg-type]
                               cleanup_deadline=1.0)
    history = MemoryCallLog(store)
    _, signals = trio.open_memory_channel[Any](16)
    calls = CallService(store, history, router, directory, NoBus(), signals,  # type: ignore[arg-type]
                        instance=LOCAL_INSTANCE, ring_timeout=RING,
                        stun_urls=(), turn_urls=(), turn_secret="", turn_ttl=60,
                        record_deadline=1.0)
    async with trio.open_nursery() as nursery:
        for lane in range(commits.lanes):
            await nursery.start(commits.run_lane, lane, messaging.announce)
        await nursery.start(presence.run)
        await nursery.start(calls.run)
        yield World(store, router, messaging, presence, calls, commits, history, nursery,
                    changes)
        nursery.cancel_scope.cancel()
