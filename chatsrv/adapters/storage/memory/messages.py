"""Messages and watermarks in memory (the message half of MemoryStore): group commit,
history, receipts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from chatsrv.adapters.storage.memory.base import _atomic, _count, _int, _opt_text, _text, _ts, _uuid
from chatsrv.adapters.storage.memory.rows import _ConversationRow, _Tables
from chatsrv.domain.errors import Conflict, NotFound
from chatsrv.domain.model import Message, Watermarks
from chatsrv.domain.receipts import advance


class MemoryMessageStore(_Tables):
    """Messages and watermarks; MemoryStore adds users, tokens and conversations."""

    # messages --------------------------------------------------------------------------

    @_atomic
    def append_message(
        self, *, message_id: str, conversation_id: str, sender_id: str, content: str,
        message_type: str, client_msg_id: str | None, created_at: datetime,
    ) -> tuple[Message, bool]:
        """Commit a message with the next seq; a repeated (sender_id, client_msg_id)
        returns the stored message and False. Raises NotFound for a sender outside the
        conversation."""
        draft = Message(id=message_id, conversation_id=conversation_id, seq=0,
                        sender_id=sender_id, content=content, message_type=message_type,
                        client_msg_id=client_msg_id, created_at=created_at)
        [outcome] = self._append([draft])
        if isinstance(outcome, NotFound):
            raise outcome
        return outcome

    @_atomic
    def append_messages(
        self, drafts: Sequence[Message]
    ) -> list[tuple[Message, bool] | NotFound]:
        """Group commit: an outcome per draft, in order. (message, True) with the next seq
        of its conversation; (stored, False) for a (sender, client_msg_id) stored already,
        in any conversation, or earlier in the batch; NotFound for a sender outside the
        conversation. `seq` of a draft is ignored. The whole batch is refused (Invalid,
        Conflict for a message id in use) before anything is stored."""
        return self._append(drafts)

    @_atomic
    def get_message(self, message_id: str) -> Message | None:
        return self._messages.get(_uuid(message_id, "message_id"))

    @_atomic
    def list_messages(
        self, conversation_id: str, *, limit: int, offset: int = 0,
        before_seq: int | None = None, after_seq: int | None = None,
    ) -> list[Message]:
        """Newest first for offset/before_seq paging; oldest first for after_seq (which
        wins over before_seq; offset counts only without a cursor)."""
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        limit = _count(limit, "LIMIT")
        if after_seq is not None:
            start = max(0, _int(after_seq))  # messages[start] has seq after_seq + 1
            return [] if conv is None else conv.messages[start:start + limit]
        last_seq = 0 if conv is None else conv.last_seq
        if before_seq is not None:
            end = min(_int(before_seq) - 1, last_seq)  # messages[:end]: seq < before_seq
        else:
            end = last_seq - _count(offset, "OFFSET")
        if conv is None or end <= 0:
            return []
        return conv.messages[max(0, end - limit):end][::-1]

    @_atomic
    def advance_watermarks(
        self, conversation_id: str, user_id: str, *, delivered_to: int, read_to: int
    ) -> tuple[Watermarks, Watermarks]:
        """Move forward only, never past last_seq. Returns (before, after); NotFound for a
        user outside the conversation."""
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        member = None if conv is None else conv.members.get(_uuid(user_id, "user_id"))
        if conv is None or member is None:
            raise NotFound("conversation not found")
        before = member.marks()
        after = advance(before, delivered_to=delivered_to, read_to=read_to,
                        last_seq=conv.last_seq)
        member.delivered_seq, member.read_seq = after.delivered_seq, after.read_seq
        return before, after

    @_atomic
    def watermarks(self, conversation_id: str) -> dict[str, Watermarks]:
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        return {} if conv is None else _marks(conv)

    @_atomic
    def watermarks_of_my_conversations(
        self, user_id: str
    ) -> dict[str, dict[str, Watermarks]]:
        """conversation id -> member -> watermarks, for every conversation of user_id."""
        mine = self._memberships.get(_uuid(user_id, "user_id"), {})
        return {cid: _marks(self._conversations[cid]) for cid in mine}

    # inside ----------------------------------------------------------------------------

    def _append(self, drafts: Sequence[Message]) -> list[tuple[Message, bool] | NotFound]:
        """Plan the whole batch first (everything it refuses raises here), then store."""
        out: list[tuple[Message, bool] | NotFound] = []
        new: dict[tuple[str, str], Message] = {}  # this batch's, by (sender, client_msg_id)
        stored: list[tuple[_ConversationRow, Message]] = []
        ids: set[str] = set()
        next_seq: dict[str, int] = {}
        for d in drafts:
            m = _stored_form(d)
            if m.client_msg_id is not None:
                key = (m.sender_id, m.client_msg_id)
                earlier = self._by_client_id.get(key) or new.get(key)
                if earlier is not None:
                    out.append((earlier, False))
                    continue
            conv = self._conversations.get(m.conversation_id)
            if conv is None or m.sender_id not in conv.members:
                out.append(NotFound("conversation not found"))
                continue
            if m.id in self._messages or m.id in ids:
                raise Conflict("message id is already in use")
            seq = next_seq[conv.id] = next_seq.get(conv.id, conv.last_seq) + 1
            m = replace(m, seq=seq)
            ids.add(m.id)
            if m.client_msg_id is not None:
                new[(m.sender_id, m.client_msg_id)] = m
            stored.append((conv, m))
            out.append((replace(d, seq=seq), True))
        for conv, m in stored:
            conv.messages.append(m)
            self._messages[m.id] = m
            if m.client_msg_id is not None:
                self._by_client_id[(m.sender_id, m.client_msg_id)] = m
            # the sender has obviously seen what they sent
            sender = conv.members[m.sender_id]
            sender.delivered_seq = sender.read_seq = max(sender.read_seq, m.seq)
        return out


def _stored_form(d: Message) -> Message:
    """A draft as a row holds it, or Invalid."""
    _text(d.content)
    _text(d.message_type)
    return replace(d, id=_uuid(d.id, "message_id"),
                   conversation_id=_uuid(d.conversation_id, "conversation_id"),
                   sender_id=_uuid(d.sender_id, "sender_id"),
                   reply_to=None if d.reply_to is None else _uuid(d.reply_to, "reply_to"),
                   client_msg_id=_opt_text(d.client_msg_id), created_at=_ts(d.created_at))


def _marks(conv: _ConversationRow) -> dict[str, Watermarks]:
    return {m.user_id: m.marks() for m in conv.members.values()}
