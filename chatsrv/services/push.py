"""Offline push: subscriptions, conversation mutes, and the outbox that feeds push services.

Path of one push:

1. A message commits; the group committer announces it and hands it to `notify_nowait`
   (never blocks the commit lane: a bounded queue; full, the push is dropped and counted —
   the message itself is stored and reaches the user by `sync`).
2. `run_enqueue` takes it off the queue: the members other than the sender that have no
   live socket anywhere (the router's reach: this node's sockets plus the nodes the
   cluster directory names) become outbox rows, one per subscription (and one for
   PUSH_WEBHOOK_URL), due after PUSH_DELAY; muted members only when mentioned. A row
   pending for the same target and conversation absorbs the message (collapse: "3 new
   messages"). The rows are written right after the commit, not in its transaction (the
   commit path stays the same on both backends and for every sender): a crash between the
   commit and this write loses that push, never the message.
3. `run_sender` claims due rows by lease (cluster: one node sends each), skips users who
   came online meanwhile or left the conversation, and sends each with a deadline
   (PUSH_HTTP_TIMEOUT). 2xx deletes the row; 404/410 deletes the subscription;
   429/5xx/network errors retry with jittered exponential back-off (Retry-After honoured)
   up to PUSH_MAX_ATTEMPTS; anything else drops the row. A node that dies mid-send leaves a lease that expires: the row is sent again
   by whoever claims it (at least once; the Topic header lets the push service collapse).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

import trio

from chatsrv.adapters.push.http import Outcome
from chatsrv.adapters.push.webpush import AUTH_SECRET_BYTES, b64url_decode, load_point
from chatsrv.domain.errors import ChatError, Invalid, NotFound, Unavailable
from chatsrv.domain.model import Message, parse_id, utcnow
from chatsrv.domain.ports import Directory, Router, Store
from chatsrv.domain.push import (
    WEBHOOK,
    PushDraft,
    PushItem,
    PushSubscription,
    Recipient,
    Settlement,
    backoff,
    summary,
)
from chatsrv.services.membership import MembershipCache
from chatsrv.services.privacy import PrivacyCache

log = logging.getLogger(__name__)

MAX_ENDPOINT_CHARS = 2048
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
ENQUEUE_BATCH = 128  # committed messages written to the outbox in one transaction


class PushStore(Protocol):
    """Subscriptions, mutes and the outbox (adapters/storage/push.py)."""

    async def save_subscription(self, *, user_id: str, endpoint: str, p256dh: str, auth: str,
                                now: datetime, session_id: str | None = None
                                ) -> PushSubscription: ...
    async def list_subscriptions(self, user_id: str) -> list[PushSubscription]: ...
    async def delete_subscription(self, subscription_id: str, *,
                                  user_id: str | None = None) -> bool: ...
    async def set_mute(self, conversation_id: str, user_id: str,
                       until: datetime | None) -> None: ...
    async def clear_mute(self, conversation_id: str, user_id: str) -> None: ...
    async def mutes(self, user_id: str) -> dict[str, datetime | None]: ...
    async def enqueue(self, drafts: Sequence[PushDraft], *, webhook: bool, now: datetime,
                      due_at: datetime) -> int: ...
    async def claim_due(self, *, now: datetime, lease_until: datetime,
                        limit: int) -> list[PushItem]: ...
    async def settle(self, outcomes: Sequence[Settlement]) -> None: ...
    async def next_due(self) -> datetime | None: ...
    async def pending(self, user_id: str | None = None) -> int: ...


class PushTransport(Protocol):
    """The HTTP side (adapters/push/http.py): never raises for the far side's answers."""

    async def web_push(self, sub: PushSubscription, payload: dict[str, object], *,
                       topic: str, ttl: int, urgency: str) -> Outcome: ...
    async def webhook(self, url: str, payload: dict[str, object]) -> Outcome: ...


def mentions_of(message: Message) -> tuple[str, ...]:
    """The user ids the message mentions (`@username` of members, services/changes.py)."""
    return message.mentions


class PushService:
    def __init__(self, store: PushStore, users: Store, members: MembershipCache,
                 router: Router, directory: Directory, transport: PushTransport, *,
                 public_key: str, delay: float, redact: bool, webhook_url: str | None,
                 allow_insecure: bool, ttl: int, http_timeout: float, max_attempts: int,
                 retry_delay: float, retry_max_delay: float, poll_interval: float,
                 concurrency: int, queue_size: int, max_subscriptions: int,
                 clock: Callable[[], datetime] = utcnow,
                 privacy: PrivacyCache | None = None) -> None:
        self._store = store
        # blocks: a user is never pushed a message of someone blocked either way
        self._privacy = privacy
        self._now = clock  # wall time of due dates and mutes (tests: the Trio clock's)
        self._users = users
        self._members = members
        self._router = router
        self._directory = directory
        self._transport = transport
        self.public_key = public_key
        self._delay = delay
        self._redact = redact
        self._webhook_url = webhook_url
        self._allow_insecure = allow_insecure
        self._ttl = ttl
        self._http_timeout = http_timeout
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._retry_max = retry_max_delay
        self._poll = poll_interval
        self._concurrency = concurrency
        self._max_subscriptions = max_subscriptions
        # a row held longer than this (its sender died) is due again: beyond one request
        self._lease = timedelta(seconds=2 * http_timeout + 5)
        # committed messages to turn into outbox rows; full: dropped (counted), see module
        self._queue_in, self._queue = trio.open_memory_channel[Message](queue_size)
        self._wake = trio.Event()
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------ subscriptions

    def _check_endpoint(self, endpoint: str) -> str:
        if not isinstance(endpoint, str) or len(endpoint) > MAX_ENDPOINT_CHARS:
            raise Invalid(f"endpoint must be a URL of at most {MAX_ENDPOINT_CHARS} characters",
                          field="endpoint")
        try:
            parts = urlsplit(endpoint)
            host = parts.hostname
        except ValueError:
            host = None
        if not host or parts.username or parts.password or not endpoint.isascii() \
                or any(c in endpoint for c in " \t\r\n"):
            raise Invalid("endpoint must be an https:// URL", field="endpoint")
        local = parts.netloc.rpartition(":")[0] if parts.port else parts.netloc
        if self._allow_insecure and local in LOCAL_HOSTS and parts.scheme in ("http", "https"):
            return endpoint
        if parts.scheme != "https":
            raise Invalid("endpoint must be an https:// URL", field="endpoint")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return endpoint  # a host name: push services have public ones
        # an address literal must be a public one: the server POSTs there
        if not address.is_global:
            raise Invalid("endpoint must not point at a private or local address",
                          field="endpoint")
        return endpoint

    async def subscribe(self, user_id: str, *, endpoint: str, p256dh: str, auth: str,
                        session_id: str | None = None) -> tuple[PushSubscription, bool]:
        """Store a browser's PushSubscription, made in `session_id` (pushes stop when that
        session ends); the same endpoint again updates it (and moves it to this user and
        session). Returns (subscription, created). Raises Invalid (also
        `too_many_subscriptions`), Unavailable."""
        endpoint = self._check_endpoint(endpoint)
        try:
            load_point(b64url_decode(p256dh))
        except ValueError:
            raise Invalid("keys.p256dh must be a base64url uncompressed P-256 point "
                          "(65 bytes)", field="keys.p256dh") from None
        try:
            if len(b64url_decode(auth)) != AUTH_SECRET_BYTES:
                raise ValueError
        except ValueError:
            raise Invalid(f"keys.auth must be {AUTH_SECRET_BYTES} bytes in base64url",
                          field="keys.auth") from None
        mine = await self._store.list_subscriptions(user_id)
        if len(mine) >= self._max_subscriptions and \
                all(s.endpoint != endpoint for s in mine):
            raise Invalid(f"at most {self._max_subscriptions} push subscriptions per user "
                          "(PUSH_MAX_SUBSCRIPTIONS); delete one", code="too_many_subscriptions")
        now = self._now()
        sub = await self._store.save_subscription(user_id=user_id, endpoint=endpoint,
                                                  p256dh=p256dh, auth=auth, now=now,
                                                  session_id=session_id)
        return sub, sub.created_at == now

    async def subscriptions(self, user_id: str) -> list[PushSubscription]:
        return await self._store.list_subscriptions(user_id)

    async def unsubscribe(self, user_id: str, subscription_id: str) -> None:
        """Raises NotFound unless it is one of the user's."""
        subscription_id = parse_id(subscription_id, "subscription_id")
        if not await self._store.delete_subscription(subscription_id, user_id=user_id):
            raise NotFound("no such push subscription")

    # ------------------------------------------------------------ mutes

    async def _require_member(self, user_id: str, conversation_id: str) -> str:
        conversation_id = parse_id(conversation_id, "conversation_id")
        if user_id not in await self._members.members(conversation_id):
            raise NotFound("conversation not found")
        return conversation_id

    async def mute(self, user_id: str, conversation_id: str,
                   until: datetime | None) -> tuple[str, datetime | None]:
        """No pushes from the conversation (but mentions) until `until`, or for good.
        Raises NotFound for a non-member, Invalid for a time in the past."""
        conversation_id = await self._require_member(user_id, conversation_id)
        if until is not None and until <= self._now():
            raise Invalid("until must be in the future", field="until")
        await self._store.set_mute(conversation_id, user_id, until)
        return conversation_id, until

    async def unmute(self, user_id: str, conversation_id: str) -> None:
        conversation_id = await self._require_member(user_id, conversation_id)
        await self._store.clear_mute(conversation_id, user_id)

    async def mutes(self, user_id: str) -> dict[str, datetime | None]:
        """The user's mutes in force (conversation id -> until, None: forever)."""
        now = self._now()
        return {c: u for c, u in (await self._store.mutes(user_id)).items()
                if u is None or u > now}

    # ------------------------------------------------------------ the outbox

    def notify_nowait(self, message: Message) -> None:
        """A message was committed (called by the committer's announce). Never blocks."""
        try:
            self._queue_in.send_nowait(message)
        except trio.WouldBlock:
            self.counts["dropped"] += 1

    async def run_enqueue(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        """Forever: committed messages -> outbox rows for the members offline now, the
        messages queued together in one transaction (one fsync on SQLite). A batch whose
        rows cannot be written (storage down) loses its pushes (logged)."""
        task_status.started()
        async for first in self._queue:
            batch = [first]
            while len(batch) < ENQUEUE_BATCH:
                try:
                    batch.append(self._queue.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                written = await self._enqueue(batch)
            except ChatError as exc:
                self.counts["enqueue_failed"] += len(batch)
                log.warning("pushes for %d messages not queued: %s", len(batch), exc)
                continue
            finally:
                self.counts["messages"] += len(batch)  # considered (tests wait on it)
            if written:
                self.counts["queued"] += written
                self._wake.set()

    async def _enqueue(self, messages: list[Message]) -> int:
        drafts: list[PushDraft] = []
        names: dict[str, str] = {}
        for message in messages:
            members = await self._members.members(message.conversation_id)
            mentioned = set(mentions_of(message))
            barriers = ((await self._privacy.of(message.sender_id)).barriers
                        if self._privacy is not None else frozenset())
            offline = tuple(Recipient(u, u in mentioned) for u in sorted(members)
                            if u != message.sender_id and u not in barriers
                            and self._router.reach(u) == 0)
            if not offline:
                continue
            if message.sender_id not in names:
                sender = await self._users.get_user(message.sender_id)
                names[message.sender_id] = sender.display_name if sender is not None else ""
            drafts.append(PushDraft(message.conversation_id, message.id, message.sender_id,
                                    names[message.sender_id], message.content, offline))
        if not drafts:
            return 0
        now = self._now()
        return await self._store.enqueue(drafts, webhook=self._webhook_url is not None,
                                         now=now, due_at=now + timedelta(seconds=self._delay))

    async def run_sender(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Forever: claim due rows and send them, PUSH_CONCURRENCY at a time. Storage
        trouble waits a poll interval; one push never holds up the others beyond its
        deadline."""
        limiter = trio.CapacityLimiter(self._concurrency)
        task_status.started()
        while True:
            self._wake = trio.Event()
            try:
                now = self._now()
                items = await self._store.claim_due(now=now, lease_until=now + self._lease,
                                                    limit=self._concurrency * 2)
                if items:
                    await self._send_all(items, limiter)
                    continue
                next_due = await self._store.next_due()
            except Unavailable as exc:
                log.warning("push outbox unavailable: %s", exc)
                next_due = None
            wait = self._poll
            if next_due is not None:
                wait = min(wait, max(0.0, (next_due - self._now()).total_seconds()))
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def _send_all(self, items: list[PushItem], limiter: trio.CapacityLimiter) -> None:
        """Send a claimed batch concurrently, then record every outcome in one
        transaction. Storage down then: logged; the leases expire and the rows are due
        again (sent once more)."""
        users = list({i.user_id for i in items})
        online = {u for u in users if self._router.reach(u) > 0}
        online |= await self._directory.online(users)
        settled: list[Settlement] = []
        async with trio.open_nursery() as nursery:
            for item in items:
                if item.user_id in online:
                    self.counts["skipped_online"] += 1
                    settled.append(Settlement(item, "drop"))
                elif item.user_id not in await self._members.members(item.conversation_id):
                    self.counts["skipped_left"] += 1
                    settled.append(Settlement(item, "drop"))
                else:
                    nursery.start_soon(self._send_one, item, limiter, settled)
        try:
            await self._store.settle(settled)
        except ChatError as exc:
            log.warning("outcomes of %d pushes not recorded: %s", len(settled), exc)

    async def _send_one(self, item: PushItem, limiter: trio.CapacityLimiter,
                        settled: list[Settlement]) -> None:
        async with limiter:
            try:
                outcome = await self._deliver(item)
            except Exception:  # a bug in one push must not end the batch or the sender
                log.exception("push %s to %s failed", item.id, item.target)
                outcome = Outcome("rejected", detail="internal error")
        settled.append(self._settlement(item, outcome))

    async def _deliver(self, item: PushItem) -> Outcome:
        payload = summary(item, redact=self._redact)
        with trio.move_on_after(self._http_timeout):
            if item.target == WEBHOOK:
                if self._webhook_url is None:  # the setting was removed since
                    return Outcome("rejected", detail="PUSH_WEBHOOK_URL unset")
                return await self._transport.webhook(
                    self._webhook_url, {"user_id": item.user_id, **payload,
                                        "mentions": [item.user_id] if item.mentioned else []})
            sub = item.subscription
            if sub is None or sub.user_id != item.user_id:
                return Outcome("gone", detail="subscription deleted")
            return await self._transport.web_push(
                sub, payload, topic=item.conversation_id.replace("-", ""), ttl=self._ttl,
                urgency="high" if item.mentioned else "normal")
        return Outcome("retry", detail=f"no answer within {self._http_timeout:g}s "
                                       "(PUSH_HTTP_TIMEOUT)")

    def _settlement(self, item: PushItem, outcome: Outcome) -> Settlement:
        self.counts[outcome.kind] += 1
        if outcome.kind == "sent":
            return Settlement(item, "finish")
        if outcome.kind == "gone":
            if item.subscription is not None:
                log.info("push subscription %s gone (%s): deleted", item.target,
                         outcome.status or outcome.detail)
            return Settlement(item, "gone")
        if outcome.kind == "retry" and item.attempts + 1 < self._max_attempts:
            wait = backoff(item.attempts + 1, first=self._retry_delay, cap=self._retry_max,
                           retry_after=outcome.retry_after)
            return Settlement(item, "retry", item.attempts + 1,
                              self._now() + timedelta(seconds=wait))
        self.counts["given_up"] += 1
        log.warning("push %s to %s given up after %d attempts (%s %s)", item.id,
                    "the webhook" if item.target == WEBHOOK else "subscription " + item.target,
                    item.attempts + 1, outcome.status or "", outcome.detail)
        return Settlement(item, "drop")

    async def pending(self, user_id: str | None = None) -> int:
        """Pushes waiting in the outbox (for one user)."""
        return await self._store.pending(user_id)
