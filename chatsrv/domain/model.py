"""Entities. Ids are UUID strings; timestamps are timezone-aware UTC datetimes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from chatsrv.domain.errors import Invalid


def new_id() -> str:
    return str(uuid.uuid4())


def parse_id(value: str, what: str = "id") -> str:
    """Canonical form of a UUID string; raises Invalid for anything else."""
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


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: Conversation
    last_message: Message | None
    unread: int


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


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    user_id: str
    family_id: str
    expires_at: datetime


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
