"""Push subscriptions, the push outbox and conversation mutes over SQL (PostgreSQL and
SQLite alike): the PushStore port.

The outbox is claimed by lease: `claim_due` stamps due rows with a fresh lease token and a
lease end in one UPDATE … RETURNING (PostgreSQL skips rows another node has locked), so of
several nodes exactly one sends each row; a node that dies mid-send leaves a lease that
expires and the row becomes due again (sent at least once). Finishing a row checks its
version: a message folded in while it was being sent keeps the row for one more push.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, Row, exec_, one, rows, val
from chatsrv.adapters.storage.rows import opt_ts, ts
from chatsrv.domain.model import new_id
from chatsrv.domain.push import WEBHOOK, PushDraft, PushItem, PushSubscription, Settlement

SUB_COLS = "id, user_id, endpoint, p256dh, auth, created_at"
SAVE_SUBSCRIPTION = f"""INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth,
                                session_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $7, $6, $6)
ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id, p256dh = excluded.p256dh,
    auth = excluded.auth, session_id = excluded.session_id, updated_at = excluded.updated_at
RETURNING {SUB_COLS}"""
MY_SUBSCRIPTIONS = f"""SELECT {SUB_COLS} FROM push_subscriptions WHERE user_id = $1
ORDER BY created_at, id"""
DELETE_MY_SUBSCRIPTION = "DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2"
DELETE_SUBSCRIPTION = "DELETE FROM push_subscriptions WHERE id = $1"
DELETE_TARGET = "DELETE FROM push_outbox WHERE target = $1"
# the subscriptions of live sessions only (a device signed out gets no more pushes)
_LIVE = """SELECT s.id, s.user_id FROM push_subscriptions s
LEFT JOIN sessions x ON x.id = s.session_id
WHERE (s.session_id IS NULL OR x.revoked_at IS NULL) AND """
SUBSCRIBED_PG = _LIVE + "s.user_id = ANY($1::uuid[])"
SUBSCRIBED_ONE = _LIVE + "s.user_id = $1"
MUTED = """SELECT user_id FROM conversation_mutes
WHERE conversation_id = $1 AND (until IS NULL OR until > $2)"""
SET_MUTE = """INSERT INTO conversation_mutes (conversation_id, user_id, until) VALUES ($1, $2, $3)
ON CONFLICT (conversation_id, user_id) DO UPDATE SET until = excluded.until"""
CLEAR_MUTE = "DELETE FROM conversation_mutes WHERE conversation_id = $1 AND user_id = $2"
MY_MUTES = "SELECT conversation_id, until FROM conversation_mutes WHERE user_id = $1"
# a row pending for the target and conversation absorbs the message (collapse); due_at
# stays the first one's
ENQUEUE = """INSERT INTO push_outbox (id, user_id, conversation_id, target, message_id,
    sender_id, sender_name, body, mentioned, created_at, due_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (user_id, conversation_id, target) DO UPDATE SET
    message_id = excluded.message_id, sender_id = excluded.sender_id,
    sender_name = excluded.sender_name, body = excluded.body,
    mentioned = push_outbox.mentioned OR excluded.mentioned,
    count = push_outbox.count + 1, version = push_outbox.version + 1"""
ITEM_COLS = """id, user_id, conversation_id, target, message_id, sender_id, sender_name, body,
mentioned, count, version, attempts, lease_owner"""
_DUE = """SELECT id FROM push_outbox WHERE due_at <= $3
  AND (lease_until IS NULL OR lease_until < $3) ORDER BY due_at LIMIT $4"""
CLAIM = f"""UPDATE push_outbox SET lease_owner = $1, lease_until = $2
WHERE id IN ({_DUE}{{lock}}) RETURNING {ITEM_COLS}"""
CLAIMED_SUBSCRIPTIONS = f"""SELECT {", ".join("s." + c.strip() for c in SUB_COLS.split(","))}
FROM push_subscriptions s JOIN push_outbox o ON o.target = CAST(s.id AS text)
WHERE o.lease_owner = $1"""
FINISH = "DELETE FROM push_outbox WHERE id = $1 AND lease_owner = $2 AND version = $3"
# the messages folded in while a push was sent are left for the next one
RELEASE = """UPDATE push_outbox SET lease_owner = NULL, lease_until = NULL, attempts = 0,
    count = count - $3
WHERE id = $1 AND lease_owner = $2"""
RETRY = """UPDATE push_outbox SET lease_owner = NULL, lease_until = NULL, attempts = $3,
    due_at = $4
WHERE id = $1 AND lease_owner = $2"""
DROP = "DELETE FROM push_outbox WHERE id = $1 AND lease_owner = $2"
NEXT_DUE = """SELECT min(CASE WHEN lease_until IS NULL THEN due_at ELSE lease_until END)
FROM push_outbox"""
PENDING = "SELECT count(*) FROM push_outbox"
PENDING_OF = "SELECT count(*) FROM push_outbox WHERE user_id = $1"


def _subscription(r: Row) -> PushSubscription:
    return PushSubscription(id=str(r["id"]), user_id=str(r["user_id"]), endpoint=r["endpoint"],
                            p256dh=r["p256dh"], auth=r["auth"], created_at=ts(r["created_at"]))


def _item(r: Row, subs: dict[str, PushSubscription]) -> PushItem:
    target = r["target"]
    return PushItem(
        id=str(r["id"]), user_id=str(r["user_id"]), conversation_id=str(r["conversation_id"]),
        target=target, message_id=str(r["message_id"]), sender_id=str(r["sender_id"]),
        sender_name=r["sender_name"], body=r["body"], mentioned=bool(r["mentioned"]),
        count=int(r["count"]), version=int(r["version"]), attempts=int(r["attempts"]),
        lease=r["lease_owner"], subscription=subs.get(target))


class SqlPushStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._claim = CLAIM.format(lock=" FOR UPDATE SKIP LOCKED"
                                   if db.dialect == "postgres" else "")

    # ------------------------------------------------------------ subscriptions

    async def save_subscription(self, *, user_id: str, endpoint: str, p256dh: str, auth: str,
                                now: datetime, session_id: str | None = None
                                ) -> PushSubscription:
        """Insert, or update the row of the same endpoint (it moves to `user_id` and
        `session_id`: the browser profile signed in again, maybe as someone else)."""
        def op() -> Op[PushSubscription]:
            row = yield one(SAVE_SUBSCRIPTION, new_id(), user_id, endpoint, p256dh, auth, now,
                            session_id)
            return _subscription(row)

        return await self.db.run(op())

    async def list_subscriptions(self, user_id: str) -> list[PushSubscription]:
        def op() -> Op[list[PushSubscription]]:
            return [_subscription(r) for r in (yield rows(MY_SUBSCRIPTIONS, user_id))]

        return await self.db.run(op(), write=False)

    async def delete_subscription(self, subscription_id: str, *,
                                  user_id: str | None = None) -> bool:
        """Delete it and its pending pushes; `user_id`: only if it is theirs."""
        def op() -> Op[bool]:
            if user_id is None:
                found = yield val("SELECT 1 FROM push_subscriptions WHERE id = $1",
                                  subscription_id)
                yield exec_(DELETE_SUBSCRIPTION, subscription_id)
            else:
                found = yield val("SELECT 1 FROM push_subscriptions WHERE id = $1 "
                                  "AND user_id = $2", subscription_id, user_id)
                yield exec_(DELETE_MY_SUBSCRIPTION, subscription_id, user_id)
            if found:
                yield exec_(DELETE_TARGET, subscription_id)
            return bool(found)

        return await self.db.run(op())

    # ------------------------------------------------------------ mutes

    async def set_mute(self, conversation_id: str, user_id: str,
                       until: datetime | None) -> None:
        def op() -> Op[None]:
            yield exec_(SET_MUTE, conversation_id, user_id, until)

        await self.db.run(op())

    async def clear_mute(self, conversation_id: str, user_id: str) -> None:
        def op() -> Op[None]:
            yield exec_(CLEAR_MUTE, conversation_id, user_id)

        await self.db.run(op())

    async def mutes(self, user_id: str) -> dict[str, datetime | None]:
        """conversation id -> muted until (None: forever), expired ones included."""
        def op() -> Op[dict[str, datetime | None]]:
            return {str(r["conversation_id"]): opt_ts(r["until"])
                    for r in (yield rows(MY_MUTES, user_id))}

        return await self.db.run(op(), write=False)

    # ------------------------------------------------------------ outbox

    async def enqueue(self, drafts: Sequence[PushDraft], *, webhook: bool, now: datetime,
                      due_at: datetime) -> int:
        """One transaction for several messages: a pending push per subscription of each
        recipient (and one for the webhook), folded into the pending one of that target and
        conversation. Muted recipients are skipped unless mentioned. Returns rows written."""
        def op() -> Op[int]:
            written = 0
            for d in drafts:
                written += yield from self._enqueue_one(d, webhook=webhook, now=now,
                                                        due_at=due_at)
            return written

        return await self.db.run(op())

    def _enqueue_one(self, d: PushDraft, *, webhook: bool, now: datetime,
                     due_at: datetime) -> Op[int]:
        muted = {str(r["user_id"]) for r in (yield rows(MUTED, d.conversation_id, now))}
        wanted = {r.user_id: r.mentioned for r in d.recipients
                  if r.mentioned or r.user_id not in muted}
        if not wanted:
            return 0
        targets: list[tuple[str, str]] = [(u, WEBHOOK) for u in wanted] if webhook else []
        if self.db.dialect == "postgres":
            found = yield rows(SUBSCRIBED_PG, list(wanted))
        else:
            found = []
            for uid in wanted:
                found.extend((yield rows(SUBSCRIBED_ONE, uid)))
        targets += [(str(r["user_id"]), str(r["id"])) for r in found]
        for uid, target in targets:
            yield exec_(ENQUEUE, new_id(), uid, d.conversation_id, target, d.message_id,
                        d.sender_id, d.sender_name, d.body, wanted[uid], now, due_at)
        return len(targets)

    async def claim_due(self, *, now: datetime, lease_until: datetime,
                        limit: int) -> list[PushItem]:
        """Up to `limit` due rows nobody holds, now held by a fresh lease until
        `lease_until`, with their subscriptions (None where it is gone)."""
        lease = new_id()

        def op() -> Op[list[PushItem]]:
            claimed = yield rows(self._claim, lease, lease_until, now, limit)
            if not claimed:
                return []
            subs = {s.id: s for s in map(_subscription,
                                         (yield rows(CLAIMED_SUBSCRIPTIONS, lease)))}
            return [_item(r, subs) for r in claimed]

        return await self.db.run(op())

    async def settle(self, outcomes: Sequence[Settlement]) -> None:
        """What became of a batch of claimed rows, in one transaction. A row finished
        while messages were folded into it stays, due at once, counting only those."""
        def op() -> Op[None]:
            for o in outcomes:
                item = o.item
                if o.action == "finish":
                    done = yield val(FINISH + " RETURNING 1", item.id, item.lease, item.version)
                    if not done:
                        yield exec_(RELEASE, item.id, item.lease, item.count)
                elif o.action == "retry":
                    yield exec_(RETRY, item.id, item.lease, o.attempts, o.due_at)
                elif o.action == "gone" and item.subscription is not None:
                    yield exec_(DELETE_SUBSCRIPTION, item.target)
                    yield exec_(DELETE_TARGET, item.target)
                else:
                    yield exec_(DROP, item.id, item.lease)

        await self.db.run(op())

    async def next_due(self) -> datetime | None:
        """When the earliest row becomes claimable (due, or its lease ends)."""
        def op() -> Op[datetime | None]:
            return opt_ts((yield val(NEXT_DUE)))

        return await self.db.run(op(), write=False)

    async def pending(self, user_id: str | None = None) -> int:
        """Rows waiting (of one user's)."""
        def op() -> Op[int]:
            found = yield (val(PENDING) if user_id is None else val(PENDING_OF, user_id))
            return int(found or 0)

        return await self.db.run(op(), write=False)
