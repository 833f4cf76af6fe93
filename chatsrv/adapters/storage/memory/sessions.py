"""Sessions, refresh tokens and account administration in memory (the session half of
MemoryStore)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from chatsrv.adapters.storage.memory.base import _atomic, _count, _fold, _text, _ts, _uuid
from chatsrv.adapters.storage.memory.rows import _by_username, _SessionRow, _Tables, _TokenRow
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import NO_ID, RefreshGrant, RefreshOutcome, SessionInfo, User


class MemorySessionStore(_Tables):
    """Sessions, refresh tokens, passwords, admin flags; mixed into MemoryStore."""

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

    # inside ----------------------------------------------------------------------------

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
