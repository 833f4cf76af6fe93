"""The Store port in memory (package docstring), split as the SQL store is: users and
conversations here; messages and watermarks in messages.py; sessions, refresh tokens and
administration in sessions.py; the tables in rows.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from chatsrv.adapters.storage.memory.base import (
    _atomic,
    _count,
    _fold,
    _opt_text,
    _refused,
    _text,
    _ts,
    _uuid,
)
from chatsrv.adapters.storage.memory.messages import MemoryMessageStore
from chatsrv.adapters.storage.memory.rows import (
    _by_username,
    _ConversationRow,
    _MemberRow,
    _UserRow,
)
from chatsrv.adapters.storage.memory.sessions import MemorySessionStore
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import (
    Arrival,
    Conversation,
    ConversationSummary,
    ConversationType,
    Role,
    User,
    Watermarks,
)
from chatsrv.domain.receipts import unread


class MemoryStore(MemoryMessageStore, MemorySessionStore):
    """Implements domain.ports.Store in memory (package docstring: atomicity, what is
    refused). Each method is cancellable only before it starts."""

    # users -----------------------------------------------------------------------------

    @_atomic
    def create_user(
        self, *, user_id: str, username: str, email: str, display_name: str,
        password_hash: str, created_at: datetime,
    ) -> User:
        """Raises Conflict `username_taken` or `email_taken` (username first; a taken id
        reads as username_taken too, as on SQL where the primary key is checked first)."""
        uid = _uuid(user_id, "user_id")
        for value in (username, email, display_name, password_hash):
            _text(value)
        if uid in self._users or _fold(username) in self._usernames:
            raise Conflict("username is already taken", code="username_taken", field="username")
        if _fold(email) in self._emails:
            raise Conflict("email is already taken", code="email_taken", field="email")
        self._users[uid] = _UserRow(uid, username, email, display_name, password_hash,
                                    _ts(created_at))
        self._usernames[_fold(username)] = uid
        self._emails[_fold(email)] = uid
        return User(id=user_id, username=username, email=email, display_name=display_name,
                    created_at=created_at)

    @_atomic
    def get_user(self, user_id: str) -> User | None:
        row = self._users.get(_uuid(user_id, "user_id"))
        return None if row is None else row.entity()

    @_atomic
    def get_users(self, user_ids: Sequence[str]) -> list[User]:
        """The users that exist, each once; unknown ids are left out."""
        ids = dict.fromkeys(_uuid(u, "user_id") for u in user_ids)
        return [self._users[u].entity() for u in ids if u in self._users]

    @_atomic
    def find_login(self, login: str) -> tuple[User, str] | None:
        key = _fold(_text(login))
        uid = self._emails.get(key) or self._usernames.get(key)
        if uid is None:
            return None
        row = self._users[uid]
        return row.entity(), row.password_hash

    @_atomic
    def search_users(self, query: str, *, limit: int) -> list[User]:
        """Active users whose username or display name contains `query` (any case), by
        username."""
        needle = _fold(_text(query))
        found = [u for u in self._users.values() if u.deactivated_at is None
                 and (needle in _fold(u.username) or needle in _fold(u.display_name))]
        return _by_username(found, _count(limit, "LIMIT"))

    @_atomic
    def set_last_seen(self, user_id: str, at: datetime) -> None:
        row = self._users.get(_uuid(user_id, "user_id"))
        if row is not None:
            row.last_seen = _ts(at)

    # conversations ---------------------------------------------------------------------

    @_atomic
    def create_conversation(
        self, *, conversation_id: str, type: ConversationType, name: str | None,
        created_by: str, members: Sequence[tuple[str, Role]], direct_key: str | None,
        created_at: datetime,
    ) -> tuple[Conversation, bool]:
        """Returns (conversation, created). For a direct_key that exists, the existing one
        as it is. A user listed twice joins once, with the first role given."""
        if _opt_text(direct_key) is not None and direct_key in self._direct:
            return self._conversations[self._direct[direct_key]].entity(), False
        cid = _uuid(conversation_id, "conversation_id")
        _opt_text(name)
        creator = self._existing_user(created_by)
        roles: dict[str, Role] = {}
        for user_id, role in members:
            roles.setdefault(self._existing_user(user_id), role)
        if cid in self._conversations:
            raise Conflict("conversation id is already in use")
        at = _ts(created_at)
        conv = _ConversationRow(cid, type, name, creator, at, direct_key)
        for uid, role in roles.items():
            self._join(conv, uid, role, at)
        self._conversations[cid] = conv
        if direct_key is not None:
            self._direct[direct_key] = cid
        return conv.entity(), True

    @_atomic
    def get_conversation(self, conversation_id: str) -> Conversation | None:
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        return None if conv is None else conv.entity()

    @_atomic
    def rename_conversation(self, conversation_id: str, name: str) -> None:
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        _text(name)
        if conv is not None:
            conv.name = name

    @_atomic
    def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        """Every conversation of the user, most recent activity (last message, else
        creation) first."""
        uid = _uuid(user_id, "user_id")
        out = []
        for cid in self._memberships.get(uid, {}):
            conv = self._conversations[cid]
            out.append(ConversationSummary(
                conversation=conv.entity(),
                last_message=conv.messages[-1] if conv.messages else None,
                unread=unread(conv.last_seq, conv.members[uid].read_seq),
            ))
        out.sort(key=lambda s: (s.last_message.created_at if s.last_message
                                else s.conversation.created_at), reverse=True)
        return out

    @_atomic
    def member_ids(self, conversation_id: str) -> list[str]:
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        return [] if conv is None else [m.user_id for m in conv.ordered_members()]

    @_atomic
    def add_members(
        self, conversation_id: str, members: Sequence[tuple[str, Role]], *, at: datetime
    ) -> list[str]:
        """New members start at the conversation's end (delivered and read up to last_seq).
        Returns those who were not members; like the SQL store, a user listed twice is
        listed twice (services pass each once). Invalid for an unknown conversation or
        user."""
        cid = _uuid(conversation_id, "conversation_id")
        wanted = [(self._existing_user(u), role) for u, role in members]
        conv = self._conversations.get(cid)
        if conv is None:
            if wanted:
                raise _refused("conversation_id violates a foreign key")
            return []
        before = set(conv.members)
        added = []
        for uid, role in wanted:
            if uid not in before:
                if uid not in conv.members:
                    self._join(conv, uid, role, _ts(at), at_seq=conv.last_seq)
                added.append(uid)
        return added

    @_atomic
    def remove_member(self, conversation_id: str, user_id: str) -> tuple[bool, str | None]:
        """(whether they were a member, who became admin). A conversation whose last admin
        left gets its longest-standing member as admin."""
        conv = self._conversations.get(_uuid(conversation_id, "conversation_id"))
        uid = _uuid(user_id, "user_id")
        if conv is None or uid not in conv.members:
            return False, None
        del conv.members[uid]
        del self._memberships[uid][conv.id]
        if any(m.role is Role.ADMIN for m in conv.members.values()):
            return True, None
        remaining = conv.ordered_members()
        if not remaining:
            return True, None
        remaining[0].role = Role.ADMIN
        return True, remaining[0].user_id

    @_atomic
    def contacts(self, user_id: str) -> list[str]:
        """Users who share at least one conversation with user_id (not user_id)."""
        return self._contacts(_uuid(user_id, "user_id"))

    @_atomic
    def conversation_positions(self, user_id: str) -> dict[str, tuple[int, Watermarks]]:
        return self._positions(_uuid(user_id, "user_id"))

    @_atomic
    def arrivals(self, user_ids: Sequence[str]) -> dict[str, Arrival]:
        """Positions and contacts of several users (every id given is a key)."""
        ids = {u: _uuid(u, "user_id") for u in user_ids}
        return {u: Arrival(self._positions(uid), self._contacts(uid),
                           self._mentions_unread(uid), self._change_clock)
                for u, uid in ids.items()}

    @_atomic
    def ping(self) -> None:
        """Always answers: there is nothing to reach."""

    # inside ----------------------------------------------------------------------------

    def _join(self, conv: _ConversationRow, uid: str, role: Role, at: datetime, *,
              at_seq: int = 0) -> None:
        conv.members[uid] = _MemberRow(uid, role, at_seq, at_seq, at)
        self._memberships.setdefault(uid, {})[conv.id] = None

    def _contacts(self, uid: str) -> list[str]:
        found: dict[str, None] = {}
        for cid in self._memberships.get(uid, {}):
            found.update(dict.fromkeys(self._conversations[cid].members))
        found.pop(uid, None)
        return list(found)

    def _positions(self, uid: str) -> dict[str, tuple[int, Watermarks]]:
        out = {}
        for cid in self._memberships.get(uid, {}):
            conv = self._conversations[cid]
            out[cid] = (conv.last_seq, conv.members[uid].marks())
        return out

    def _mentions_unread(self, uid: str) -> dict[str, int]:
        out = {}
        for cid in self._memberships.get(uid, {}):
            conv = self._conversations[cid]
            n = sum(1 for m in conv.messages[conv.members[uid].read_seq:]
                    if uid in m.mentions and m.deleted_at is None)
            if n:
                out[cid] = n
        return out


if TYPE_CHECKING:  # satisfies its port (checked by mypy)
    from chatsrv.domain.ports import Store

    _store: Store = MemoryStore()
