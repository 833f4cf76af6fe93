"""Sessions, refresh tokens and account administration over SQL (the session half of
SqlStore).

A session is one login: the family of refresh tokens rotated from it, and the access tokens
that name it (claim `sid`). Using a refresh token is one atomic statement (`USE_REFRESH`:
`used = FALSE` in the WHERE clause), so of N concurrent refreshes of one token exactly one
wins; the others find it spent, which is a replay: the session is revoked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, UniqueViolation, exec_, one, rows, val
from chatsrv.adapters.storage.rows import USER_COLS, opt_ts, ts, user_of
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import NO_ID, RefreshGrant, RefreshOutcome, SessionInfo, User

INSERT_SESSION = "INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3)"
INSERT_REFRESH = """INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at)
VALUES ($1, $2, $3, $4)"""
GET_SESSION = """SELECT s.id, s.user_id, s.created_at, s.revoked_at, u.deactivated_at,
       u.is_admin
FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1"""
# one statement: exactly one of concurrent uses of the same token changes the row
USE_REFRESH = """UPDATE refresh_tokens SET used = TRUE
WHERE token_hash = $1 AND used = FALSE AND revoked = FALSE AND expires_at > $2
RETURNING user_id, family_id, expires_at"""
GET_REFRESH = """SELECT family_id, used, revoked FROM refresh_tokens WHERE token_hash = $1"""
REVOKE_FAMILY = "UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = $1"
REVOKE_SESSION = """UPDATE sessions SET revoked_at = $2, revoke_reason = $3
WHERE id = $1 AND revoked_at IS NULL"""
LIVE_SESSIONS_OF = "SELECT id FROM sessions WHERE user_id = $1 AND revoked_at IS NULL"
# keyset paging on (revoked_at, id): many sessions revoked in one statement share a time
REVOKED_SINCE = """SELECT id, revoked_at FROM sessions
WHERE revoked_at > $1 OR (revoked_at = $1 AND id > $2)
ORDER BY revoked_at, id LIMIT $3"""
SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE id = $1"
SET_ADMIN = "UPDATE users SET is_admin = $2 WHERE id = $1"
SET_DEACTIVATED = "UPDATE users SET deactivated_at = $2 WHERE id = $1"
FIND_USER = f"""SELECT {USER_COLS} FROM users
WHERE lower(username) = lower($1) OR lower(email) = lower($1) LIMIT 1"""
GET_USER_BY_ID = f"SELECT {USER_COLS} FROM users WHERE id = $1"
LIST_USERS = f"""SELECT {USER_COLS} FROM users
WHERE $1 = '' OR lower(username) LIKE $1 ESCAPE '\\' OR lower(display_name) LIKE $1 ESCAPE '\\'
   OR lower(email) LIKE $1 ESCAPE '\\'
ORDER BY username LIMIT $2"""


class SessionStore:
    """Sessions, refresh tokens, passwords, admin flags; mixed into SqlStore."""

    db: Database

    async def open_session(self, *, session_id: str, user_id: str, token_hash: str,
                           expires_at: datetime, created_at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(INSERT_SESSION, session_id, user_id, created_at)
            yield exec_(INSERT_REFRESH, token_hash, user_id, session_id, expires_at)

        try:
            await self.db.run(op())
        except UniqueViolation:
            raise Conflict("session or refresh token already exists", code="conflict") from None

    async def add_refresh_token(self, *, token_hash: str, user_id: str, family_id: str,
                                expires_at: datetime) -> None:
        def op() -> Op[None]:
            yield exec_(INSERT_REFRESH, token_hash, user_id, family_id, expires_at)

        try:
            await self.db.run(op())
        except UniqueViolation:
            raise Conflict("refresh token already exists", code="conflict") from None

    async def get_session(self, session_id: str) -> SessionInfo | None:
        def op() -> Op[SessionInfo | None]:
            row = yield one(GET_SESSION, session_id)
            if row is None:
                return None
            return SessionInfo(id=str(row["id"]), user_id=str(row["user_id"]),
                               created_at=ts(row["created_at"]),
                               revoked_at=opt_ts(row["revoked_at"]),
                               user_active=row["deactivated_at"] is None,
                               is_admin=bool(row["is_admin"]))

        return await self.db.run(op(), write=False)

    async def use_refresh_token(self, token_hash: str, *, now: datetime) -> RefreshOutcome:
        def op() -> Op[RefreshOutcome]:
            row = yield one(USE_REFRESH, token_hash, now)
            if row is not None:
                return RefreshOutcome(RefreshGrant(
                    user_id=str(row["user_id"]), family_id=str(row["family_id"]),
                    expires_at=ts(row["expires_at"])))
            spent = yield one(GET_REFRESH, token_hash)
            if spent is None or spent["revoked"] or not spent["used"]:
                return RefreshOutcome(None)  # unknown, revoked or expired
            # A rotated token came back: stolen or raced. Kill the session.
            family = str(spent["family_id"])
            yield exec_(REVOKE_FAMILY, family)
            changed = yield from _revoke(family, now, "refresh_replay")
            return RefreshOutcome(None, replayed=family if changed else None)

        return await self.db.run(op())

    async def revoke_by_refresh_token(self, token_hash: str, *, at: datetime,
                                      reason: str) -> str | None:
        """Revoke the session of a refresh token; its id, or None for an unknown token."""
        def op() -> Op[str | None]:
            row = yield one(GET_REFRESH, token_hash)
            if row is None:
                return None
            family = str(row["family_id"])
            yield exec_(REVOKE_FAMILY, family)
            yield from _revoke(family, at, reason)
            return family

        return await self.db.run(op())

    async def revoke_sessions(self, session_ids: Sequence[str], *, at: datetime,
                              reason: str) -> list[str]:
        """Revoke the sessions given; returns those that were live until now."""
        def op() -> Op[list[str]]:
            out = []
            for sid in session_ids:
                yield exec_(REVOKE_FAMILY, sid)
                if (yield from _revoke(sid, at, reason)):
                    out.append(sid)
            return out

        return await self.db.run(op())

    async def live_sessions(self, user_id: str) -> list[str]:
        def op() -> Op[list[str]]:
            return [str(r["id"]) for r in (yield rows(LIVE_SESSIONS_OF, user_id))]

        return await self.db.run(op(), write=False)

    async def revoked_sessions_since(self, since: datetime, *, after_id: str = NO_ID,
                                     limit: int) -> list[tuple[str, datetime]]:
        """Sessions revoked after (since, after_id), by (revoked_at, id): what other nodes
        revoked, page by page."""
        def op() -> Op[list[tuple[str, datetime]]]:
            found = yield rows(REVOKED_SINCE, since, after_id, limit)
            return [(str(r["id"]), ts(r["revoked_at"])) for r in found]

        return await self.db.run(op(), write=False)

    async def set_password(self, user_id: str, password_hash: str) -> None:
        def op() -> Op[None]:
            yield exec_(SET_PASSWORD, user_id, password_hash)

        await self.db.run(op())

    async def set_admin(self, user_id: str, admin: bool) -> None:
        def op() -> Op[None]:
            yield exec_(SET_ADMIN, user_id, admin)

        await self.db.run(op())

    async def set_deactivated(self, user_id: str, at: datetime | None) -> None:
        def op() -> Op[None]:
            yield exec_(SET_DEACTIVATED, user_id, at)

        await self.db.run(op())

    async def find_user(self, ident: str) -> User | None:
        """By id, username or email (case-insensitive)."""
        def op() -> Op[User | None]:
            row = yield one(FIND_USER, ident)
            if row is None and _looks_like_uuid(ident):
                row = yield one(GET_USER_BY_ID, ident.lower())
            return None if row is None else user_of(row)

        return await self.db.run(op(), write=False)

    async def list_users(self, query: str, *, limit: int) -> list[User]:
        """Every account whose username, display name or email contains `query` (all when
        empty), deactivated ones included: the admin's view."""
        pattern = like_pattern(query) if query else ""

        def op() -> Op[list[User]]:
            return [user_of(r) for r in (yield rows(LIST_USERS, pattern, limit))]

        return await self.db.run(op(), write=False)


def _revoke(session_id: str, at: datetime, reason: str) -> Op[bool]:
    """Mark a session revoked; True if it was live until now."""
    before = yield val("SELECT revoked_at IS NULL FROM sessions WHERE id = $1", session_id)
    yield exec_(REVOKE_SESSION, session_id, at, reason)
    return bool(before)


def _looks_like_uuid(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


def like_pattern(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
