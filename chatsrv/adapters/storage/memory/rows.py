"""The tables of a MemoryStore: its rows, as the SQL tables hold them, and the checks of
their foreign keys, which the stores beside it (calls, uploads) make too."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from chatsrv.adapters.storage.memory.base import _Faults, _refused, _uuid
from chatsrv.domain.changes import Change
from chatsrv.domain.model import (
    Conversation,
    ConversationType,
    Member,
    Message,
    Role,
    User,
    Watermarks,
)


@dataclass(slots=True)
class _UserRow:
    id: str
    username: str
    email: str
    display_name: str
    password_hash: str
    created_at: datetime
    last_seen: datetime | None = None
    is_admin: bool = False
    deactivated_at: datetime | None = None
    presence_visible: bool = True
    read_receipts_visible: bool = True

    def entity(self) -> User:
        return User(id=self.id, username=self.username, email=self.email,
                    display_name=self.display_name, created_at=self.created_at,
                    last_seen=self.last_seen, is_admin=self.is_admin,
                    deactivated_at=self.deactivated_at,
                    presence_visible=self.presence_visible,
                    read_receipts_visible=self.read_receipts_visible)


@dataclass(slots=True)
class _MemberRow:
    user_id: str
    role: Role
    delivered_seq: int
    read_seq: int
    joined_at: datetime

    def entity(self) -> Member:
        return Member(user_id=self.user_id, role=self.role, delivered_seq=self.delivered_seq,
                      read_seq=self.read_seq, joined_at=self.joined_at)

    def marks(self) -> Watermarks:
        return Watermarks(self.delivered_seq, self.read_seq)


@dataclass(slots=True)
class _ConversationRow:
    id: str
    type: ConversationType
    name: str | None
    created_by: str
    created_at: datetime
    direct_key: str | None
    members: dict[str, _MemberRow] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)  # messages[seq - 1]: gap-free

    @property
    def last_seq(self) -> int:
        return len(self.messages)

    def ordered_members(self) -> list[_MemberRow]:
        return sorted(self.members.values(), key=lambda m: (m.joined_at, m.user_id))

    def entity(self) -> Conversation:
        return Conversation(id=self.id, type=self.type, name=self.name,
                            created_by=self.created_by, created_at=self.created_at,
                            last_seq=self.last_seq,
                            members=tuple(m.entity() for m in self.ordered_members()))


@dataclass(slots=True)
class _SessionRow:
    id: str
    user_id: str
    created_at: datetime
    revoked_at: datetime | None = None
    revoke_reason: str | None = None


@dataclass(slots=True)
class _TokenRow:
    user_id: str
    family_id: str
    expires_at: datetime
    used: bool = False
    revoked: bool = False


class _Tables(_Faults):
    """The tables of one MemoryStore, shared by its parts (store.py, sessions.py,
    messages.py) and by the stores beside it (calls, blocks, uploads, changes, search)."""

    def __init__(self) -> None:
        super().__init__()
        self._users: dict[str, _UserRow] = {}
        self._usernames: dict[str, str] = {}  # folded username -> user id
        self._emails: dict[str, str] = {}  # folded email -> user id
        self._conversations: dict[str, _ConversationRow] = {}
        self._direct: dict[str, str] = {}  # direct_key -> conversation id
        self._memberships: dict[str, dict[str, None]] = {}  # user id -> conversation ids
        self._messages: dict[str, Message] = {}
        self._by_client_id: dict[tuple[str, str], Message] = {}
        self._sessions: dict[str, _SessionRow] = {}
        self._sessions_of: dict[str, dict[str, None]] = {}  # user id -> session ids
        self._tokens: dict[str, _TokenRow] = {}  # token hash -> token
        self._families: dict[str, list[str]] = {}  # family id -> token hashes
        # message changes (issue 14; MemoryChanges in memory_changes.py works on these):
        # message id -> (user id, emoji) -> when; the change log in id order; its clock
        self._reactions: dict[str, dict[tuple[str, str], datetime]] = {}
        self._changes: list[Change] = []
        self._change_clock = 0

    def _existing_user(self, user_id: str) -> str:
        uid = _uuid(user_id, "user_id")
        if uid not in self._users:
            raise _refused(f"user {uid} does not exist (foreign key)")
        return uid

    def _existing_conversation(self, conversation_id: str) -> str:
        cid = _uuid(conversation_id, "conversation_id")
        if cid not in self._conversations:
            raise _refused(f"conversation {cid} does not exist (foreign key)")
        return cid


def _by_username(users: Iterable[_UserRow], limit: int) -> list[User]:
    # code point order: PostgreSQL's on a C.UTF-8 database, SQLite's BINARY
    return [u.entity() for u in sorted(users, key=lambda u: u.username)[:limit]]
