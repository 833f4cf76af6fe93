"""Offline push, the pure part: subscriptions, outbox items, what a push says, back-off.

No I/O: services/push.py moves these between the store and the push services.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

WEBHOOK = ""  # the outbox target of PUSH_WEBHOOK_URL (a subscription's target is its id)
REDACTED = "New message"
MAX_BODY_CHARS = 500  # of the message text in a push (Web Push bodies are ≤ ~3.9 KB)


@dataclass(frozen=True, slots=True)
class PushSubscription:
    id: str
    user_id: str
    endpoint: str
    p256dh: str  # base64url uncompressed P-256 point (65 bytes)
    auth: str  # base64url 16-byte secret
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PushItem:
    """One pending push: to one target (a subscription, or WEBHOOK) of one user, for one
    conversation, collapsed: `count` messages so far, the last one shown. `version` moves
    with every message folded in; `lease` is the claim of the sender holding it."""

    id: str
    user_id: str
    conversation_id: str
    target: str
    message_id: str
    sender_id: str
    sender_name: str
    body: str
    mentioned: bool
    count: int
    version: int
    attempts: int
    lease: str
    subscription: PushSubscription | None = None  # None: the webhook, or gone


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: str
    mentioned: bool


@dataclass(frozen=True, slots=True)
class PushDraft:
    """One committed message to fold into the outbox for its offline `recipients`."""

    conversation_id: str
    message_id: str
    sender_id: str
    sender_name: str
    body: str
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one claimed row: `finish` (sent), `drop`, `retry` at `due_at` with
    `attempts`, or `gone` (delete its subscription, and with it the subscription's rows)."""

    item: PushItem
    action: str
    attempts: int = 0
    due_at: datetime | None = None


def summary(item: PushItem, *, redact: bool) -> dict[str, object]:
    """What the push says (the decrypted Web Push body; the webhook's JSON is the same plus
    `user_id`). The service worker shows `title`/`body` and tags by conversation."""
    if redact:
        body = REDACTED if item.count == 1 else f"{item.count} new messages"
    else:
        text = item.body if len(item.body) <= MAX_BODY_CHARS else item.body[:MAX_BODY_CHARS] + "…"
        body = text if item.count == 1 else f"{item.count} new messages · {text}"
    return {
        "type": "new_message", "conversation_id": item.conversation_id,
        "message_id": item.message_id, "sender_id": item.sender_id,
        "sender": item.sender_name, "title": item.sender_name, "body": body,
        "count": item.count, "mentioned": item.mentioned, "redacted": redact,
    }


def backoff(attempts: int, *, first: float, cap: float,
            retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds until attempt `attempts + 1`: `first` doubling per failed attempt up to
    `cap`, with full jitter in [0.5, 1.5) — unless the push service said Retry-After
    (honoured, up to `cap` times 4)."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap * 4)
    base = min(cap, first * 2 ** max(0, attempts - 1))
    return base * (rng or random).uniform(0.5, 1.5)
