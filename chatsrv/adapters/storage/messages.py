"""Messages and watermarks over SQL (the message half of SqlStore): group commit, history,
receipts.

seq is allocated by `UPDATE conversations SET last_seq = last_seq + n ... RETURNING` under
the row lock, in the same statement that checks the sender's membership: gap-free,
race-free, and an outsider cannot slip a message in between a check and the insert.
Watermarks only move forward, never past last_seq.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from chatsrv.adapters.storage.base import Database, Op, UniqueViolation, exec_, one, rows, val
from chatsrv.adapters.storage.rows import MESSAGE_COLS, mentions_json, message_of
from chatsrv.adapters.storage.uploads import link_attachments, load_attachments
from chatsrv.domain.errors import NotFound
from chatsrv.domain.model import Message, Watermarks
from chatsrv.domain.receipts import advance

MEMBERS_OF_MY_CONVERSATIONS = """SELECT o.conversation_id, o.user_id, o.role, o.delivered_seq,
       o.read_seq, o.joined_at
FROM conversation_members m JOIN conversation_members o ON o.conversation_id = m.conversation_id
WHERE m.user_id = $1 ORDER BY o.joined_at, o.user_id"""
FIND_BY_CLIENT_ID = f"SELECT {MESSAGE_COLS} FROM messages WHERE sender_id = $1 AND client_msg_id = $2"
NEXT_SEQ = """UPDATE conversations SET last_seq = last_seq + 1
WHERE id = $1 AND EXISTS (SELECT 1 FROM conversation_members
                          WHERE conversation_id = $1 AND user_id = $2)
RETURNING last_seq"""
INSERT_MESSAGE = """INSERT INTO messages (id, conversation_id, seq, sender_id, content, message_type,
                      client_msg_id, created_at, reply_to, mentions)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""
# the sender has obviously seen what they sent
SENDER_READ = """UPDATE conversation_members SET delivered_seq = $3, read_seq = $3
WHERE conversation_id = $1 AND user_id = $2 AND read_seq < $3"""
GET_MESSAGE = f"SELECT {MESSAGE_COLS} FROM messages WHERE id = $1"

# PostgreSQL group commit: a batch of messages in one statement. Senders outside their
# conversation and messages stored already (same sender and client_msg_id) are filtered out;
# each conversation's last_seq moves by its number of messages under the row lock, and the
# new seqs are numbered in batch order.
FIND_BY_CLIENT_IDS_PG = f"""SELECT {MESSAGE_COLS} FROM messages
WHERE (sender_id, client_msg_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"""
APPEND_BATCH_PG = """WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                         $6::text[], $7::timestamptz[], $8::uuid[], $9::text[])
        WITH ORDINALITY AS t(id, conversation_id, sender_id, content, message_type,
                             client_msg_id, created_at, reply_to, mentions, ord)
), allowed AS (
    SELECT i.* FROM input i
    WHERE EXISTS (SELECT 1 FROM conversation_members cm
                  WHERE cm.conversation_id = i.conversation_id AND cm.user_id = i.sender_id)
      AND (i.client_msg_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM messages m
            WHERE m.sender_id = i.sender_id AND m.client_msg_id = i.client_msg_id))
), counts AS (
    SELECT conversation_id, count(*) AS n FROM allowed GROUP BY conversation_id
), bumped AS (
    UPDATE conversations c SET last_seq = c.last_seq + counts.n
    FROM counts WHERE c.id = counts.conversation_id
    RETURNING c.id, c.last_seq, counts.n
), numbered AS (
    SELECT a.*, b.last_seq - b.n
               + row_number() OVER (PARTITION BY a.conversation_id ORDER BY a.ord) AS seq
    FROM allowed a JOIN bumped b ON b.id = a.conversation_id
), inserted AS (
    INSERT INTO messages (id, conversation_id, seq, sender_id, content, message_type,
                          client_msg_id, created_at, reply_to, mentions)
    SELECT id, conversation_id, seq, sender_id, content, message_type, client_msg_id,
           created_at, reply_to, mentions FROM numbered
    RETURNING id, seq
), sender_read AS (
    UPDATE conversation_members cm
    SET delivered_seq = GREATEST(cm.delivered_seq, x.seq), read_seq = GREATEST(cm.read_seq, x.seq)
    FROM (SELECT conversation_id, sender_id, max(seq) AS seq FROM numbered GROUP BY 1, 2) x
    WHERE cm.conversation_id = x.conversation_id AND cm.user_id = x.sender_id
)
SELECT id, seq FROM inserted"""
MESSAGES_PAGE = f"""SELECT {MESSAGE_COLS} FROM messages WHERE conversation_id = $1
ORDER BY seq DESC LIMIT $2 OFFSET $3"""
MESSAGES_BEFORE = f"""SELECT {MESSAGE_COLS} FROM messages WHERE conversation_id = $1 AND seq < $2
ORDER BY seq DESC LIMIT $3"""
MESSAGES_AFTER = f"""SELECT {MESSAGE_COLS} FROM messages WHERE conversation_id = $1 AND seq > $2
ORDER BY seq ASC LIMIT $3"""

GET_MARKS = """SELECT m.delivered_seq, m.read_seq, c.last_seq
FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
WHERE m.conversation_id = $1 AND m.user_id = $2"""
SET_MARKS = """UPDATE conversation_members SET delivered_seq = $3, read_seq = $4
WHERE conversation_id = $1 AND user_id = $2"""
ALL_MARKS = """SELECT user_id, delivered_seq, read_seq FROM conversation_members
WHERE conversation_id = $1"""



class MessageStore:
    """Messages and watermarks; SqlStore adds users, tokens and conversations."""

    db: Database

    async def append_message(
        self, *, message_id: str, conversation_id: str, sender_id: str, content: str,
        message_type: str, client_msg_id: str | None, created_at: datetime,
    ) -> tuple[Message, bool]:
        draft = Message(id=message_id, conversation_id=conversation_id, seq=0,
                        sender_id=sender_id, content=content, message_type=message_type,
                        client_msg_id=client_msg_id, created_at=created_at)
        [outcome] = await self.append_messages([draft])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def append_messages(
        self, drafts: Sequence[Message]
    ) -> list[tuple[Message, bool] | NotFound]:
        """Commit several messages in one transaction (group commit). Each gets its own
        outcome: (message, created) or NotFound for a sender outside the conversation.
        `seq` of a draft is ignored; the stored one is returned."""

        def op() -> Op[list[tuple[Message, bool] | NotFound]]:
            out = []
            for d in drafts:
                out.append((yield from _append(d)))
            return out

        try:
            if self.db.dialect == "postgres":
                # set-based: a constant number of round trips per batch, each statement
                # atomic by itself (the unique constraint guards against double sends)
                return await self.db.run(_append_batch_pg(drafts), atomic=False)
            return await self.db.run(op())
        except UniqueViolation:
            if not any(d.client_msg_id for d in drafts):
                raise
        # One draft collided with a concurrent send of the same client_msg_id and the batch
        # rolled back: redo them one at a time so only the duplicate is affected.
        return [await self._append_alone(d) for d in drafts]

    async def _append_alone(self, d: Message) -> tuple[Message, bool] | NotFound:
        def op() -> Op[tuple[Message, bool] | NotFound]:
            return (yield from _append(d))

        try:
            return await self.db.run(op())
        except UniqueViolation:
            if d.client_msg_id is None:
                raise

        # The same client_msg_id raced in from another device or retry: it stands.
        def stored() -> Op[tuple[Message, bool]]:
            row = yield one(FIND_BY_CLIENT_ID, d.sender_id, d.client_msg_id)
            return message_of(row), False

        return await self.db.run(stored(), write=False)

    async def get_message(self, message_id: str) -> Message | None:
        def op() -> Op[Message | None]:
            row = yield one(GET_MESSAGE, message_id)
            if row is None:
                return None
            [found] = yield from load_attachments(self.db.dialect, [message_of(row)])
            return found

        return await self.db.run(op(), write=False)

    async def list_messages(
        self, conversation_id: str, *, limit: int, offset: int = 0,
        before_seq: int | None = None, after_seq: int | None = None,
    ) -> list[Message]:
        if after_seq is not None:
            query = rows(MESSAGES_AFTER, conversation_id, after_seq, limit)
        elif before_seq is not None:
            query = rows(MESSAGES_BEFORE, conversation_id, before_seq, limit)
        else:
            query = rows(MESSAGES_PAGE, conversation_id, limit, offset)

        def op() -> Op[list[Message]]:
            found = yield query
            return (yield from load_attachments(self.db.dialect,
                                                [message_of(r) for r in found]))

        return await self.db.run(op(), write=False)

    async def advance_watermarks(
        self, conversation_id: str, user_id: str, *, delivered_to: int, read_to: int
    ) -> tuple[Watermarks, Watermarks]:
        # Row lock on PostgreSQL so two concurrent receipts cannot move a mark backwards;
        # SQLite transactions are serialised already (one writer).
        lock = " FOR UPDATE OF m" if self.db.dialect == "postgres" else ""

        def op() -> Op[tuple[Watermarks, Watermarks]]:
            row = yield one(GET_MARKS + lock, conversation_id, user_id)
            if row is None:
                raise NotFound("conversation not found")
            before = Watermarks(int(row["delivered_seq"]), int(row["read_seq"]))
            after = advance(before, delivered_to=delivered_to, read_to=read_to,
                            last_seq=int(row["last_seq"]))
            if after != before:
                yield exec_(SET_MARKS, conversation_id, user_id, after.delivered_seq,
                            after.read_seq)
            return before, after

        return await self.db.run(op())

    async def watermarks(self, conversation_id: str) -> dict[str, Watermarks]:
        def op() -> Op[dict[str, Watermarks]]:
            found = yield rows(ALL_MARKS, conversation_id)
            return {str(r["user_id"]): Watermarks(int(r["delivered_seq"]), int(r["read_seq"]))
                    for r in found}

        return await self.db.run(op(), write=False)

    async def watermarks_of_my_conversations(
        self, user_id: str
    ) -> dict[str, dict[str, Watermarks]]:
        def op() -> Op[dict[str, dict[str, Watermarks]]]:
            found = yield rows(MEMBERS_OF_MY_CONVERSATIONS, user_id)
            out: dict[str, dict[str, Watermarks]] = {}
            for r in found:
                out.setdefault(str(r["conversation_id"]), {})[str(r["user_id"])] = Watermarks(
                    int(r["delivered_seq"]), int(r["read_seq"]))
            return out

        return await self.db.run(op(), write=False)


def _append(d: Message) -> Op[tuple[Message, bool] | NotFound]:
    if d.client_msg_id is not None:
        row = yield one(FIND_BY_CLIENT_ID, d.sender_id, d.client_msg_id)
        if row is not None:
            return message_of(row), False
    seq = yield val(NEXT_SEQ, d.conversation_id, d.sender_id)
    if seq is None:
        return NotFound("conversation not found")
    yield exec_(INSERT_MESSAGE, d.id, d.conversation_id, seq, d.sender_id, d.content,
                d.message_type, d.client_msg_id, d.created_at, d.reply_to,
                mentions_json(d.mentions))
    yield from link_attachments(d)
    yield exec_(SENDER_READ, d.conversation_id, d.sender_id, seq)
    return replace(d, seq=int(seq)), True


def append_batch_args(drafts: Sequence[Message]) -> tuple[list[Any], ...]:
    """APPEND_BATCH_PG's arguments for these drafts: one array per column."""
    return ([d.id for d in drafts], [d.conversation_id for d in drafts],
            [d.sender_id for d in drafts], [d.content for d in drafts],
            [d.message_type for d in drafts], [d.client_msg_id for d in drafts],
            [d.created_at for d in drafts], [d.reply_to for d in drafts],
            [mentions_json(d.mentions) for d in drafts])


def _append_batch_pg(drafts: Sequence[Message]) -> Op[list[tuple[Message, bool] | NotFound]]:
    """One statement in the usual case. Drafts already stored (a resend of the same
    client_msg_id) and outsiders' drafts are left out by the statement; only if some draft
    was left out does a second query tell which were resends."""
    inserted = yield rows(APPEND_BATCH_PG, *append_batch_args(drafts))
    seqs = {str(r["id"]): int(r["seq"]) for r in inserted}
    for d in drafts:
        if d.id in seqs:
            yield from link_attachments(d)
    stored: dict[tuple[str, str], Message] = {}
    left_out = [d for d in drafts if d.id not in seqs and d.client_msg_id is not None]
    if left_out:
        found = yield rows(FIND_BY_CLIENT_IDS_PG, [d.sender_id for d in left_out],
                           [d.client_msg_id for d in left_out])
        for r in found:
            m = message_of(r)
            stored[(m.sender_id, m.client_msg_id or "")] = m
    out: list[tuple[Message, bool] | NotFound] = []
    for d in drafts:
        if d.id in seqs:
            out.append((replace(d, seq=seqs[d.id]), True))
        elif d.client_msg_id is not None and (d.sender_id, d.client_msg_id) in stored:
            out.append((stored[(d.sender_id, d.client_msg_id)], False))
        else:
            out.append(NotFound("conversation not found"))
    return out
