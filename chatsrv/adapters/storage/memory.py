"""In-memory storage: the Store and CallLog ports on plain dicts, no I/O.

A real implementation of the ports, held to the same contract suite as SQLite and
PostgreSQL (tests/contract/), so that service tests run the rules without sockets or a
database. Nothing survives the process.

Transaction-free but atomic. Every public method is an `_atomic` body: one checkpoint
first (the only place the call can be cancelled, before it has touched anything), then the
body runs synchronously to its end. Under Trio's cooperative scheduling no other task runs
in between, so each method is atomic and isolated like one SQL transaction: of concurrent
uses of one refresh token exactly one wins, two sides creating the same direct conversation
get one, a group commit numbers its seqs gap-free. A body checks everything it will refuse
before its first write, so a refused call changes nothing. What it returns is frozen
entities and fresh containers, never the tables themselves.

Same results and errors as the SQL store, including what its schema enforces:
  - usernames and emails unique case-insensitively (Conflict `username_taken` /
    `email_taken`, username first, as PostgreSQL checks its indexes);
  - foreign keys: members, creators, senders, sessions, refresh tokens and calls must name
    users (and conversations) that exist, else Invalid; the calls table's CHECKs (id of 1-64
    characters, media audio or video) too;
  - values PostgreSQL refuses are Invalid here as well (where SQLite is more lenient, this
    store follows PostgreSQL, the production backend, so a service test fails where
    production would): text with NUL or lone surrogates, integers outside 64 bits, a
    negative LIMIT or OFFSET, ids of uuid columns that are not UUIDs (canonicalised, as
    PostgreSQL compares uuid values, not spellings); timestamps are normalised to UTC;
  - a unique violation the SQL store lets through as its internal UniqueViolation (a
    duplicate session id, refresh-token hash, conversation id or message id) is Conflict
    here, as the port says.
Case folding is Python's `str.lower()` (PostgreSQL's lower() on our C.UTF-8 databases folds
the same letters but a few special ones; SQLite's folds ASCII only). Where the SQL leaves
the order open, member_ids come in join order and contacts, get_users, live_sessions and
ties in insertion order.

Test aid: `fail_next(method, error)` makes the next call of a method raise, before it
changes anything or (`committed=True`) after its changes are made, as when the reply to a
COMMIT is lost.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import trio

from chatsrv.domain.changes import Change
from chatsrv.domain.errors import Conflict, Invalid, NotFound
from chatsrv.domain.model import (
    NO_ID,
    Arrival,
    Block,
    CallClaim,
    CallRecord,
    Conversation,
    ConversationSummary,
    ConversationType,
    Member,
    Message,
    Privacy,
    RefreshGrant,
    RefreshOutcome,
    Role,
    SessionInfo,
    User,
    Watermarks,
    parse_id,
)
from chatsrv.domain.receipts import advance, unread
from chatsrv.domain.uploads import Upload

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="_Faults")

INT64 = (-(2**63), 2**63 - 1)
MEDIA = ("audio", "video")

@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException
    committed: bool


class _Faults:
    """The fault hook shared by MemoryStore and MemoryCallLog."""

    def __init__(self) -> None:
        self._faults: dict[str, deque[_Fault]] = {}

    def fail_next(self, method: str, error: BaseException, *, committed: bool = False) -> None:
        """Test aid: the next call of `method` raises `error`, once (arm it again for more).
        committed=False: before the call changes anything (a refused or lost request);
        committed=True: after its changes are made (a COMMIT whose reply was lost).
        Raises ValueError for a name that is not a method of this store."""
        if not hasattr(getattr(type(self), method, None), "__wrapped__"):  # not _atomic
            raise ValueError(f"{type(self).__name__} has no storage method {method!r}")
        self._faults.setdefault(method, deque()).append(_Fault(error, committed))

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        return queue.popleft() if queue else None


def _atomic(
    body: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Make a synchronous body one atomic storage call (module docstring). Cancellable at
    its checkpoint only, before it starts; raises what the body raises, or an armed fault."""
    name = body.__name__

    @functools.wraps(body)
    async def call(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        await trio.lowlevel.checkpoint()
        fault = self._take_fault(name)
        if fault is not None and not fault.committed:
            raise fault.error
        result = body(self, *args, **kwargs)  # no await from here on: atomic
        if fault is not None:
            raise fault.error
        return result

    return call


# values ------------------------------------------------------------------------------------

def _refused(what: str) -> Invalid:
    return Invalid(f"the database refused a value: {what}")


def _text(value: str) -> str:
    if "\x00" in value:
        raise _refused('invalid byte sequence for encoding "UTF8": 0x00')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refused(str(exc)) from None
    return value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _uuid(value: str, what: str) -> str:
    """A uuid column's value: canonical, or Invalid as PostgreSQL refuses it."""
    return parse_id(value, what)


def _int(value: int) -> int:
    if not INT64[0] <= value <= INT64[1]:
        raise _refused(f"{value} (value out of int64 range)")
    return value


def _count(value: int, what: str) -> int:
    """A LIMIT or OFFSET."""
    if _int(value) < 0:
        raise _refused(f"{what} must not be negative")
    return value


def _ts(value: datetime) -> datetime:
    # as both drivers store it (a naive time is taken as local time)
    return value.astimezone(UTC)


def _fold(value: str) -> str:
    return value.lower()


# tables ------------------------------------------------------------------------------------

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


class MemoryStore(_Faults):
    """Implements domain.ports.Store in memory (module docstring: atomicity, what is
    refused). Each method is cancellable only before it starts."""

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

    # sessions --------------------------------------------------------------------------

    @_atomic
    def open_session(self, *, session_id: str, user_id: str, token_hash: str,
                     expires_at: datetime, created_at: datetime) -> None:
        sid = _uuid(session_id, "session_id")
        uid = self._existing_user(user_id)
        _text(token_hash)
        if sid in self._sessions:
            raise Conflict("session id is already in use")
        self._check_new_token(token_hash)
        self._sessions[sid] = _SessionRow(sid, uid, _ts(created_at))
        self._sessions_of.setdefault(uid, {})[sid] = None
        self._insert_token(token_hash, uid, sid, expires_at)

    @_atomic
    def add_refresh_token(self, *, token_hash: str, user_id: str, family_id: str,
                          expires_at: datetime) -> None:
        """The family need not be a session (there is no such key on SQL either)."""
        uid = self._existing_user(user_id)
        family = _uuid(family_id, "family_id")
        self._check_new_token(_text(token_hash))
        self._insert_token(token_hash, uid, family, expires_at)

    @_atomic
    def get_session(self, session_id: str) -> SessionInfo | None:
        s = self._sessions.get(_uuid(session_id, "session_id"))
        if s is None:
            return None
        user = self._users[s.user_id]
        return SessionInfo(id=s.id, user_id=s.user_id, created_at=s.created_at,
                           revoked_at=s.revoked_at, user_active=user.deactivated_at is None,
                           is_admin=user.is_admin)

    @_atomic
    def use_refresh_token(self, token_hash: str, *, now: datetime) -> RefreshOutcome:
        """A live token is spent and granted; an unknown, revoked or expired unused one
        grants nothing; a spent one comes back as a replay and revokes its session."""
        token = self._tokens.get(_text(token_hash))
        now = _ts(now)
        if token is not None and not token.used and not token.revoked and token.expires_at > now:
            token.used = True
            return RefreshOutcome(RefreshGrant(user_id=token.user_id, family_id=token.family_id,
                                               expires_at=token.expires_at))
        if token is None or token.revoked or not token.used:
            return RefreshOutcome(None)
        # A rotated token came back: stolen or raced. Kill the session.
        self._revoke_family(token.family_id)
        changed = self._revoke(token.family_id, now, "refresh_replay")
        return RefreshOutcome(None, replayed=token.family_id if changed else None)

    @_atomic
    def revoke_by_refresh_token(self, token_hash: str, *, at: datetime,
                                reason: str) -> str | None:
        """Revoke the session of a refresh token; its id, or None for an unknown token."""
        token = self._tokens.get(_text(token_hash))
        _text(reason)
        if token is None:
            return None
        self._revoke_family(token.family_id)
        self._revoke(token.family_id, _ts(at), reason)
        return token.family_id

    @_atomic
    def revoke_sessions(self, session_ids: Sequence[str], *, at: datetime,
                        reason: str) -> list[str]:
        """Revoke the sessions given; returns those that were live until now."""
        ids = [_uuid(s, "session_id") for s in session_ids]
        _text(reason)
        out = []
        for sid in ids:
            self._revoke_family(sid)
            if self._revoke(sid, _ts(at), reason):
                out.append(sid)
        return out

    @_atomic
    def live_sessions(self, user_id: str) -> list[str]:
        sessions = self._sessions_of.get(_uuid(user_id, "user_id"), {})
        return [sid for sid in sessions if self._sessions[sid].revoked_at is None]

    @_atomic
    def revoked_sessions_since(self, since: datetime, *, after_id: str = NO_ID,
                               limit: int) -> list[tuple[str, datetime]]:
        """Sessions revoked after (since, after_id), by (revoked_at, id)."""
        limit = _count(limit, "LIMIT")
        since = _ts(since)
        found = sorted(((s.id, s.revoked_at) for s in self._sessions.values()
                        if s.revoked_at is not None
                        and (s.revoked_at, s.id) > (since, after_id)),
                       key=lambda pair: (pair[1], pair[0]))
        return found[:limit]

    # administration --------------------------------------------------------------------

    @_atomic
    def set_password(self, user_id: str, password_hash: str) -> None:
        row = self._users.get(_uuid(user_id, "user_id"))
        _text(password_hash)
        if row is not None:
            row.password_hash = password_hash

    @_atomic
    def set_admin(self, user_id: str, admin: bool) -> None:
        row = self._users.get(_uuid(user_id, "user_id"))
        if row is not None:
            row.is_admin = admin

    @_atomic
    def set_deactivated(self, user_id: str, at: datetime | None) -> None:
        row = self._users.get(_uuid(user_id, "user_id"))
        if row is not None:
            row.deactivated_at = None if at is None else _ts(at)

    @_atomic
    def find_user(self, ident: str) -> User | None:
        """By username, email (any case) or id."""
        key = _fold(_text(ident))
        uid = self._usernames.get(key) or self._emails.get(key)
        if uid is None and len(ident) == 36 and ident.count("-") == 4:  # as the SQL store
            uid = _uuid(key, "id")
        row = None if uid is None else self._users.get(uid)
        return None if row is None else row.entity()

    @_atomic
    def list_users(self, query: str, *, limit: int) -> list[User]:
        """Every account whose username, display name or email contains `query` (all when
        empty), deactivated ones included: the admin's view."""
        needle = _fold(_text(query))
        found = [u for u in self._users.values()
                 if needle in _fold(u.username) or needle in _fold(u.display_name)
                 or needle in _fold(u.email)]
        return _by_username(found, _count(limit, "LIMIT"))

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

    @_atomic
    def ping(self) -> None:
        """Always answers: there is nothing to reach."""

    # inside ----------------------------------------------------------------------------

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

    def _check_new_token(self, token_hash: str) -> None:
        if token_hash in self._tokens:
            raise Conflict("refresh token is already in use")

    def _insert_token(self, token_hash: str, uid: str, family: str,
                      expires_at: datetime) -> None:
        self._tokens[token_hash] = _TokenRow(uid, family, _ts(expires_at))
        self._families.setdefault(family, []).append(token_hash)

    def _revoke_family(self, family: str) -> None:
        for token_hash in self._families.get(family, ()):
            self._tokens[token_hash].revoked = True

    def _revoke(self, session_id: str, at: datetime, reason: str) -> bool:
        """Mark a session revoked; True if it was live until now."""
        s = self._sessions.get(session_id)
        if s is None or s.revoked_at is not None:
            return False
        s.revoked_at, s.revoke_reason = at, reason
        return True

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


class MemoryCallLog(_Faults):
    """Implements domain.ports.CallLog in memory, beside a MemoryStore whose users and
    conversations its calls name (as the calls table beside the others)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._calls: dict[str, CallRecord] = {}
        self._claims: dict[str, CallClaim] = {}  # user id -> the call holding them

    @_atomic
    def record_call(self, call: CallRecord) -> None:
        """Record a call as it starts: its status and started_at (as on SQL, the record's
        answer and end are left for mark_answered and finish_call). Raises Conflict
        `call_exists` for an id in use, Invalid for an id not of 1-64 characters, a media
        other than audio or video, or users and conversations that do not exist."""
        if not 1 <= len(_text(call.id)) <= 64:
            raise _refused("a call id has 1-64 characters")
        if call.media not in MEDIA:
            raise _refused("media must be audio or video")
        _text(call.status)
        if call.id in self._calls:
            raise Conflict("call_id is already in use", code="call_exists")
        conv = (None if call.conversation_id is None
                else self._store._existing_conversation(call.conversation_id))
        self._calls[call.id] = CallRecord(
            id=call.id, conversation_id=conv,
            caller_id=self._store._existing_user(call.caller_id),
            callee_id=self._store._existing_user(call.callee_id), media=call.media,
            status=call.status, end_reason=None, started_at=_ts(call.started_at))

    @_atomic
    def claim_call(self, claim: CallClaim, *, replacing: str | None = None) -> list[CallClaim]:
        users = sorted({_uuid(claim.caller_id, "caller_id"), _uuid(claim.callee_id, "callee_id")})
        for uid in users:
            self._store._existing_user(uid)
        if replacing is not None:
            self._drop_claims(lambda c: c.call_id == replacing)
        standing = [self._claims[u] for u in users if u in self._claims]
        if standing:
            return standing
        for uid in users:
            self._claims[uid] = replace(claim, answered=False)
        return []

    @_atomic
    def mark_claim_answered(self, call_id: str) -> None:
        for uid, c in self._claims.items():
            if c.call_id == call_id:
                self._claims[uid] = replace(c, answered=True)

    @_atomic
    def release_call(self, call_id: str) -> None:
        self._drop_claims(lambda c: c.call_id == call_id)

    @_atomic
    def release_owner(self, owner: str) -> list[str]:
        released = sorted({c.call_id for c in self._claims.values() if c.owner == owner})
        self._drop_claims(lambda c: c.owner == owner)
        return released

    @_atomic
    def release_all_claims(self) -> None:
        self._claims.clear()

    @_atomic
    def call_owner(self, call_id: str) -> str | None:
        return next((c.owner for c in self._claims.values() if c.call_id == call_id), None)

    def _drop_claims(self, which: Callable[[CallClaim], bool]) -> None:
        for uid in [u for u, c in self._claims.items() if which(c)]:
            del self._claims[uid]

    @_atomic
    def mark_answered(self, call_id: str, at: datetime) -> None:
        call = self._calls.get(_text(call_id))
        if call is not None:
            self._calls[call_id] = replace(call, status="answered", answered_at=_ts(at))

    @_atomic
    def finish_call(self, call_id: str, *, status: str, end_reason: str | None,
                    answered_at: datetime | None, ended_at: datetime) -> None:
        call = self._calls.get(_text(call_id))
        _text(status)
        _opt_text(end_reason)
        if call is not None:
            self._calls[call_id] = replace(
                call, status=status, end_reason=end_reason, ended_at=_ts(ended_at),
                answered_at=None if answered_at is None else _ts(answered_at))

    @_atomic
    def get_call(self, call_id: str) -> CallRecord | None:
        return self._calls.get(_text(call_id))

    @_atomic
    def list_calls(self, user_id: str, *, before: datetime, limit: int) -> list[CallRecord]:
        """The user's calls (either side) started before `before`, newest first."""
        uid = _uuid(user_id, "user_id")
        limit = _count(limit, "LIMIT")
        before = _ts(before)
        mine = [c for c in self._calls.values()
                if uid in (c.caller_id, c.callee_id) and c.started_at < before]
        mine.sort(key=lambda c: c.started_at, reverse=True)
        return mine[:limit]


class MemoryBlocks(_Faults):
    """Implements domain.ports.Blocks in memory, beside a MemoryStore whose users it
    names (blocks) and changes (privacy settings, display name)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._blocks: dict[tuple[str, str], datetime] = {}  # (blocker, blocked) -> at

    @_atomic
    def block(self, blocker_id: str, blocked_id: str, *, at: datetime) -> bool:
        """Invalid `unknown_user` for an unknown id (as the SQL store checks first)."""
        pair = (_uuid(blocker_id, "user_id"), _uuid(blocked_id, "user_id"))
        if any(uid not in self._store._users for uid in pair):
            raise Invalid("unknown user id", code="unknown_user", field="user_id")
        if pair[0] == pair[1]:
            raise _refused("a user cannot block themselves (CHECK)")
        if pair in self._blocks:
            return False
        self._blocks[pair] = _ts(at)
        return True

    @_atomic
    def unblock(self, blocker_id: str, blocked_id: str) -> bool:
        pair = (_uuid(blocker_id, "user_id"), _uuid(blocked_id, "user_id"))
        return self._blocks.pop(pair, None) is not None

    @_atomic
    def list_blocks(self, blocker_id: str) -> list[Block]:
        me = _uuid(blocker_id, "user_id")
        mine = sorted(((at, other) for (who, other), at in self._blocks.items() if who == me),
                      key=lambda pair: (-pair[0].timestamp(), pair[1]))
        return [Block(self._store._users[other].entity(), at) for at, other in mine
                if other in self._store._users]

    @_atomic
    def privacy(self, user_id: str) -> Privacy:
        me = _uuid(user_id, "user_id")
        blocked = frozenset(b for (a, b) in self._blocks if a == me)
        blocked_by = frozenset(a for (a, b) in self._blocks if b == me)
        row = self._store._users.get(me)
        if row is None:
            return Privacy(blocked, blocked_by)
        return Privacy(blocked, blocked_by, row.presence_visible, row.read_receipts_visible)

    @_atomic
    def update_profile(self, user_id: str, *, display_name: str | None = None,
                       presence_visible: bool | None = None,
                       read_receipts_visible: bool | None = None) -> User | None:
        row = self._store._users.get(_uuid(user_id, "user_id"))
        if display_name is not None:
            _text(display_name)
        if row is None:
            return None
        if display_name is not None:
            row.display_name = display_name
        if presence_visible is not None:
            row.presence_visible = presence_visible
        if read_receipts_visible is not None:
            row.read_receipts_visible = read_receipts_visible
        return row.entity()


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


def _by_username(users: Iterable[_UserRow], limit: int) -> list[User]:
    # code point order: PostgreSQL's on a C.UTF-8 database, SQLite's BINARY
    return [u.entity() for u in sorted(users, key=lambda u: u.username)[:limit]]


if TYPE_CHECKING:  # both satisfy their ports (checked by mypy)
    from chatsrv.domain.ports import CallLog, Store

    _store: Store = MemoryStore()
    _calls: CallLog = MemoryCallLog(MemoryStore())


class MemoryUploadStore(_Faults):
    """Implements domain.ports.UploadStore in memory, beside a MemoryStore: the messages
    carrying an upload are the store's messages whose `attachments` name it (as the
    message_attachments rows beside the messages table)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._uploads: dict[str, Upload] = {}

    def _carriers(self, upload_id: str) -> list[Message]:
        return [m for m in self._store._messages.values()
                if any(a.id == upload_id for a in m.attachments)]

    def _entity(self, u: Upload) -> Upload:
        attached = [m.created_at for m in self._carriers(u.id)]
        return replace(u, attached_at=min(attached) if attached else u.attached_at)

    @_atomic
    def create_upload(self, upload: Upload) -> None:
        uid = _uuid(upload.id, "id")
        if uid in self._uploads:
            raise Conflict("upload id is already in use")
        self._store._existing_user(upload.owner_id)
        _text(upload.name)
        self._uploads[uid] = replace(upload, id=uid, owner_id=_uuid(upload.owner_id, "owner"),
                                     size=_int(upload.size), created_at=_ts(upload.created_at))

    @_atomic
    def get_upload(self, upload_id: str) -> Upload | None:
        u = self._uploads.get(_uuid(upload_id, "upload_id"))
        return None if u is None else self._entity(u)

    @_atomic
    def get_uploads(self, upload_ids: Sequence[str]) -> list[Upload]:
        ids = [_uuid(i, "upload_id") for i in upload_ids]
        return [self._entity(self._uploads[i]) for i in dict.fromkeys(ids) if i in self._uploads]

    @_atomic
    def usage(self, owner_id: str) -> int:
        owner = _uuid(owner_id, "owner_id")
        return sum(u.size for u in self._uploads.values() if u.owner_id == owner)

    @_atomic
    def can_read(self, upload_id: str, user_id: str) -> bool:
        u = self._uploads.get(_uuid(upload_id, "upload_id"))
        uid = _uuid(user_id, "user_id")
        if u is None:
            return False
        return u.owner_id == uid or any(
            uid in self._store._conversations[m.conversation_id].members
            for m in self._carriers(u.id))

    @_atomic
    def attachments_of(self, message_ids: Sequence[str]) -> dict[str, list[Upload]]:
        out: dict[str, list[Upload]] = {}
        for mid in dict.fromkeys(_uuid(i, "message_id") for i in message_ids):
            m = self._store._messages.get(mid)
            found = [self._entity(self._uploads[a.id]) for a in (m.attachments if m else ())
                     if a.id in self._uploads]
            if found:
                out[mid] = found
        return out

    @_atomic
    def release(self, message_id: str) -> list[Upload]:
        m = self._store._messages.get(_uuid(message_id, "message_id"))
        if m is None or not m.attachments:
            return []
        bare = replace(m, attachments=())
        self._store._messages[m.id] = bare
        self._store._conversations[m.conversation_id].messages[m.seq - 1] = bare
        gone = [self._uploads.pop(a.id) for a in m.attachments
                if a.id in self._uploads and not self._carriers(a.id)]
        return gone

    @_atomic
    def orphans(self, before: datetime, *, limit: int) -> list[Upload]:
        found = sorted((u for u in self._uploads.values()
                        if u.attached_at is None and u.created_at < _ts(before)
                        and not self._carriers(u.id)), key=lambda u: u.created_at)
        return found[:_count(limit, "limit")]

    @_atomic
    def delete_uploads(self, upload_ids: Sequence[str]) -> None:
        for upload_id in upload_ids:
            self._uploads.pop(_uuid(upload_id, "upload_id"), None)

    @_atomic
    def blob_in_use(self, sha256: str) -> bool:
        return any(sha256 in (u.sha256, u.thumbnail_sha256) for u in self._uploads.values())
