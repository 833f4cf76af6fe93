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
from datetime import UTC, datetime
from typing import Any

from chatsrv.adapters.storage.base import Conn, Database, Row, UniqueViolation
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
    """Implements domain.ports.Store on any Database driver."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # users -----------------------------------------------------------------------------

    async def create_user(
        self, *, user_id: str, username: str, email: str, display_name: str,
        password_hash: str, created_at: datetime,
    ) -> User:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    INSERT_USER, user_id, username, email, display_name, password_hash, created_at
                )
        except UniqueViolation as exc:
            field = "email" if "email" in exc.constraint else "username"
            raise Conflict(f"{field} is already taken", code=f"{field}_taken", field=field) from None
        return User(id=user_id, username=username, email=email, display_name=display_name,
                    created_at=created_at)

    async def get_user(self, user_id: str) -> User | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow(GET_USER, user_id)
        return None if row is None else _user(row)

    async def get_users(self, user_ids: Sequence[str]) -> list[User]:
        if not user_ids:
            return []
        marks = ", ".join(f"${i + 1}" for i in range(len(user_ids)))
        async with self.db.read() as conn:
            rows = await conn.fetch(f"SELECT {USER_COLS} FROM users WHERE id IN ({marks})",
                                    *user_ids)
        return [_user(r) for r in rows]

    async def find_login(self, login: str) -> tuple[User, str] | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow(FIND_LOGIN, login)
        return None if row is None else (_user(row), row["password_hash"])

    async def search_users(self, query: str, *, limit: int) -> list[User]:
        async with self.db.read() as conn:
            rows = await conn.fetch(SEARCH_USERS, _like(query), limit)
        return [_user(r) for r in rows]

    async def set_last_seen(self, user_id: str, at: datetime) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(SET_LAST_SEEN, user_id, at)

    # refresh tokens ----------------------------------------------------------------------

    async def add_refresh_token(
        self, *, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(INSERT_REFRESH, token_hash, user_id, family_id, expires_at)

    async def use_refresh_token(self, token_hash: str, *, now: datetime) -> RefreshGrant | None:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(GET_REFRESH, token_hash)
            if row is None or row["revoked"]:
                return None
            family = str(row["family_id"])
            if row["used"]:
                # A rotated token came back: it was stolen or replayed. Kill the family.
                await conn.execute(REVOKE_FAMILY, family)
                return None
            if _ts(row["expires_at"]) <= now:
                return None
            await conn.execute(USE_REFRESH, token_hash)
        return RefreshGrant(user_id=str(row["user_id"]), family_id=family,
                            expires_at=_ts(row["expires_at"]))

    async def revoke_refresh_family(self, token_hash: str) -> None:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(GET_REFRESH, token_hash)
            if row is not None:
                await conn.execute(REVOKE_FAMILY, str(row["family_id"]))

    # conversations -------------------------------------------------------------------------

    async def create_conversation(
        self, *, conversation_id: str, type: ConversationType, name: str | None,
        created_by: str, members: Sequence[tuple[str, Role]], direct_key: str | None,
        created_at: datetime,
    ) -> tuple[Conversation, bool]:
        try:
            async with self.db.transaction() as conn:
                if direct_key is not None:
                    existing = await conn.fetchrow(FIND_DIRECT, direct_key)
                    if existing is not None:
                        return await self._with_members(conn, existing), False
                await conn.execute(INSERT_CONVERSATION, conversation_id, type.value, name,
                                   created_by, created_at, direct_key)
                for user_id, role in members:
                    await conn.execute(INSERT_MEMBER, conversation_id, user_id, role.value,
                                       created_at)
                row = await conn.fetchrow(GET_CONVERSATION, conversation_id)
                assert row is not None
                return await self._with_members(conn, row), True
        except UniqueViolation:
            if direct_key is None:
                raise
        # Lost a race with the other side creating the same pair: theirs stands.
        async with self.db.read() as conn:
            existing = await conn.fetchrow(FIND_DIRECT, direct_key)
            assert existing is not None
            return await self._with_members(conn, existing), False

    async def _with_members(self, conn: Conn, row: Row) -> Conversation:
        members = [_member(m) for m in await conn.fetch(GET_MEMBERS, str(row["id"]))]
        return _conversation(row, members)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow(GET_CONVERSATION, conversation_id)
            if row is None:
                return None
            return await self._with_members(conn, row)

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        async with self.db.read() as conn:
            convs = await conn.fetch(MY_CONVERSATIONS, user_id)
            member_rows = await conn.fetch(MEMBERS_OF_MY_CONVERSATIONS, user_id)
            last_rows = await conn.fetch(LAST_MESSAGES, user_id)
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
        async with self.db.read() as conn:
            rows = await conn.fetch(MEMBER_IDS, conversation_id)
        return [str(r["user_id"]) for r in rows]

    async def add_members(
        self, conversation_id: str, members: Sequence[tuple[str, Role]], *, at: datetime
    ) -> list[str]:
        async with self.db.transaction() as conn:
            before = {str(r["user_id"]) for r in await conn.fetch(MEMBER_IDS, conversation_id)}
            added = []
            for user_id, role in members:
                if user_id in before:
                    continue
                await conn.execute(INSERT_MEMBER, conversation_id, user_id, role.value, at)
                added.append(user_id)
        return added

    async def remove_member(self, conversation_id: str, user_id: str) -> bool:
        async with self.db.transaction() as conn:
            existed = await conn.fetchval(
                "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
                conversation_id, user_id,
            )
            if existed:
                await conn.execute(DELETE_MEMBER, conversation_id, user_id)
        return bool(existed)

    async def contacts(self, user_id: str) -> list[str]:
        async with self.db.read() as conn:
            rows = await conn.fetch(CONTACTS, user_id)
        return [str(r["user_id"]) for r in rows]

    async def conversation_positions(self, user_id: str) -> dict[str, tuple[int, Watermarks]]:
        async with self.db.read() as conn:
            rows = await conn.fetch(POSITIONS, user_id)
        return {
            str(r["id"]): (int(r["last_seq"]),
                           Watermarks(int(r["delivered_seq"]), int(r["read_seq"])))
            for r in rows
        }

    # messages --------------------------------------------------------------------------------

    async def append_message(
        self, *, message_id: str, conversation_id: str, sender_id: str, content: str,
        message_type: str, client_msg_id: str | None, created_at: datetime,
    ) -> tuple[Message, bool]:
        try:
            async with self.db.transaction() as conn:
                if client_msg_id is not None:
                    row = await conn.fetchrow(FIND_BY_CLIENT_ID, sender_id, client_msg_id)
                    if row is not None:
                        return _message(row), False
                seq = await conn.fetchval(NEXT_SEQ, conversation_id, sender_id)
                if seq is None:
                    raise NotFound("conversation not found")
                await conn.execute(INSERT_MESSAGE, message_id, conversation_id, seq, sender_id,
                                   content, message_type, client_msg_id, created_at)
                await conn.execute(SENDER_READ, conversation_id, sender_id, seq)
        except UniqueViolation:
            if client_msg_id is None:
                raise
            # The same client_msg_id raced in from another device or retry: it stands.
            async with self.db.read() as conn:
                row = await conn.fetchrow(FIND_BY_CLIENT_ID, sender_id, client_msg_id)
            assert row is not None
            return _message(row), False
        return Message(id=message_id, conversation_id=conversation_id, seq=int(seq),
                       sender_id=sender_id, content=content, message_type=message_type,
                       client_msg_id=client_msg_id, created_at=created_at), True

    async def get_message(self, message_id: str) -> Message | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow(GET_MESSAGE, message_id)
        return None if row is None else _message(row)

    async def list_messages(
        self, conversation_id: str, *, limit: int, offset: int = 0,
        before_seq: int | None = None, after_seq: int | None = None,
    ) -> list[Message]:
        async with self.db.read() as conn:
            if after_seq is not None:
                rows = await conn.fetch(MESSAGES_AFTER, conversation_id, after_seq, limit)
            elif before_seq is not None:
                rows = await conn.fetch(MESSAGES_BEFORE, conversation_id, before_seq, limit)
            else:
                rows = await conn.fetch(MESSAGES_PAGE, conversation_id, limit, offset)
        return [_message(r) for r in rows]

    async def advance_watermarks(
        self, conversation_id: str, user_id: str, *, delivered_to: int, read_to: int
    ) -> tuple[Watermarks, Watermarks]:
        # Row lock on PostgreSQL so two concurrent receipts cannot move a mark backwards;
        # SQLite transactions are serialised already (one writer).
        lock = " FOR UPDATE OF m" if self.db.dialect == "postgres" else ""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(GET_MARKS + lock, conversation_id, user_id)
            if row is None:
                raise NotFound("conversation not found")
            before = Watermarks(int(row["delivered_seq"]), int(row["read_seq"]))
            after = advance(before, delivered_to=delivered_to, read_to=read_to,
                            last_seq=int(row["last_seq"]))
            if after != before:
                await conn.execute(SET_MARKS, conversation_id, user_id,
                                   after.delivered_seq, after.read_seq)
        return before, after

    async def watermarks(self, conversation_id: str) -> dict[str, Watermarks]:
        async with self.db.read() as conn:
            rows = await conn.fetch(ALL_MARKS, conversation_id)
        return {str(r["user_id"]): Watermarks(int(r["delivered_seq"]), int(r["read_seq"]))
                for r in rows}

    async def ping(self) -> None:
        async with self.db.read() as conn:
            await conn.fetchval("SELECT 1")
