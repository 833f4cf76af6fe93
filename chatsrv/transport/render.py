"""Domain entities to REST response schemas (transport/wire.py)."""

from __future__ import annotations

from typing import Any

from chatsrv.domain.model import (
    CallRecord,
    Conversation,
    ConversationSummary,
    Message,
    User,
    iso,
)
from chatsrv.transport import wire


def render_user(u: User, *, status: str | None = None, private: bool = False) -> wire.UserOut:
    """`status` None: the viewer may not see this user's presence (not a contact), so
    `last_seen` is withheld too."""
    return wire.UserOut(
        id=u.id, username=u.username, display_name=u.display_name,
        email=u.email if private else None, status=status,
        last_seen=iso(u.last_seen) if status is not None else None,
        created_at=iso(u.created_at),
    )


def render_admin_user(u: User) -> wire.AdminUserOut:
    return wire.AdminUserOut(
        id=u.id, username=u.username, display_name=u.display_name, email=u.email,
        is_admin=u.is_admin, active=u.active, created_at=iso(u.created_at) or "",
        last_seen=iso(u.last_seen), deactivated_at=iso(u.deactivated_at))


def render_message(m: Message) -> wire.MessageOut:
    return wire.MessageOut(
        id=m.id, conversation_id=m.conversation_id, seq=m.seq, sender_id=m.sender_id,
        content=m.content, message_type=m.message_type, client_msg_id=m.client_msg_id,
        created_at=iso(m.created_at) or "",
    )


def render_conversation(c: Conversation, *, users: dict[str, User] | None = None,
                        statuses: dict[str, str | None] | None = None,
                        summary: ConversationSummary | None = None) -> wire.ConversationOut:
    users = users or {}
    statuses = statuses or {}
    members = []
    for m in c.members:
        u = users.get(m.user_id)
        members.append(wire.MemberOut(
            user_id=m.user_id, role=m.role.value, delivered_seq=m.delivered_seq,
            read_seq=m.read_seq, joined_at=iso(m.joined_at) or "",
            username=u.username if u else None, display_name=u.display_name if u else None,
            status=statuses.get(m.user_id), last_seen=iso(u.last_seen) if u else None,
        ))
    return wire.ConversationOut(
        id=c.id, type=c.type.value, name=c.name, created_by=c.created_by,
        created_at=iso(c.created_at) or "", last_seq=c.last_seq, members=members,
        last_message=render_message(summary.last_message)
        if summary and summary.last_message else None,
        unread=summary.unread if summary else None,
    )


def auth_out(s: Any, *, status: str) -> wire.AuthOut:
    return wire.AuthOut(token=s.token, refresh_token=s.refresh_token, expires_in=s.expires_in,
                        user=render_user(s.user, private=True, status=status))


def render_call(c: CallRecord, me: str) -> dict[str, Any]:
    duration = None
    if c.answered_at and c.ended_at:
        duration = round((c.ended_at - c.answered_at).total_seconds(), 3)
    return {
        "id": c.id, "call_id": c.id, "conversation_id": c.conversation_id,
        "caller_id": c.caller_id, "callee_id": c.callee_id, "media": c.media,
        "status": c.status, "end_reason": c.end_reason,
        "direction": "outgoing" if c.caller_id == me else "incoming",
        "started_at": iso(c.started_at), "answered_at": iso(c.answered_at),
        "ended_at": iso(c.ended_at), "duration_seconds": duration,
    }
