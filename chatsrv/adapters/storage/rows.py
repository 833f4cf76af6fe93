"""Rows to entities, the same on both drivers (ids come back as UUID or str, times as
datetime or ISO text)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chatsrv.adapters.storage.base import Row
from chatsrv.domain.model import Conversation, ConversationType, Member, Message, Role, User


def ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value)


def opt_ts(value: Any) -> datetime | None:
    return None if value is None else ts(value)


def user_of(r: Row) -> User:
    return User(
        id=str(r["id"]), username=r["username"], email=r["email"],
        display_name=r["display_name"], created_at=ts(r["created_at"]),
        last_seen=opt_ts(r["last_seen"]), is_admin=bool(r["is_admin"]),
        deactivated_at=opt_ts(r["deactivated_at"]),
        presence_visible=bool(r["presence_visible"]),
        read_receipts_visible=bool(r["read_receipts_visible"]),
    )


def message_of(r: Row) -> Message:
    return Message(
        id=str(r["id"]), conversation_id=str(r["conversation_id"]), seq=int(r["seq"]),
        sender_id=str(r["sender_id"]), content=r["content"], message_type=r["message_type"],
        client_msg_id=r["client_msg_id"], created_at=ts(r["created_at"]),
        reply_to=None if r["reply_to"] is None else str(r["reply_to"]),
        mentions=tuple(json.loads(r["mentions"])) if r["mentions"] != "[]" else (),
        edited_at=opt_ts(r["edited_at"]), deleted_at=opt_ts(r["deleted_at"]),
        deleted_by=None if r["deleted_by"] is None else str(r["deleted_by"]),
    )


def mentions_json(mentions: Sequence[str]) -> str:
    """The messages.mentions column: a JSON array of user id strings."""
    return json.dumps(list(mentions), separators=(",", ":"))


def member_of(r: Row) -> Member:
    return Member(
        user_id=str(r["user_id"]), role=Role(r["role"]), delivered_seq=int(r["delivered_seq"]),
        read_seq=int(r["read_seq"]), joined_at=ts(r["joined_at"]),
    )


def conversation_of(r: Row, members: Sequence[Member] = ()) -> Conversation:
    return Conversation(
        id=str(r["id"]), type=ConversationType(r["type"]), name=r["name"],
        created_by=str(r["created_by"]), created_at=ts(r["created_at"]),
        last_seq=int(r["last_seq"]), members=tuple(members),
    )


USER_COLS = ("id, username, email, display_name, created_at, last_seen, is_admin, "
             "deactivated_at, presence_visible, read_receipts_visible")
MESSAGE_COLS = ("id, conversation_id, seq, sender_id, content, message_type, client_msg_id, "
                "created_at, reply_to, mentions, edited_at, deleted_at, deleted_by")
CONV_COLS = "id, type, name, created_by, created_at, last_seq"
