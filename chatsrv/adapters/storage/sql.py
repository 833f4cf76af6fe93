"""The Store port over SQL, the same on PostgreSQL and SQLite (see base.py for the driver).

Rules that need atomicity are enforced in the statements themselves:
- seq: `UPDATE conversations SET last_seq = last_seq + 1 ... RETURNING` takes the row lock,
  so concurrent senders to one conversation serialise and a rolled-back send gives its
  number back: gap-free and race-free.
- membership of the sender is part of that same UPDATE, so an outsider cannot slip a
  message in between a check and the insert.
- watermarks only move forward (`WHERE read_seq < $n`), never past last_seq.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from chatsrv.adapters.storage.base import Database, Op, Row, UniqueViolation, exec_, one, rows, val
from chatsrv.domain.errors import Conflict, NotFound
from chatsrv.domain.model import (
    Conversation,
    ConversationSummary,
    ConversationType,
    Member,
    Message,
    RefreshGrant,
    Role,
    User,
    Watermarks,
)
from chatsrv.domain.receipts import advance


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value)


def _opt_ts(value: Any) -> datetime | None:
    return None if value is None else _ts(value)


def _user(r: Row) -> User:
    return User(
        id=str(r["id"]), username=r["username"], email=r["email"],
        display_name=r["display_name"], created_at=_ts(r["created_at"]),
        last_seen=_opt_ts(r["last_seen"]),
    )


def _message(r: Row) -> Message:
    return Message(
        id=str(r["id"]), conversation_id=str(r["conversation_id"]), seq=int(r["seq"]),
        sender_id=str(r["sender_id"]), content=r["content"], message_type=r["message_type"],
        client_msg_id=r["client_msg_id"], created_at=_ts(r["created_at"]),
    )


def _member(r: Row) -> Member:
    return Member(
        user_id=str(r["user_id"]), role=Role(r["role"]), delivered_seq=int(r["delivered_seq"]),
        read_seq=int(r["read_seq"]), joined_at=_ts(r["joined_at"]),
    )


def _conversation(r: Row, members: Sequence[Member] = ()) -> Conversation:
    return Conversation(
        id=str(r["id"]), type=ConversationType(r["type"]), name=r["name"],
        created_by=str(r["created_by"]), created_at=_ts(r["created_at"]),
        last_seq=int(r["last_seq"]), members=tuple(members),
    )


USER_COLS = "id, username, email, display_name, created_at, last_seen"
MESSAGE_COLS = "id, conversation_id, seq, sender_id, content, message_type, client_msg_id, created_at"
CONV_COLS = "id, type, name, created_by, created_at, last_seq"

INSERT_USER = """INSERT INTO users (id, username, email, display_name, password_hash, created_at)
VALUES ($1, $2, $3, $4, $5, $6)"""
GET_USER = f"SELECT {USER_COLS} FROM users WHERE id = $1"
FIND_LOGIN = f"""SELECT {USER_COLS}, password_hash FROM users
WHERE lower(email) = lower($1) OR lower(username) = lower($1) LIMIT 1"""
SEARCH_USERS = f"""SELECT {USER_COLS} FROM users
WHERE lower(username) LIKE $1 ESCAPE '\\' OR lower(display_name) LIKE $1 ESCAPE '\\'
ORDER BY username LIMIT $2"""
SET_LAST_SEEN = "UPDATE users SET last_seen = $2 WHERE id = $1"

INSERT_REFRESH = """INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at)
VALUES ($1, $2, $3, $4)"""
GET_REFRESH = """SELECT user_id, family_id, expires_at, used, revoked FROM refresh_tokens
WHERE token_hash = $1"""
USE_REFRESH = "UPDATE refresh_tokens SET used = TRUE WHERE token_hash = $1"
REVOKE_FAMILY = "UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = $1"

INSERT_CONVERSATION = """INSERT INTO conversations (id, type, name, created_by, created_at, direct_key)
VALUES ($1, $2, $3, $4, $5, $6)"""
FIND_DIRECT = f"SELECT {CONV_COLS} FROM conversations WHERE direct_key = $1"
GET_CONVERSATION = f"SELECT {CONV_COLS} FROM conversations WHERE id = $1"
INSERT_MEMBER = """INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, user_id) DO NOTHING"""
GET_MEMBERS = """SELECT user_id, role, delivered_seq, read_seq, joined_at
FROM conversation_members WHERE conversation_id = $1 ORDER BY joined_at, user_id"""
MEMBER_IDS = "SELECT user_id FROM conversation_members WHERE conversation_id = $1"
DELETE_MEMBER = "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
IS_MEMBER = "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
MY_CONVERSATIONS = """SELECT c.id, c.type, c.name, c.created_by, c.created_at, c.last_seq,
       m.read_seq AS my_read_seq
FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
WHERE m.user_id = $1"""
MEMBERS_OF_MY_CONVERSATIONS = """SELECT o.conversation_id, o.user_id, o.role, o.delivered_seq,
       o.read_seq, o.joined_at
FROM conversation_members m JOIN conversation_members o ON o.conversation_id = m.conversation_id
WHERE m.user_id = $1 ORDER BY o.joined_at, o.user_id"""
LAST_MESSAGES = f"""SELECT {", ".join("x." + c.strip() for c in MESSAGE_COLS.split(","))}
FROM conversation_members m
JOIN conversations c ON c.id = m.conversation_id
JOIN messages x ON x.conversation_id = c.id AND x.seq = c.last_seq
WHERE m.user_id = $1"""
CONTACTS = """SELECT DISTINCT o.user_id FROM conversation_members m
JOIN conversation_members o ON o.conversation_id = m.conversation_id
WHERE m.user_id = $1 AND o.user_id <> $1"""
POSITIONS = """SELECT c.id, c.last_seq, m.delivered_seq, m.read_seq
FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
WHERE m.user_id = $1"""

FIND_BY_CLIENT_ID = f"SELECT {MESSAGE_COLS} FROM messages WHERE sender_id = $1 AND client_msg_id = $2"
NEXT_SEQ = """UPDATE conversations SET last_seq = last_seq + 1
WHERE id = $1 AND EXISTS (SELECT 1 FROM conversation_members
                          WHERE conversation_id = $1 AND user_id = $2)
RETURNING last_seq"""
INSERT_MESSAGE = """INSERT INTO messages (id, conversation_id, seq, sender_id, content, message_type,
                      client_msg_id, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
# the sender has obviously seen what they sent
SENDER_READ = """UPDATE conversation_members SET delivered_seq = $3, read_seq = $3
WHERE conversation_id = $1 AND user_id = $2 AND read_seq < $3"""
GET_MESSAGE = f"SELECT {MESSAGE_COLS} FROM messages WHERE id = $1"

# PostgreSQL group commit: a batch of messages in one statement. Senders outside their
# conversation are filtered out (they get NotFound); each conversation's last_seq moves by
# its number of messages under the row lock, and the new seqs are numbered in batch order.
FIND_BY_CLIENT_IDS_PG = f"""SELECT {MESSAGE_COLS} FROM messages
WHERE (sender_id, client_msg_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"""
APPEND_BATCH_PG = """WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                         $6::text[], $7::timestamptz[])
        WITH ORDINALITY AS t(id, conversation_id, sender_id, content, message_type,
                             client_msg_id, created_at, ord)
), allowed AS (
    SELECT i.* FROM input i
    WHERE EXISTS (SELECT 1 FROM conversation_members cm
                  WHERE cm.conversation_id = i.conversation_id AND cm.user_id = i.sender_id)
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
                          client_msg_id, created_at)
    SELECT id, conversation_id, seq, sender_id, content, message_type, client_msg_id,
           created_at FROM numbered
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


def _like(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlStore:
    """Implements domain.ports.Store on any Database driver (one `db.run` per method)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # users -----------------------------------------------------------------------------

    async def create_user(
        self, *, user_id: str, username: str, email: str, display_name: str,
        password_hash: str, created_at: datetime,
    ) -> User:
        def op() -> Op[None]:
            yield exec_(INSERT_USER, user_id, username, email, display_name, password_hash,
                        created_at)

        try:
            await self.db.run(op())
        except UniqueViolation as exc:
            field = "email" if "email" in exc.constraint else "username"
            raise Conflict(f"{field} is already taken", code=f"{field}_taken", field=field) from None
        return User(id=user_id, username=username, email=email, display_name=display_name,
                    created_at=created_at)

    async def get_user(self, user_id: str) -> User | None:
        def op() -> Op[User | None]:
            row = yield one(GET_USER, user_id)
            return None if row is None else _user(row)

        return await self.db.run(op(), write=False)

    async def get_users(self, user_ids: Sequence[str]) -> list[User]:
        if not user_ids:
            return []
        marks = ", ".join(f"${i + 1}" for i in range(len(user_ids)))

        def op() -> Op[list[User]]:
            found = yield rows(f"SELECT {USER_COLS} FROM users WHERE id IN ({marks})", *user_ids)
            return [_user(r) for r in found]

        return await self.db.run(op(), write=False)

    async def find_login(self, login: str) -> tuple[User, str] | None:
        def op() -> Op[tuple[User, str] | None]:
            row = yield one(FIND_LOGIN, login)
            return None if row is None else (_user(row), row["password_hash"])

        return await self.db.run(op(), write=False)

    async def search_users(self, query: str, *, limit: int) -> list[User]:
        def op() -> Op[list[User]]:
            found = yield rows(SEARCH_USERS, _like(query), limit)
            return [_user(r) for r in found]

        return await self.db.run(op(), write=False)

    async def set_last_seen(self, user_id: str, at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(SET_LAST_SEEN, user_id, at)

        await self.db.run(op())

    # refresh tokens ----------------------------------------------------------------------

    async def add_refresh_token(
        self, *, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> None:
        def op() -> Op[None]:
            yield exec_(INSERT_REFRESH, token_hash, user_id, family_id, expires_at)

        await self.db.run(op())

    async def use_refresh_token(self, token_hash: str, *, now: datetime) -> RefreshGrant | None:
        def op() -> Op[RefreshGrant | None]:
            row = yield one(GET_REFRESH, token_hash)
            if row is None or row["revoked"]:
                return None
            family = str(row["family_id"])
            if row["used"]:
                # A rotated token came back: it was stolen or replayed. Kill the family.
                yield exec_(REVOKE_FAMILY, family)
                return None
            if _ts(row["expires_at"]) <= now:
                return None
            yield exec_(USE_REFRESH, token_hash)
            return RefreshGrant(user_id=str(row["user_id"]), family_id=family,
                                expires_at=_ts(row["expires_at"]))

        return await self.db.run(op())

    async def revoke_refresh_family(self, token_hash: str) -> None:
        def op() -> Op[None]:
            row = yield one(GET_REFRESH, token_hash)
            if row is not None:
                yield exec_(REVOKE_FAMILY, str(row["family_id"]))

        await self.db.run(op())

    # conversations -------------------------------------------------------------------------

    async def create_conversation(
        self, *, conversation_id: str, type: ConversationType, name: str | None,
        created_by: str, members: Sequence[tuple[str, Role]], direct_key: str | None,
        created_at: datetime,
    ) -> tuple[Conversation, bool]:
        def op() -> Op[tuple[Conversation, bool]]:
            if direct_key is not None:
                existing = yield one(FIND_DIRECT, direct_key)
                if existing is not None:
                    return (yield from _with_members(existing)), False
            yield exec_(INSERT_CONVERSATION, conversation_id, type.value, name, created_by,
                        created_at, direct_key)
            for user_id, role in members:
                yield exec_(INSERT_MEMBER, conversation_id, user_id, role.value, created_at)
            row = yield one(GET_CONVERSATION, conversation_id)
            return (yield from _with_members(row)), True

        try:
            return await self.db.run(op())
        except UniqueViolation:
            if direct_key is None:
                raise

        # Lost a race with the other side creating the same pair: theirs stands.
        def existing_op() -> Op[tuple[Conversation, bool]]:
            row = yield one(FIND_DIRECT, direct_key)
            return (yield from _with_members(row)), False

        return await self.db.run(existing_op(), write=False)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        def op() -> Op[Conversation | None]:
            row = yield one(GET_CONVERSATION, conversation_id)
            if row is None:
                return None
            return (yield from _with_members(row))

        return await self.db.run(op(), write=False)

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        def op() -> Op[tuple[list[Row], list[Row], list[Row]]]:
            convs = yield rows(MY_CONVERSATIONS, user_id)
            member_rows = yield rows(MEMBERS_OF_MY_CONVERSATIONS, user_id)
            last_rows = yield rows(LAST_MESSAGES, user_id)
            return convs, member_rows, last_rows

        convs, member_rows, last_rows = await self.db.run(op(), write=False)
        members: dict[str, list[Member]] = {}
        for r in member_rows:
            members.setdefault(str(r["conversation_id"]), []).append(_member(r))
        last = {str(r["conversation_id"]): _message(r) for r in last_rows}
        out = []
        for r in convs:
            cid = str(r["id"])
            conv = _conversation(r, members.get(cid, ()))
            out.append(ConversationSummary(
                conversation=conv, last_message=last.get(cid),
                unread=max(0, conv.last_seq - int(r["my_read_seq"])),
            ))
        # most recent activity first
        out.sort(key=lambda s: (s.last_message.created_at if s.last_message
                                else s.conversation.created_at), reverse=True)
        return out

    async def member_ids(self, conversation_id: str) -> list[str]:
        def op() -> Op[list[str]]:
            found = yield rows(MEMBER_IDS, conversation_id)
            return [str(r["user_id"]) for r in found]

        return await self.db.run(op(), write=False)

    async def add_members(
        self, conversation_id: str, members: Sequence[tuple[str, Role]], *, at: datetime
    ) -> list[str]:
        def op() -> Op[list[str]]:
            found = yield rows(MEMBER_IDS, conversation_id)
            before = {str(r["user_id"]) for r in found}
            added = []
            for user_id, role in members:
                if user_id not in before:
                    yield exec_(INSERT_MEMBER, conversation_id, user_id, role.value, at)
                    added.append(user_id)
            return added

        return await self.db.run(op())

    async def remove_member(self, conversation_id: str, user_id: str) -> bool:
        def op() -> Op[bool]:
            existed = yield val(IS_MEMBER, conversation_id, user_id)
            if existed:
                yield exec_(DELETE_MEMBER, conversation_id, user_id)
            return bool(existed)

        return await self.db.run(op())

    async def contacts(self, user_id: str) -> list[str]:
        def op() -> Op[list[str]]:
            found = yield rows(CONTACTS, user_id)
            return [str(r["user_id"]) for r in found]

        return await self.db.run(op(), write=False)

    async def conversation_positions(self, user_id: str) -> dict[str, tuple[int, Watermarks]]:
        def op() -> Op[dict[str, tuple[int, Watermarks]]]:
            found = yield rows(POSITIONS, user_id)
            return {
                str(r["id"]): (int(r["last_seq"]),
                               Watermarks(int(r["delivered_seq"]), int(r["read_seq"])))
                for r in found
            }

        return await self.db.run(op(), write=False)

    # messages --------------------------------------------------------------------------------

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
            return _message(row), False

        return await self.db.run(stored(), write=False)

    async def get_message(self, message_id: str) -> Message | None:
        def op() -> Op[Message | None]:
            row = yield one(GET_MESSAGE, message_id)
            return None if row is None else _message(row)

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
            return [_message(r) for r in found]

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

    async def ping(self) -> None:
        def op() -> Op[None]:
            yield val("SELECT 1")

        await self.db.run(op(), write=False)


def _append(d: Message) -> Op[tuple[Message, bool] | NotFound]:
    if d.client_msg_id is not None:
        row = yield one(FIND_BY_CLIENT_ID, d.sender_id, d.client_msg_id)
        if row is not None:
            return _message(row), False
    seq = yield val(NEXT_SEQ, d.conversation_id, d.sender_id)
    if seq is None:
        return NotFound("conversation not found")
    yield exec_(INSERT_MESSAGE, d.id, d.conversation_id, seq, d.sender_id, d.content,
                d.message_type, d.client_msg_id, d.created_at)
    yield exec_(SENDER_READ, d.conversation_id, d.sender_id, seq)
    return replace(d, seq=int(seq)), True


def _append_batch_pg(drafts: Sequence[Message]) -> Op[list[tuple[Message, bool] | NotFound]]:
    stored: dict[tuple[str, str], Message] = {}
    keyed = [d for d in drafts if d.client_msg_id is not None]
    if keyed:
        found = yield rows(FIND_BY_CLIENT_IDS_PG, [d.sender_id for d in keyed],
                           [d.client_msg_id for d in keyed])
        for r in found:
            m = _message(r)
            stored[(m.sender_id, m.client_msg_id or "")] = m
    fresh = [d for d in drafts if (d.sender_id, d.client_msg_id or "") not in stored
             or d.client_msg_id is None]
    seqs: dict[str, int] = {}
    if fresh:
        inserted = yield rows(
            APPEND_BATCH_PG, [d.id for d in fresh], [d.conversation_id for d in fresh],
            [d.sender_id for d in fresh], [d.content for d in fresh],
            [d.message_type for d in fresh], [d.client_msg_id for d in fresh],
            [d.created_at for d in fresh])
        seqs = {str(r["id"]): int(r["seq"]) for r in inserted}
    out: list[tuple[Message, bool] | NotFound] = []
    for d in drafts:
        if d.client_msg_id is not None and (d.sender_id, d.client_msg_id) in stored:
            out.append((stored[(d.sender_id, d.client_msg_id)], False))
        elif d.id in seqs:
            out.append((replace(d, seq=seqs[d.id]), True))
        else:
            out.append(NotFound("conversation not found"))
    return out


def _with_members(row: Row) -> Op[Conversation]:
    members = yield rows(GET_MEMBERS, str(row["id"]))
    return _conversation(row, [_member(m) for m in members])
