"""Entities to payloads: one rendering per entity, for frames and REST bodies alike."""

from __future__ import annotations

from typing import Any

from chatsrv.domain.errors import ChatError
from chatsrv.domain.model import (
    CallRecord,
    Conversation,
    ConversationSummary,
    ConversationView,
    Message,
    User,
    Watermarks,
    iso,
)
from chatsrv.domain.uploads import Upload
from chatsrv.protocol import frames
from chatsrv.protocol import rest as wire


def render_user(u: User, *, status: str | None = None, private: bool = False) -> wire.UserOut:
    """`status` None: the viewer may not see this user's presence (not a contact), so
    `last_seen` is withheld too."""
    return wire.UserOut(
        id=u.id, username=u.username, display_name=u.display_name,
        email=u.email if private else None, status=status,
        last_seen=iso(u.last_seen) if status is not None else None,
        created_at=iso(u.created_at),
        presence_visible=u.presence_visible if private else None,
        read_receipts_visible=u.read_receipts_visible if private else None,
    )


def render_admin_user(u: User) -> wire.AdminUserOut:
    return wire.AdminUserOut(
        id=u.id, username=u.username, display_name=u.display_name, email=u.email,
        is_admin=u.is_admin, active=u.active, created_at=iso(u.created_at) or "",
        last_seen=iso(u.last_seen), deactivated_at=iso(u.deactivated_at))


def render_message(m: Message) -> frames.MessagePayload:
    return frames.MessagePayload(
        id=m.id, conversation_id=m.conversation_id, seq=m.seq, sender_id=m.sender_id,
        content=m.content, message_type=m.message_type, client_msg_id=m.client_msg_id,
        created_at=iso(m.created_at) or "",
        edited_at=iso(m.edited_at), deleted=m.deleted_at is not None, reply_to=m.reply_to,
        mentions=list(m.mentions),
        reactions={r.emoji: frames.ReactionCount(count=r.count, me=r.me) for r in m.reactions},
        attachments=[frames.AttachmentOut(
            id=a.id, name=a.name, content_type=a.content_type, size=a.size,
            # unsigned (bearer header) where no signed URL was filled in: a conversation's
            # last_message
            url=a.url or f"/api/uploads/{a.id}",
            thumbnail_url=a.thumbnail_url or (f"/api/uploads/{a.id}/thumbnail"
                                              if a.has_thumbnail else None),
            width=a.width, height=a.height)
            for a in m.attachments],
    )


def render_upload(u: Upload, url: str, thumbnail_url: str | None) -> wire.UploadOut:
    return wire.UploadOut(id=u.id, name=u.name, content_type=u.content_type, size=u.size,
                          sha256=u.sha256, url=url, thumbnail_url=thumbnail_url,
                          width=u.width, height=u.height, created_at=iso(u.created_at) or "")


def render_ack(m: Message, *, duplicate: bool) -> frames.MessageAck:
    created = iso(m.created_at) or ""
    return frames.MessageAck(id=m.id, message_id=m.id, conversation_id=m.conversation_id,
                             seq=m.seq, client_msg_id=m.client_msg_id, created_at=created,
                             duplicate=duplicate)


def render_error(err: ChatError, ref: frames.Ref) -> frames.ErrorOut:
    details = err.details
    user_ids = details.get("user_ids")
    return frames.ErrorOut(
        code=err.code, message=err.message, ref=ref,
        field=details.get("field"),  # type: ignore[arg-type]
        retry_after=details.get("retry_after"),  # type: ignore[arg-type]
        user_ids=list(user_ids) if isinstance(user_ids, list | tuple) else None)


def render_marks(marks: Watermarks) -> frames.MemberMarks:
    return frames.MemberMarks(delivered_seq=marks.delivered_seq, read_seq=marks.read_seq)


def render_view(view: ConversationView) -> wire.ConversationOut:
    return render_conversation(view.conversation, users=view.users, statuses=view.statuses,
                               summary=view.summary)


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
        unread=summary.unread if summary else 0,
    )


def auth_out(s: Any, *, status: str) -> wire.AuthOut:
    return wire.AuthOut(token=s.token, refresh_token=s.refresh_token, expires_in=s.expires_in,
                        user=render_user(s.user, private=True, status=status))


def render_call(c: CallRecord, me: str) -> wire.CallOut:
    duration = None
    if c.answered_at and c.ended_at:
        duration = round((c.ended_at - c.answered_at).total_seconds(), 3)
    return wire.CallOut(
        id=c.id, call_id=c.id, conversation_id=c.conversation_id, caller_id=c.caller_id,
        callee_id=c.callee_id, media=c.media, status=c.status, end_reason=c.end_reason,
        direction="outgoing" if c.caller_id == me else "incoming",
        started_at=iso(c.started_at) or "", answered_at=iso(c.answered_at),
        ended_at=iso(c.ended_at), duration_seconds=duration)
