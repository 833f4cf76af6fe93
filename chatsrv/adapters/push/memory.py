"""The push store in memory: the same contract as adapters/storage/push.py (checked by
tests/contract/test_push_store.py), for unit tests of services/push.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from chatsrv.domain.model import new_id
from chatsrv.domain.push import WEBHOOK, PushDraft, PushItem, PushSubscription, Settlement


@dataclass
class _Row:
    item: PushItem
    created_at: datetime
    due_at: datetime
    lease_until: datetime | None = None


class MemoryPushStore:
    def __init__(self) -> None:
        self._subs: dict[str, PushSubscription] = {}
        self._mutes: dict[tuple[str, str], datetime | None] = {}
        self._rows: dict[tuple[str, str, str], _Row] = {}  # (user, conversation, target)

    async def save_subscription(self, *, user_id: str, endpoint: str, p256dh: str, auth: str,
                                now: datetime, session_id: str | None = None
                                ) -> PushSubscription:
        """(Sessions are not known here: every subscription counts as live.)"""
        old = next((s for s in self._subs.values() if s.endpoint == endpoint), None)
        sub = PushSubscription(old.id if old else new_id(), user_id, endpoint, p256dh, auth,
                               old.created_at if old else now)
        self._subs[sub.id] = sub
        return sub

    async def list_subscriptions(self, user_id: str) -> list[PushSubscription]:
        return sorted((s for s in self._subs.values() if s.user_id == user_id),
                      key=lambda s: (s.created_at, s.id))

    async def delete_subscription(self, subscription_id: str, *,
                                  user_id: str | None = None) -> bool:
        sub = self._subs.get(subscription_id)
        if sub is None or (user_id is not None and sub.user_id != user_id):
            return False
        del self._subs[subscription_id]
        for key in [k for k in self._rows if k[2] == subscription_id]:
            del self._rows[key]
        return True

    async def set_mute(self, conversation_id: str, user_id: str,
                       until: datetime | None) -> None:
        self._mutes[(conversation_id, user_id)] = until

    async def clear_mute(self, conversation_id: str, user_id: str) -> None:
        self._mutes.pop((conversation_id, user_id), None)

    async def mutes(self, user_id: str) -> dict[str, datetime | None]:
        return {c: u for (c, uid), u in self._mutes.items() if uid == user_id}

    async def enqueue(self, drafts: Sequence[PushDraft], *, webhook: bool, now: datetime,
                      due_at: datetime) -> int:
        written = 0
        for d in drafts:
            for r in d.recipients:
                if (d.conversation_id, r.user_id) in self._mutes and not r.mentioned:
                    until = self._mutes[(d.conversation_id, r.user_id)]
                    if until is None or until > now:
                        continue
                targets = [s.id for s in self._subs.values() if s.user_id == r.user_id]
                for target in ([WEBHOOK] if webhook else []) + targets:
                    self._fold(d, r.user_id, r.mentioned, target, now, due_at)
                    written += 1
        return written

    def _fold(self, d: PushDraft, user_id: str, mentioned: bool, target: str, now: datetime,
              due_at: datetime) -> None:
        key = (user_id, d.conversation_id, target)
        row = self._rows.get(key)
        if row is None:
            self._rows[key] = _Row(PushItem(
                id=new_id(), user_id=user_id, conversation_id=d.conversation_id, target=target,
                message_id=d.message_id, sender_id=d.sender_id, sender_name=d.sender_name,
                body=d.body, mentioned=mentioned, count=1, version=1, attempts=0, lease=""),
                now, due_at)
            return
        row.item = dataclasses.replace(
            row.item, message_id=d.message_id, sender_id=d.sender_id,
            sender_name=d.sender_name, body=d.body, count=row.item.count + 1,
            version=row.item.version + 1, mentioned=row.item.mentioned or mentioned)

    async def claim_due(self, *, now: datetime, lease_until: datetime,
                        limit: int) -> list[PushItem]:
        lease = new_id()
        due = sorted((r for r in self._rows.values() if r.due_at <= now and
                      (r.lease_until is None or r.lease_until < now)), key=lambda r: r.due_at)
        out = []
        for row in due[:limit]:
            row.item = dataclasses.replace(row.item, lease=lease)
            row.lease_until = lease_until
            out.append(dataclasses.replace(row.item, subscription=self._subs.get(row.item.target)))
        return out

    def _held(self, item: PushItem) -> tuple[tuple[str, str, str], _Row] | None:
        for key, row in self._rows.items():
            if row.item.id == item.id and row.item.lease == item.lease:
                return key, row
        return None

    async def settle(self, outcomes: Sequence[Settlement]) -> None:
        for o in outcomes:
            held = self._held(o.item)
            if held is None:
                continue
            key, row = held
            if o.action == "finish" and row.item.version != o.item.version:
                row.item = dataclasses.replace(row.item, lease="", attempts=0,
                                               count=row.item.count - o.item.count)
                row.lease_until = None
            elif o.action == "retry" and o.due_at is not None:
                row.item = dataclasses.replace(row.item, lease="", attempts=o.attempts)
                row.lease_until, row.due_at = None, o.due_at
            elif o.action == "gone" and o.item.subscription is not None:
                await self.delete_subscription(o.item.target)
            else:
                del self._rows[key]

    async def next_due(self) -> datetime | None:
        times = [r.due_at if r.lease_until is None else r.lease_until
                 for r in self._rows.values()]
        return min(times, default=None)

    async def pending(self, user_id: str | None = None) -> int:
        return sum(1 for k in self._rows if user_id is None or k[0] == user_id)
