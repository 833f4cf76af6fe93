"""REST bodies of offline push and conversation mutes (transport/http/push.py)."""

from __future__ import annotations

from msgspec import Struct


class VapidKeyOut(Struct):
    key: str  # base64url uncompressed P-256 point: PushManager.subscribe's applicationServerKey


class SubscriptionKeysIn(Struct):
    p256dh: str
    auth: str


class SubscriptionIn(Struct):
    """`PushSubscription.toJSON()` of the browser (`expirationTime` is accepted, unused)."""

    endpoint: str
    keys: SubscriptionKeysIn
    expirationTime: float | None = None  # the browser's name


class SubscriptionOut(Struct):
    id: str
    endpoint: str
    created_at: str


class SubscriptionsOut(Struct):
    subscriptions: list[SubscriptionOut]


class MuteIn(Struct):
    until: str | None = None  # ISO 8601; absent or null: until unmuted


class MuteOut(Struct):
    conversation_id: str
    muted: bool
    until: str | None


class MutesOut(Struct):
    mutes: list[MuteOut]
