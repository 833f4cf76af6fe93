"""Accounts and sessions: register, login, rotating refresh tokens, logout, password change,
access-token checks.

Each login opens a session (services/sessions.py): the refresh-token family, named by every
access token issued for it (claim `sid`). Logout, a password change (every other session),
a refresh-token replay and deactivation revoke sessions; a revoked session's access tokens
are refused from then on and its sockets closed.

bcrypt (~230 ms per hash at 12 rounds here) runs on worker threads, at most
BCRYPT_CONCURRENCY at once; past BCRYPT_QUEUE waiting, a request is refused with
`unavailable` (503) instead of queueing without bound (a login flood is a CPU attack).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import jwt
import trio
from passlib.hash import bcrypt

from chatsrv.domain.errors import Forbidden, Invalid, NotFound, Unauthorized, Unavailable
from chatsrv.domain.model import Principal, User, new_id, parse_id, utcnow
from chatsrv.domain.ports import Store
from chatsrv.services.limits import RateLimits
from chatsrv.services.sessions import SessionRegistry

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 72  # bcrypt uses only the first 72 bytes: refuse more
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Session:
    """What a client gets at login or refresh."""

    token: str
    refresh_token: str
    expires_in: int
    user: User
    session_id: str


def usable_password(password: str) -> bool:
    """What bcrypt can take: 8-72 bytes (it counts bytes, not characters), no NUL."""
    return MIN_PASSWORD <= len(password.encode("utf-8", "replace")) <= MAX_PASSWORD \
        and "\x00" not in password


def _hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthService:
    def __init__(self, store: Store, sessions: SessionRegistry, limits: RateLimits, *,
                 secret: str, access_ttl: float, refresh_ttl: float, bcrypt_rounds: int,
                 bcrypt_concurrency: int, bcrypt_queue: int,
                 allow_registration: bool) -> None:
        self._store = store
        self._sessions = sessions
        self._limits = limits
        self._secret = secret
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._hasher = bcrypt.using(rounds=bcrypt_rounds)
        self._bcrypt = trio.CapacityLimiter(bcrypt_concurrency)
        self._bcrypt_queue = bcrypt_queue
        self._allow_registration = allow_registration
        # verified against when the login is unknown, so timing does not reveal accounts
        self._dummy_hash = self._hasher.hash("not-a-real-password")

    # ------------------------------------------------------------------ passwords

    async def _bcrypt_run(self, fn: object, *args: str) -> object:
        stats = self._bcrypt.statistics()
        if stats.borrowed_tokens >= stats.total_tokens and \
                stats.tasks_waiting >= self._bcrypt_queue:
            raise Unavailable("too many sign-ins at once; try again shortly", code="busy")
        return await trio.to_thread.run_sync(fn, *args, limiter=self._bcrypt)  # type: ignore[arg-type]

    async def _hash(self, password: str) -> str:
        return str(await self._bcrypt_run(self._hasher.hash, password))

    async def _verify(self, password: str, hashed: str) -> bool:
        return bool(await self._bcrypt_run(self._hasher.verify, password, hashed))

    # ------------------------------------------------------------------ accounts

    async def register(self, *, username: str, email: str, password: str,
                       display_name: str | None, address: str | None = None) -> Session:
        """Create an account and sign it in. Raises Forbidden (registration closed),
        RateLimited, Invalid, Conflict (taken)."""
        if not self._allow_registration:
            raise Forbidden("registration is closed on this server", code="registration_closed")
        if address is not None:
            await self._limits.take(self._limits.register, address)
        return await self.create_account(username=username, email=email, password=password,
                                         display_name=display_name)

    async def create_account(self, *, username: str, email: str, password: str,
                             display_name: str | None, admin: bool = False) -> Session:
        """An account made by an operator (`chatsrv create-user`) or by register."""
        username = username.strip()
        email = email.strip()
        if not USERNAME.match(username):
            raise Invalid("username must be 3-32 letters, digits, '_', '.' or '-'",
                          field="username")
        if not EMAIL.match(email) or len(email) > 254:
            raise Invalid("email is not a valid address", field="email")
        if not usable_password(password):
            raise Invalid(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes (UTF-8), "
                          "without NUL characters", field="password")
        display = (display_name or username).strip()
        if not 1 <= len(display) <= 64:
            raise Invalid("display_name must be 1-64 characters", field="display_name")
        hashed = await self._hash(password)
        user = await self._store.create_user(
            user_id=new_id(), username=username, email=email, display_name=display,
            password_hash=hashed, created_at=utcnow(),
        )
        if admin:
            await self._store.set_admin(user.id, True)
            user = await self.get_user(user.id)
        return await self._open_session(user)

    async def login(self, *, login: str, password: str, address: str | None = None) -> Session:
        """Raises Unauthorized with the same message for an unknown login or a wrong
        password; RateLimited after too many failures for the account or the address;
        Forbidden for a deactivated account (only once the password was right)."""
        login = login.strip()
        subjects = [f"account:{login.lower()}"] + ([f"address:{address}"] if address else [])
        await self._limits.check_login(subjects)
        found = await self._store.find_login(login) if login else None
        if found is None or not usable_password(password):
            # the same bcrypt work as a real check, so timing does not reveal accounts; a
            # password no account can have (too long, NUL) is never handed to bcrypt
            await self._verify("not-a-real-password", self._dummy_hash)
            await self._limits.login_failed(subjects)
            raise Unauthorized("invalid credentials", code="invalid_credentials")
        user, hashed = found
        if not await self._verify(password, hashed):
            await self._limits.login_failed(subjects)
            raise Unauthorized("invalid credentials", code="invalid_credentials")
        if not user.active:
            raise Forbidden("this account is deactivated", code="account_deactivated")
        return await self._open_session(user)

    async def refresh(self, refresh_token: str, *, address: str | None = None) -> Session:
        """Rotate: the old refresh token is spent; using a spent one again (a replay: it was
        stolen, or raced) revokes the whole session, here and on every node."""
        if address is not None:
            await self._limits.take(self._limits.refresh, address)
        outcome = await self._store.use_refresh_token(_hash_refresh(refresh_token), now=utcnow())
        if outcome.replayed is not None:
            await self._sessions.revoked([outcome.replayed])
        grant = outcome.grant
        if grant is None:
            raise Unauthorized("refresh token is invalid, expired or revoked",
                               code="invalid_refresh_token")
        try:
            await self._sessions.check(grant.family_id, grant.user_id)
        except Unauthorized as exc:
            raise Unauthorized(exc.message, code="invalid_refresh_token") from None
        user = await self.get_user(grant.user_id)
        return await self._issue(user, session_id=grant.family_id)

    async def logout(self, *, refresh_token: str | None = None,
                     principal: Principal | None = None) -> None:
        """End a session: the one of `refresh_token`, or the caller's own. Idempotent."""
        if refresh_token is not None:
            sid = await self._store.revoke_by_refresh_token(
                _hash_refresh(refresh_token), at=utcnow(), reason="logout")
            if sid is not None:
                await self._sessions.revoked([sid])
        elif principal is not None:
            await self._sessions.revoke([principal.session_id], reason="logout")
        else:
            raise Invalid("give refresh_token, or sign the request with the session's token",
                          field="refresh_token")

    async def change_password(self, principal: Principal, *, old_password: str,
                              new_password: str) -> None:
        """Check the old password (failures count like failed logins), set the new one, and
        revoke every other session of the account. Raises Unauthorized, Invalid."""
        subjects = [f"account-id:{principal.user_id}"]
        await self._limits.check_login(subjects)
        found = await self._store.find_login((await self.get_user(principal.user_id)).email)
        if found is None or not usable_password(old_password) or \
                not await self._verify(old_password, found[1]):
            await self._limits.login_failed(subjects)
            raise Unauthorized("the current password is wrong", code="invalid_credentials")
        if not usable_password(new_password):
            raise Invalid(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes (UTF-8), "
                          "without NUL characters", field="new_password")
        await self._store.set_password(principal.user_id, await self._hash(new_password))
        others = [s for s in await self._store.live_sessions(principal.user_id)
                  if s != principal.session_id]
        await self._sessions.revoke(others, reason="password_changed")

    async def end_all_sessions(self, user_id: str, *, reason: str) -> list[str]:
        return await self._sessions.revoke(await self._store.live_sessions(user_id),
                                           reason=reason)

    # ------------------------------------------------------------------ tokens

    async def _open_session(self, user: User) -> Session:
        session_id = new_id()
        refresh = secrets.token_urlsafe(32)
        await self._store.open_session(
            session_id=session_id, user_id=user.id, token_hash=_hash_refresh(refresh),
            expires_at=utcnow() + timedelta(seconds=self._refresh_ttl), created_at=utcnow())
        return self._session(user, session_id, refresh)

    async def _issue(self, user: User, *, session_id: str) -> Session:
        refresh = secrets.token_urlsafe(32)
        await self._store.add_refresh_token(
            token_hash=_hash_refresh(refresh), user_id=user.id, family_id=session_id,
            expires_at=utcnow() + timedelta(seconds=self._refresh_ttl),
        )
        return self._session(user, session_id, refresh)

    def _session(self, user: User, session_id: str, refresh: str) -> Session:
        return Session(token=self.access_token(user.id, session_id), refresh_token=refresh,
                       expires_in=int(self._access_ttl), user=user, session_id=session_id)

    def access_token(self, user_id: str, session_id: str) -> str:
        now = utcnow()
        claims = {
            "sub": user_id, "sid": session_id, "iat": now,
            "exp": now + timedelta(seconds=self._access_ttl),
            "jti": secrets.token_hex(8), "typ": "access",
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Principal:
        """The claims of a validly signed, unexpired access token. Pure CPU; does not say
        whether its session is still live (see `authenticate`). Raises Unauthorized."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "sub", "iat", "sid"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", code="token_expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token", code="invalid_token") from None
        sub, sid = claims.get("sub"), claims.get("sid")
        if claims.get("typ", "access") != "access" or not isinstance(sub, str) \
                or not isinstance(sid, str):
            raise Unauthorized("invalid token", code="invalid_token")
        try:
            sub, sid = parse_id(sub), parse_id(sid)
        except Invalid:
            raise Unauthorized("invalid token", code="invalid_token") from None
        return Principal(user_id=sub, session_id=sid, is_admin=False,
                         expires_at=float(claims["exp"]))

    async def authenticate(self, token: str) -> Principal:
        """The caller of a valid access token of a live session of an active user.
        Raises Unauthorized (expired, invalid, revoked, deactivated, unknown user)."""
        principal = self.decode(token)
        await self._sessions.check(principal.session_id, principal.user_id)
        return principal

    # ------------------------------------------------------------------ users

    async def get_user(self, user_id: str) -> User:
        user = await self._store.get_user(user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    async def search(self, query: str, *, limit: int) -> list[User]:
        """Active users whose username or display name contains `query`."""
        return await self._store.search_users(query, limit=limit)

    async def require_admin(self, principal: Principal) -> User:
        """The caller's account, if it is an admin's (read fresh: a revoked admin right
        applies at once). Raises Forbidden."""
        user = await self.get_user(principal.user_id)
        if not user.is_admin:
            raise Forbidden("administrators only", code="forbidden")
        return user


async def _find(store: Store, ident: str) -> User:
    user = await store.find_user(ident)
    if user is None:
        raise NotFound(f"no user {ident!r} (give an id, a username or an email)")
    return user


class AdminService:
    """Operators' powers: list accounts, (de)activate them, grant admin rights."""

    def __init__(self, store: Store, auth: AuthService) -> None:
        self._store = store
        self._auth = auth

    async def users(self, query: str, *, limit: int) -> list[User]:
        return await self._store.list_users(query, limit=limit)

    async def find(self, ident: str) -> User:
        return await _find(self._store, ident)

    async def deactivate(self, ident: str) -> tuple[User, Sequence[str]]:
        """Refuse the account's logins and end its sessions (sockets close with 4401)."""
        user = await _find(self._store, ident)
        await self._store.set_deactivated(user.id, utcnow())
        ended = await self._auth.end_all_sessions(user.id, reason="deactivated")
        return await self._auth.get_user(user.id), ended

    async def reactivate(self, ident: str) -> User:
        user = await _find(self._store, ident)
        await self._store.set_deactivated(user.id, None)
        return await self._auth.get_user(user.id)

    async def set_admin(self, ident: str, admin: bool) -> User:
        user = await _find(self._store, ident)
        await self._store.set_admin(user.id, admin)
        return await self._auth.get_user(user.id)
