"""Messages: send (the one path for REST and WebSocket), history, receipts, sync, typing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatsrv.domain.errors import Forbidden, Invalid, NotFound
from chatsrv.domain.model import (
    ConversationType,
    Message,
    Privacy,
    Watermarks,
    new_id,
    parse_id,
    unix_ms,
    utcnow,
)
from chatsrv.domain.ports import Router, Store, Subscriber
from chatsrv.domain.receipts import status_for
from chatsrv.protocol.frames import Frame, MessageStatus, TypingOut
from chatsrv.protocol.render import render_message
from chatsrv.services.changes import ChangeService, ChangesPage, check_content
from chatsrv.services.commit import GroupCommitter, Pending
from chatsrv.services.membership import MembershipCache
from chatsrv.services.privacy import PrivacyCache, shown_marks

if TYPE_CHECKING:
    from chatsrv.services.uploads import UploadService

MESSAGE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_CLIENT_MSG_ID = 64


@dataclass(frozen=True, slots=True)
class SyncResult:
    messages: list[Message]
    has_more: bool
    watermarks: dict[str, dict[str, Watermarks]]
    changes: ChangesPage | None = None  # asked for with changes_since (issue 14)


class MessagingService:
    def __init__(self, store: Store, router: Router, members: MembershipCache,
                 commits: GroupCommitter, *,
                 max_content_chars: int, history_max_limit: int, history_default_limit: int,
                 sync_page_size: int, changes: ChangeService,
                 privacy: PrivacyCache | None = None,
                 uploads: UploadService | None = None) -> None:
        self._changes = changes
        self._store = store
        # blocks and read_receipts_visible (None: no rules, as in bare service tests)
        self._privacy = privacy
        self._uploads = uploads  # attachments; None: messages carry none
        self._router = router
        self._members = members
        self._commits = commits
        self._max_content = max_content_chars
        self._history_max = history_max_limit
        self._history_default = history_default_limit
        self._sync_page = sync_page_size

    async def send(self, user_id: str, *, conversation_id: str, content: str,
                   message_type: str = "text", client_msg_id: str | None = None,
                   origin: Subscriber | None = None,
                   reply_to: str | None = None,
                   attachments: Sequence[str] = ()) -> tuple[Message, bool]:
        """Commit; the committer then fans out `new_message` (see `announce`) to every
        member's live connections except `origin`, which gets `message_ack` instead.

        Returns (message, created); a repeated client_msg_id returns the stored message and
        is not fanned out again. Raises Invalid, NotFound (not a member), Unavailable.
        """
        pending = await self.submit(user_id, conversation_id=conversation_id, content=content,
                                    message_type=message_type, client_msg_id=client_msg_id,
                                    origin=origin, reply_to=reply_to, attachments=attachments)
        await pending.done.wait()
        message, created = self.result(pending)
        if not created and self._uploads is not None:
            # a resend: the stored message as it is, attachments included
            message = await self._store.get_message(message.id) or message
        return self._present([message])[0], created

    async def submit(self, user_id: str, *, conversation_id: str, content: str,
                     message_type: str = "text", client_msg_id: str | None = None,
                     origin: Subscriber | None = None,
                     reply_to: str | None = None,
                     attachments: Sequence[str] = ()) -> Pending:
        """`send` without waiting for the commit: validates (raises Invalid at once) and
        queues; `result(pending)` once `pending.done` is set."""
        conversation_id = parse_id(conversation_id, "conversation_id")
        check_content(content, max_chars=self._max_content, allow_empty=bool(attachments))
        if not MESSAGE_TYPE.match(message_type):
            raise Invalid("message_type must be a short lowercase word", field="message_type")
        if client_msg_id is not None and not 1 <= len(client_msg_id) <= MAX_CLIENT_MSG_ID:
            raise Invalid(f"client_msg_id must be 1-{MAX_CLIENT_MSG_ID} characters",
                          field="client_msg_id")
        await self._check_not_blocked(user_id, conversation_id)
        # replies and mentions (issue 14): a query each, only when the message has them
        if reply_to is not None:
            reply_to = await self._changes.reply_target(conversation_id, reply_to)
        mentions = await self._changes.mentions(conversation_id, content)
        if attachments and self._uploads is None:
            raise Invalid("this server takes no attachments", field="attachments")
        carried = (await self._uploads.resolve(user_id, attachments)
                   if attachments and self._uploads is not None else ())
        return await self._commits.submit(Message(
            id=new_id(), conversation_id=conversation_id, seq=0, sender_id=user_id,
            content=content, message_type=message_type, client_msg_id=client_msg_id,
            created_at=utcnow(), reply_to=reply_to, mentions=mentions, attachments=carried,
        ), origin=origin)

    async def _check_not_blocked(self, user_id: str, conversation_id: str) -> None:
        """Raises Forbidden `blocked` for a one_to_one with a block either way. Costs one
        cached lookup when the sender has no blocks (nearly always)."""
        if self._privacy is None:
            return
        barriers = (await self._privacy.of(user_id)).barriers
        if not barriers or not barriers & await self._members.members(conversation_id):
            return
        conv = await self._store.get_conversation(conversation_id)
        if conv is not None and conv.type is ConversationType.ONE_TO_ONE:
            raise Forbidden("you cannot message this user (blocked)", code="blocked")

    async def _barriers(self, user_id: str) -> frozenset[str]:
        return (await self._privacy.of(user_id)).barriers if self._privacy else frozenset()

    async def _viewer(self, user_id: str) -> Privacy:
        return await self._privacy.of(user_id) if self._privacy else Privacy()

    async def _shown(self, user_id: str, marks: dict[str, dict[str, Watermarks]]
                     ) -> dict[str, dict[str, Watermarks]]:
        """Watermarks (conversation -> member -> marks) as `user_id` may see them
        (privacy.shown_marks): one lookup of the members' settings for all."""
        if self._privacy is None:
            return marks
        viewer = await self._privacy.of(user_id)
        others = sorted({u for m in marks.values() for u in m if u != user_id})
        users = {u.id: u for u in await self._store.get_users(others)} if others else {}
        return {cid: {u: shown_marks(viewer, user_id, u, w, users) for u, w in m.items()}
                for cid, m in marks.items()}

    @staticmethod
    def result(pending: Pending) -> tuple[Message, bool]:
        """The outcome of a submitted message: (message, created), or the error."""
        message, created = pending.result()
        if message.conversation_id != pending.draft.conversation_id:
            # client_msg_id reused for another conversation: not the same message
            raise Invalid("client_msg_id was already used for another message",
                          code="duplicate_client_msg_id", field="client_msg_id")
        return message, created

    async def announce(self, message: Message, origin: Subscriber | None) -> None:
        """Fan a committed message out; called by the group committer in commit order."""
        members = await self._members.members(message.conversation_id)
        self._router.publish(members, Frame(render_message(self._present([message])[0])),
                             exclude=origin.connection_id if origin is not None else None)

    async def history(self, user_id: str, conversation_id: str, *, limit: int | None,
                      offset: int = 0, before_seq: int | None = None,
                      after_seq: int | None = None) -> tuple[list[Message], bool]:
        """One page in seq order, and whether there is more beyond it.

        limit/offset and before_seq page backwards from the newest; after_seq forwards.
        `limit` defaults to the configured page and is capped at the configured maximum.
        """
        conversation_id = await self._require_member(user_id, conversation_id)
        limit = self._history_default if limit is None else min(limit, self._history_max)
        if limit < 1:
            raise Invalid("limit must be >= 1", field="limit")
        if offset < 0:
            raise Invalid("offset must be >= 0", field="offset")
        if before_seq is not None and after_seq is not None:
            raise Invalid("use before_seq or after_seq, not both")
        for name, value in (("before_seq", before_seq), ("after_seq", after_seq)):
            if value is not None and value < 0:
                raise Invalid(f"{name} must be >= 0", field=name)
        rows = await self._store.list_messages(conversation_id, limit=limit + 1, offset=offset,
                                               before_seq=before_seq, after_seq=after_seq)
        has_more = len(rows) > limit
        del rows[limit:]
        if after_seq is None:
            rows.reverse()  # fetched newest first
        return await self.present(user_id, rows), has_more

    async def status(self, user_id: str, message_id: str) -> tuple[Message, dict[str, str]]:
        """A message and what each other member has of it: sent, delivered or read (from
        watermarks). Raises NotFound (no such message, or not the user's)."""
        message = await self._store.get_message(parse_id(message_id, "message_id"))
        if message is None or user_id not in await self._members.members(
                message.conversation_id):
            raise NotFound("message not found")
        cid = message.conversation_id
        marks = (await self._shown(user_id, {cid: await self._store.watermarks(cid)}))[cid]
        return message, {u: status_for(message.seq, w) for u, w in marks.items()
                         if u != message.sender_id}

    async def receipt(self, user_id: str, *, status: str, message_id: str | None = None,
                      conversation_id: str | None = None,
                      up_to_seq: int | None = None) -> Watermarks:
        """Move the user's delivered or read watermark forward (read implies delivered) and
        tell the conversation's members' devices with `message_status`. Idempotent."""
        if message_id is not None:
            message = await self._store.get_message(parse_id(message_id, "message_id"))
            if message is None:
                raise NotFound("message not found")
            conversation_id, seq = message.conversation_id, message.seq
            members = await self._members.members(conversation_id)
            if user_id not in members:
                raise NotFound("message not found")
        elif conversation_id is not None and up_to_seq is not None:
            if up_to_seq < 1:
                raise Invalid("up_to_seq must be >= 1", field="up_to_seq")
            conversation_id = parse_id(conversation_id, "conversation_id")
            seq = up_to_seq
            members = await self._members.members(conversation_id)
            if user_id not in members:
                raise NotFound("conversation not found")
        else:
            raise Invalid("give message_id, or conversation_id and up_to_seq")
        read = status == "read"
        before, after = await self._store.advance_watermarks(
            conversation_id, user_id, delivered_to=seq, read_to=seq if read else 0
        )
        # what the others are told: nothing to users with a block between us; with my
        # read receipts hidden, how far my devices got but not how far I read
        mine = await self._viewer(user_id)
        others = [m for m in members if m != user_id and m not in mine.barriers]
        delivered_moved = after.delivered_seq > before.delivered_seq
        read_moved = after.read_seq > before.read_seq
        own = [("delivered", after.delivered_seq)] if delivered_moved and (
            not read or after.delivered_seq > after.read_seq) else []
        if read_moved:
            own.append(("read", after.read_seq))
        told = own if mine.read_receipts_visible else (
            [("delivered", after.delivered_seq)] if delivered_moved else [])
        audiences = [([user_id, *others], own)] if told == own else \
            [([user_id], own), (others, told)]
        for audience, events in audiences:
            for kind, mark in events:
                mid = message_id if (message_id is not None and mark == seq) else None
                if mid is None:
                    at = await self._store.list_messages(conversation_id, limit=1,
                                                         before_seq=mark + 1)
                    mid = at[0].id if at else None
                ms = unix_ms(utcnow())
                self._router.publish(audience, Frame(MessageStatus(
                    conversation_id=conversation_id, message_id=mid, user_id=user_id,
                    status=kind, up_to_seq=mark, timestamp=ms // 1000,  # type: ignore[arg-type]
                    timestamp_ms=ms)))
        return after

    async def sync(self, user_id: str, since: Mapping[str, int] | None, *,
                   changes_since: str | None = None) -> SyncResult:
        """Everything the user missed, per conversation in seq order, at most one page.

        `since` maps conversation id -> last seq the client saw; without it, each
        conversation starts at the user's delivered watermark. Raises NotFound for a
        conversation that is not the user's. `changes_since` (a changes cursor): also the
        edits, deletes and reactions since then (Invalid for a cursor not ours).
        """
        # changes first: a message changed after this point is sent in its new state
        # below, and its change again next time (applying a change twice is harmless)
        changes = (None if changes_since is None
                   else await self._changes.changes_since(user_id, changes_since))
        positions = await self._store.conversation_positions(user_id)
        if since is None:
            start = {cid: marks.delivered_seq for cid, (_, marks) in positions.items()}
        else:
            start = {}
            for raw, seq in since.items():
                cid = parse_id(raw, "conversation_id")
                if cid not in positions:
                    raise NotFound(f"conversation {cid} not found")
                if seq < 0:
                    raise Invalid("last seq must be >= 0")
                start[cid] = seq
        budget = self._sync_page
        messages: list[Message] = []
        has_more = False
        for cid, after in start.items():
            last_seq = positions[cid][0]
            if after >= last_seq:
                continue
            if budget <= 0:
                has_more = True
                break
            page = await self._store.list_messages(cid, limit=budget, after_seq=after)
            messages.extend(page)
            budget -= len(page)
            if page and page[-1].seq < last_seq:
                has_more = True
        everywhere = await self._store.watermarks_of_my_conversations(user_id)
        watermarks = await self._shown(user_id, {cid: everywhere.get(cid, {}) for cid in start})
        messages = await self.present(user_id, messages)
        return SyncResult(messages=messages, has_more=has_more, watermarks=watermarks,
                          changes=changes)

    async def typing(self, user_id: str, conversation_id: str, is_typing: bool, *,
                     check: bool = True) -> None:
        """Tell the other members. Dropped first under backpressure."""
        if check:
            conversation_id = parse_id(conversation_id, "conversation_id")
        members = await self._members.members(conversation_id)
        if user_id not in members:
            raise NotFound("conversation not found")
        barriers = await self._barriers(user_id)
        self._router.publish(
            (m for m in members if m != user_id and m not in barriers),
            Frame(TypingOut(conversation_id=conversation_id, user_id=user_id,
                            is_typing=is_typing)),
        )

    async def present(self, user_id: str, messages: list[Message]) -> list[Message]:
        """Stored messages as `user_id` is shown them anywhere (history, sync, search): with
        their reactions as that viewer sees them and attachments with fresh signed URLs."""
        return self._present(await self._changes.decorate(user_id, messages))

    def _present(self, messages: list[Message]) -> list[Message]:
        """Messages as handed out: attachments with fresh signed URLs."""
        if self._uploads is None:
            return messages
        return self._uploads.present(messages)

    async def _require_member(self, user_id: str, conversation_id: str) -> str:
        conversation_id = parse_id(conversation_id, "conversation_id")
        if user_id not in await self._members.members(conversation_id):
            raise NotFound("conversation not found")
        return conversation_id
