"""The Store port over SQL, the same on PostgreSQL and SQLite (see base.py for the drivers):
users and conversations here; messages and watermarks in messages.py; sessions, refresh
tokens and administration in sessions.py; rows
to entities in rows.py. A one_to_one conversation is unique per pair by its direct_key, also
when both sides create it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, Row, UniqueViolation, exec_, one, rows, val
from chatsrv.adapters.storage.changes import (
    LAST_CHANGE,
    mentions_unread_many_pg,
    mentions_unread_op,
)
from chatsrv.adapters.storage.messages import MEMBERS_OF_MY_CONVERSATIONS, MessageStore
from chatsrv.adapters.storage.rows import (
    CONV_COLS,
    MESSAGE_COLS,
    USER_COLS,
    conversation_of,
    member_of,
    message_of,
    user_of,
)
from chatsrv.adapters.storage.sessions import SessionStore, like_pattern
from chatsrv.adapters.storage.uploads import load_attachments
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import (
    Arrival,
    Conversation,
    ConversationSummary,
    ConversationType,
    Member,
    Message,
    Role,
    User,
    Watermarks,
)

INSERT_USER = """INSERT INTO users (id, username, email, display_name, password_hash, created_at)
VALUES ($1, $2, $3, $4, $5, $6)"""
GET_USER = f"SELECT {USER_COLS} FROM users WHERE id = $1"
FIND_LOGIN = f"""SELECT {USER_COLS}, password_hash FROM users
WHERE lower(email) = lower($1) OR lower(username) = lower($1) LIMIT 1"""
SEARCH_USERS = f"""SELECT {USER_COLS} FROM users
WHERE (lower(username) LIKE $1 ESCAPE '\\' OR lower(display_name) LIKE $1 ESCAPE '\\')
  AND deactivated_at IS NULL
ORDER BY username LIMIT $2"""
SET_LAST_SEEN = "UPDATE users SET last_seen = $2 WHERE id = $1"

INSERT_CONVERSATION = """INSERT INTO conversations (id, type, name, created_by, created_at, direct_key)
VALUES ($1, $2, $3, $4, $5, $6)"""
FIND_DIRECT = f"SELECT {CONV_COLS} FROM conversations WHERE direct_key = $1"
GET_CONVERSATION = f"SELECT {CONV_COLS} FROM conversations WHERE id = $1"
RENAME_CONVERSATION = "UPDATE conversations SET name = $2 WHERE id = $1"
INSERT_MEMBER = """INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, user_id) DO NOTHING"""
GET_MEMBERS = """SELECT user_id, role, delivered_seq, read_seq, joined_at
FROM conversation_members WHERE conversation_id = $1 ORDER BY joined_at, user_id"""
MEMBER_IDS = "SELECT user_id FROM conversation_members WHERE conversation_id = $1"
DELETE_MEMBER = "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
IS_MEMBER = "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
JOIN_AT_END = """UPDATE conversation_members
SET delivered_seq = (SELECT last_seq FROM conversations WHERE id = $1),
    read_seq = (SELECT last_seq FROM conversations WHERE id = $1)
WHERE conversation_id = $1 AND user_id = $2"""
ADMINS = """SELECT count(*) FROM conversation_members
WHERE conversation_id = $1 AND role = 'admin'"""
OLDEST_MEMBER = """SELECT user_id FROM conversation_members WHERE conversation_id = $1
ORDER BY joined_at, user_id LIMIT 1"""
MAKE_ADMIN = """UPDATE conversation_members SET role = 'admin'
WHERE conversation_id = $1 AND user_id = $2"""
MY_CONVERSATIONS = """SELECT c.id, c.type, c.name, c.created_by, c.created_at, c.last_seq,
       m.read_seq AS my_read_seq
FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
WHERE m.user_id = $1"""
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
POSITIONS_MANY_PG = """SELECT m.user_id, c.id, c.last_seq, m.delivered_seq, m.read_seq
FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
WHERE m.user_id = ANY($1::uuid[])"""
CONTACTS_MANY_PG = """SELECT DISTINCT m.user_id, o.user_id AS contact FROM conversation_members m
JOIN conversation_members o ON o.conversation_id = m.conversation_id
WHERE m.user_id = ANY($1::uuid[]) AND o.user_id <> m.user_id"""

class SqlStore(MessageStore, SessionStore):
    """Implements domain.ports.Store on any Database driver (one `db.run` per method):
    users and conversations here, messages in MessageStore, sessions in SessionStore."""

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
            return None if row is None else user_of(row)

        return await self.db.run(op(), write=False)

    async def get_users(self, user_ids: Sequence[str]) -> list[User]:
        if not user_ids:
            return []
        marks = ", ".join(f"${i + 1}" for i in range(len(user_ids)))

        def op() -> Op[list[User]]:
            found = yield rows(f"SELECT {USER_COLS} FROM users WHERE id IN ({marks})", *user_ids)
            return [user_of(r) for r in found]

        return await self.db.run(op(), write=False)

    async def find_login(self, login: str) -> tuple[User, str] | None:
        def op() -> Op[tuple[User, str] | None]:
            row = yield one(FIND_LOGIN, login)
            return None if row is None else (user_of(row), row["password_hash"])

        return await self.db.run(op(), write=False)

    async def search_users(self, query: str, *, limit: int) -> list[User]:
        def op() -> Op[list[User]]:
            found = yield rows(SEARCH_USERS, like_pattern(query), limit)
            return [user_of(r) for r in found]

        return await self.db.run(op(), write=False)

    async def set_last_seen(self, user_id: str, at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(SET_LAST_SEEN, user_id, at)

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

    async def rename_conversation(self, conversation_id: str, name: str) -> None:
        def op() -> Op[None]:
            yield exec_(RENAME_CONVERSATION, conversation_id, name)

        await self.db.run(op())

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        def op() -> Op[tuple[list[Row], list[Row], list[Message]]]:
            convs = yield rows(MY_CONVERSATIONS, user_id)
            member_rows = yield rows(MEMBERS_OF_MY_CONVERSATIONS, user_id)
            last_rows = yield rows(LAST_MESSAGES, user_id)
            lasts = yield from load_attachments(self.db.dialect,
                                                [message_of(r) for r in last_rows])
            return convs, member_rows, lasts

        convs, member_rows, lasts = await self.db.run(op(), write=False)
        members: dict[str, list[Member]] = {}
        for r in member_rows:
            members.setdefault(str(r["conversation_id"]), []).append(member_of(r))
        last = {m.conversation_id: m for m in lasts}
        out = []
        for r in convs:
            cid = str(r["id"])
            conv = conversation_of(r, members.get(cid, ()))
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
        """New members start at the conversation's end (delivered and read up to last_seq):
        what was said before they joined is not theirs to tick."""
        def op() -> Op[list[str]]:
            found = yield rows(MEMBER_IDS, conversation_id)
            before = {str(r["user_id"]) for r in found}
            added = []
            for user_id, role in members:
                if user_id not in before:
                    yield exec_(INSERT_MEMBER, conversation_id, user_id, role.value, at)
                    yield exec_(JOIN_AT_END, conversation_id, user_id)
                    added.append(user_id)
            return added

        return await self.db.run(op())

    async def remove_member(self, conversation_id: str, user_id: str) -> tuple[bool, str | None]:
        """(whether they were a member, who became admin). A group whose last admin left
        gets its longest-standing member as admin: never a group nobody can manage."""
        def op() -> Op[tuple[bool, str | None]]:
            existed = yield val(IS_MEMBER, conversation_id, user_id)
            if not existed:
                return False, None
            yield exec_(DELETE_MEMBER, conversation_id, user_id)
            if (yield val(ADMINS, conversation_id)):
                return True, None
            heir = yield val(OLDEST_MEMBER, conversation_id)
            if heir is not None:
                yield exec_(MAKE_ADMIN, conversation_id, heir)
            return True, None if heir is None else str(heir)

        return await self.db.run(op())

    async def contacts(self, user_id: str) -> list[str]:
        def op() -> Op[list[str]]:
            found = yield rows(CONTACTS, user_id)
            return [str(r["user_id"]) for r in found]

        return await self.db.run(op(), write=False)

    async def conversation_positions(self, user_id: str) -> dict[str, tuple[int, Watermarks]]:
        def op() -> Op[dict[str, tuple[int, Watermarks]]]:
            found = yield rows(POSITIONS, user_id)
            return {str(r["id"]): _position(r) for r in found}

        return await self.db.run(op(), write=False)

    async def arrivals(self, user_ids: Sequence[str]) -> dict[str, Arrival]:
        def op() -> Op[dict[str, Arrival]]:
            positions: dict[str, dict[str, tuple[int, Watermarks]]] = {u: {} for u in user_ids}
            contacts: dict[str, list[str]] = {u: [] for u in user_ids}
            if self.db.dialect == "postgres":  # two statements whatever the number of users
                for r in (yield rows(POSITIONS_MANY_PG, list(user_ids))):
                    positions[str(r["user_id"])][str(r["id"])] = _position(r)
                for r in (yield rows(CONTACTS_MANY_PG, list(user_ids))):
                    contacts[str(r["user_id"])].append(str(r["contact"]))
            else:  # in-process: per-user statements are cheap
                for u in user_ids:
                    positions[u] = {str(r["id"]): _position(r) for r in (yield rows(POSITIONS, u))}
                    contacts[u] = [str(r["user_id"]) for r in (yield rows(CONTACTS, u))]
            # message changes (issue 14): the cursor before anything else this connection
            # will see, so a change racing with the connect is delivered twice, not lost
            cursor = int((yield val(LAST_CHANGE)) or 0)
            if self.db.dialect == "postgres":
                mentions = yield from mentions_unread_many_pg(user_ids)
            else:
                mentions = {}
                for u in user_ids:
                    mentions[u] = yield from mentions_unread_op(u)
            return {u: Arrival(positions[u], contacts[u], mentions[u], cursor)
                    for u in user_ids}

        return await self.db.run(op(), write=False)

    async def ping(self) -> None:
        def op() -> Op[None]:
            yield val("SELECT 1")

        await self.db.run(op(), write=False)


def _position(r: Row) -> tuple[int, Watermarks]:
    return int(r["last_seq"]), Watermarks(int(r["delivered_seq"]), int(r["read_seq"]))


def _with_members(row: Row) -> Op[Conversation]:
    members = yield rows(GET_MEMBERS, str(row["id"]))
    return conversation_of(row, [member_of(m) for m in members])
