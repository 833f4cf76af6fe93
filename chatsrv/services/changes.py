"""Message changes (issue 14): edit, delete, reactions; replies and mentions of new
messages; the changes a device missed while offline (`sync {changes_since}`).

A change is not a new message: it takes no seq and leaves unread counts alone. Each is
committed with its change-log entry in one transaction (MessageChanges port), then told to
every member's devices live through the router (so on every node); the acting device gets
the same frame carrying its `ref` as the acknowledgement. A device that was offline gets
the logged frames, in order, from `sync {changes_since}`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from chatsrv.domain.changes import (
    Change,
    check_emoji,
    decode_cursor,
    deleted_payload,
    edit_window_open,
    edited_payload,
    encode_cursor,
    mentioned_names,
    reaction_payload,
)
from chatsrv.domain.errors import ChatError, Conflict, Forbidden, Invalid, NotFound
from chatsrv.domain.model import ConversationType, Message, Role, parse_id, utcnow
from chatsrv.domain.ports import MessageChanges, Router, Store, Subscriber
from chatsrv.protocol import frames as f
from chatsrv.services.membership import MembershipCache

log = logging.getLogger(__name__)


def check_content(content: str, *, max_chars: int, allow_empty: bool = False) -> None:
    """The content rules of chat_message (and of edits). Raises Invalid. `allow_empty`:
    the message carries attachments, so its text may be empty."""
    if (not content or not content.strip()) and not allow_empty:
        raise Invalid("content must not be empty", field="content")
    if len(content) > max_chars:
        raise Invalid(f"content is longer than {max_chars} characters",
                      code="content_too_long", field="content")


def _deleted() -> Conflict:
    return Conflict("the message was deleted", code="already_deleted")


@dataclass(frozen=True, slots=True)
class ChangesPage:
    changes: list[Change]
    cursor: str
    has_more: bool


class ChangeService:
    def __init__(self, store: Store, changes: MessageChanges, router: Router,
                 members: MembershipCache, *, max_content_chars: int, edit_window: float,
                 page_size: int,
                 release: Callable[[str], Awaitable[int]] | None = None) -> None:
        # a deleted message's attachments go (UploadService.release_attachments)
        self._release = release
        self._store = store
        self._changes = changes
        self._router = router
        self._members = members
        self._max_content = max_content_chars
        self._edit_window = edit_window
        self._page = page_size

    # ------------------------------------------------------------------ changes

    async def edit(self, user_id: str, message_id: str, content: str, *,
                   origin: Subscriber | None = None, ref: f.Ref = None) -> Message:
        """Replace the content of the user's own message (mentions recomputed). Raises
        NotFound (no such message, or not the user's conversation), Forbidden (someone
        else's; `edit_window_closed` after EDIT_WINDOW), Conflict `already_deleted`,
        Invalid (the content rules of chat_message)."""
        m = await self._visible(user_id, message_id)
        if m.sender_id != user_id:
            raise Forbidden("only the sender can edit a message")
        if m.deleted_at is not None:
            raise _deleted()
        check_content(content, max_chars=self._max_content)
        now = utcnow()
        if not edit_window_open(m.created_at, now=now, window=self._edit_window):
            raise Forbidden(f"messages can be edited for {self._edit_window:g} s after "
                            "sending", code="edit_window_closed")
        mentions = await self.mentions(m.conversation_id, content)
        edited = await self._changes.edit_message(m.id, content=content, mentions=mentions,
                                                  at=now)
        if edited is None:  # deleted meanwhile
            raise _deleted()
        await self._tell(edited, f.MessageEdited(**edited_payload(edited)), origin, ref)
        return (await self.decorate(user_id, [edited]))[0]

    async def delete(self, user_id: str, message_id: str, *,
                     origin: Subscriber | None = None, ref: f.Ref = None) -> Message:
        """Delete a message for everyone: its sender, or an admin of its group. Deleting a
        deleted message changes nothing (the acting device still gets `message_deleted`).
        Raises NotFound, Forbidden."""
        m = await self._visible(user_id, message_id)
        if m.sender_id != user_id and not await self._group_admin(user_id, m.conversation_id):
            raise Forbidden("only the sender or a group admin can delete a message")
        if m.deleted_at is None:
            deleted = await self._changes.delete_message(m.id, by=user_id, at=utcnow())
            if deleted is not None:
                await self._release_attachments(deleted)
                await self._tell(deleted, f.MessageDeleted(**deleted_payload(deleted)),
                                 origin, ref)
                return deleted
            m = await self._visible(user_id, message_id)  # deleted by someone meanwhile
        self._ack(f.MessageDeleted(**deleted_payload(m)), origin, ref)
        return m

    async def _release_attachments(self, message: Message) -> None:
        """The one place every delete (WebSocket and REST, sender or group admin) passes,
        once, right after the delete is committed and before members are told: its
        attachments go. The delete stands if this fails (logged; the uploads stay until a
        later delete of another message sharing them or an operator's clean-up)."""
        if self._release is None:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._release(message.id)
        except (ChatError, trio.TooSlowError) as exc:
            log.warning("attachments of deleted message %s not released: %s", message.id, exc)

    async def react(self, user_id: str, message_id: str, emoji: str, add: bool, *,
                    origin: Subscriber | None = None, ref: f.Ref = None) -> f.ReactionUpdate:
        """Put (add) or take back one emoji of the user on a message; idempotent: a repeat
        changes nothing and tells nobody else (the acting device gets the current counts).
        Raises NotFound, Invalid (`emoji`), Conflict `already_deleted`."""
        emoji = check_emoji(emoji)
        m = await self._visible(user_id, message_id)
        if m.deleted_at is not None:
            raise _deleted()
        outcome = await self._changes.set_reaction(m.id, user_id=user_id, emoji=emoji,
                                                   add=add, at=utcnow())
        if outcome is None:
            raise _deleted()
        m, counts, changed = outcome
        frame = f.ReactionUpdate(**reaction_payload(m, user_id=user_id, emoji=emoji, add=add,
                                                    counts=counts))
        if changed:
            await self._tell(m, frame, origin, ref)
        else:
            self._ack(frame, origin, ref)
        return frame

    # ------------------------------------------------------------------ offline, views

    async def changes_since(self, user_id: str, cursor: str) -> ChangesPage:
        """The logged changes of the user's conversations after `cursor`, oldest first, at
        most one page, and the cursor to ask from next. Raises Invalid for a cursor this
        server did not hand out."""
        after = decode_cursor(cursor)
        # read the clock first: every change up to it is committed, so the page below
        # holds all of them unless it is full
        newest = await self._changes.last_change()
        found = await self._changes.changes_since(user_id, after, limit=self._page + 1)
        has_more = len(found) > self._page
        del found[self._page:]
        last = found[-1].id if found else after
        return ChangesPage(found, encode_cursor(last if has_more else max(last, newest)),
                           has_more)

    async def cursor(self) -> str:
        return encode_cursor(await self._changes.last_change())

    async def decorate(self, user_id: str, messages: list[Message]) -> list[Message]:
        """The messages as `user_id` sees them: with their reactions (`me` theirs)."""
        if not messages:
            return messages
        found = await self._changes.reactions([m.id for m in messages], user_id)
        if not found:
            return messages
        return [replace(m, reactions=found[m.id]) if m.id in found else m for m in messages]

    # ------------------------------------------------------------------ new messages

    async def mentions(self, conversation_id: str, content: str) -> tuple[str, ...]:
        """User ids of the conversation's members named `@username` in content, in the
        order they are named."""
        names = mentioned_names(content)
        if not names:
            return ()
        found = await self._changes.member_ids_by_username(conversation_id, names)
        return tuple(dict.fromkeys(found[n] for n in names if n in found))

    async def reply_target(self, conversation_id: str, reply_to: str) -> str:
        """The id of the message replied to; Invalid (field reply_to) unless it is a
        message of the same conversation."""
        target = await self._store.get_message(parse_id(reply_to, "reply_to"))
        if target is None or target.conversation_id != conversation_id:
            raise Invalid("reply_to must be a message of the same conversation",
                          field="reply_to")
        return target.id

    # ------------------------------------------------------------------ inside

    async def _visible(self, user_id: str, message_id: str) -> Message:
        m = await self._store.get_message(parse_id(message_id, "message_id"))
        if m is None or user_id not in await self._members.members(m.conversation_id):
            raise NotFound("message not found")
        return m

    async def _group_admin(self, user_id: str, conversation_id: str) -> bool:
        conv = await self._store.get_conversation(conversation_id)
        member = None if conv is None else conv.member(user_id)
        return (conv is not None and conv.type is ConversationType.GROUP
                and member is not None and member.role is Role.ADMIN)

    async def _tell(self, m: Message, payload: Any, origin: Subscriber | None,
                    ref: f.Ref) -> None:
        """Every member's devices get the frame; the acting one gets it with its ref."""
        members = await self._members.members(m.conversation_id)
        self._router.publish(members, f.Frame(payload),
                             exclude=origin.connection_id if origin is not None else None)
        self._ack(payload, origin, ref)

    @staticmethod
    def _ack(payload: Any, origin: Subscriber | None, ref: f.Ref) -> None:
        if origin is not None:
            origin.send_nowait(f.Frame(payload, ref=ref))
