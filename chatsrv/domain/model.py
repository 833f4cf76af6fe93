"""Entities. Ids are UUID strings; timestamps are timezone-aware UTC datetimes."""

from __future__ import annotations

import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from chatsrv.domain.errors import Invalid
from chatsrv.domain.uploads import Attachment

NO_ID = "00000000-0000-0000-0000-000000000000"  # sorts before every id (keyset paging)
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_random = threading.local()  # per thread: a buffer of os.urandom bytes


def new_id() -> str:
    """A random (version 4) UUID string. Same randomness as uuid.uuid4(), but the kernel is
    asked for 4 KiB at a time instead of 16 bytes per id (a syscall each: 8% of the event
    loop at 2,700 messages/s)."""
    buf: bytes = getattr(_random, "buf", b"")
    pos: int = getattr(_random, "pos", 0)
    if pos + 16 > len(buf):
        buf, pos = os.urandom(4096), 0
        _random.buf = buf
    raw = bytearray(buf[pos:pos + 16])
    _random.pos = pos + 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_id(value: str, what: str = "id") -> str:
    """Canonical form of a UUID string; raises Invalid for anything else."""
    if isinstance(value, str) and _CANONICAL.fullmatch(value):
        return value  # already canonical (what this server hands out)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise Invalid(f"{what} must be a UUID", field=what) from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def unix_ms(ts: datetime) -> int:
    """Whole Unix milliseconds (frames' `timestamp_ms`; `timestamp` is this // 1000)."""
    return int(ts.timestamp() * 1000)


class ConversationType(StrEnum):
    ONE_TO_ONE = "one_to_one"
    GROUP = "group"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    email: str
    display_name: str
    created_at: datetime
    last_seen: datetime | None = None
    is_admin: bool = False
    deactivated_at: datetime | None = None
    # privacy settings (PATCH /api/users/me): shown offline to others, reads shown as
    # delivered only to others
    presence_visible: bool = True
    read_receipts_visible: bool = True

    @property
    def active(self) -> bool:
        return self.deactivated_at is None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A login (the refresh-token family) as storage knows it."""

    id: str
    user_id: str
    created_at: datetime
    revoked_at: datetime | None
    user_active: bool
    is_admin: bool


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a valid access token of a live session of an active user."""

    user_id: str
    session_id: str
    is_admin: bool
    expires_at: float  # Unix time the access token expires


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    role: Role
    delivered_seq: int
    read_seq: int
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    type: ConversationType
    name: str | None
    created_by: str
    created_at: datetime
    last_seq: int
    members: tuple[Member, ...] = ()

    def member(self, user_id: str) -> Member | None:
        for m in self.members:
            if m.user_id == user_id:
                return m
        return None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    content: str
    message_type: str
    client_msg_id: str | None
    created_at: datetime
    # message changes (issue 14): its current state
    reply_to: str | None = None
    mentions: tuple[str, ...] = ()
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    deleted_by: str | None = None
    # as one viewer sees them (filled per viewer by the services; the store leaves it empty)
    reactions: tuple[Reaction, ...] = ()
    attachments: tuple[Attachment, ...] = ()  # uploads the message carries, in order


@dataclass(frozen=True, slots=True)
class Reaction:
    """One emoji on a message: how many users put it there, and whether the viewer did."""

    emoji: str
    count: int
    me: bool = False


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: Conversation
    last_message: Message | None
    unread: int


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A conversation as its members see it: the members' profiles and presence too."""

    conversation: Conversation
    users: dict[str, User]
    statuses: dict[str, str | None]
    summary: ConversationSummary | None = None


@dataclass(frozen=True, slots=True)
class Watermarks:
    """A member's position in a conversation: everything <= delivered_seq reached a device,
    everything <= read_seq was read."""

    delivered_seq: int
    read_seq: int


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a connecting user needs: conversation id -> (last_seq, the user's watermarks)
    for every membership, and the users who share a conversation with them (presence)."""

    positions: dict[str, tuple[int, Watermarks]]
    contacts: list[str]
    # message changes (issue 14): unread mentions of the user per conversation, and the
    # change log's position when they were read (`ready.changes_cursor`)
    mentions_unread: dict[str, int] = field(default_factory=dict)
    changes_cursor: int = 0


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    user_id: str
    family_id: str  # the session id
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What using a refresh token did: a grant, or nothing; `replayed` names the session a
    replay of a spent token has just revoked."""

    grant: RefreshGrant | None
    replayed: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One connection of one user, on one node (`node`: its instance; "" = this node)."""

    user_id: str
    connection_id: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class CallSignal:
    """Call signalling between the node that owns a call and the node of one device:
    answer, ice, reject, end, left (to the owner); over (to the device's node)."""

    call_id: str
    action: str
    device: Device
    payload: Any = None  # the SDP answer, the ICE candidate, or the reason
    ref: str | int | None = None  # the client's ref, for an error frame back


@dataclass(frozen=True, slots=True)
class CallClaim:
    """A call holding its two users (nobody else can call them, they cannot call others),
    owned by one node instance."""

    call_id: str
    caller_id: str
    callee_id: str
    owner: str
    answered: bool = False


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as history keeps it."""

    id: str
    conversation_id: str | None
    caller_id: str
    callee_id: str
    media: str
    status: str
    end_reason: str | None
    started_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Privacy:
    """What the rules need to know about one user: whom they blocked, who blocked them,
    and their privacy settings (services/privacy.py caches it per user)."""

    blocked: frozenset[str] = frozenset()  # users this user blocked
    blocked_by: frozenset[str] = frozenset()  # users who blocked this user
    presence_visible: bool = True
    read_receipts_visible: bool = True

    @property
    def barriers(self) -> frozenset[str]:
        """Users with a block between them and this user, either way."""
        return self.blocked | self.blocked_by


@dataclass(frozen=True, slots=True)
class Block:
    """A block as GET /api/blocks lists it."""

    user: User
    created_at: datetime
