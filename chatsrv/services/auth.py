"""Accounts and tokens: register, login, rotating refresh tokens, access-token checks."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import jwt
import trio
from passlib.hash import bcrypt

from chatsrv.domain.errors import Invalid, NotFound, Unauthorized
from chatsrv.domain.model import User, new_id, utcnow
from chatsrv.domain.ports import Store

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 72  # bcrypt uses only the first 72 bytes: refuse more
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    refresh_token: str
    expires_in: int
    user: User


def usable_password(password: str) -> bool:
    """What bcrypt can take: 8-72 bytes (it counts bytes, not characters), no NUL."""
    return MIN_PASSWORD <= len(password.encode("utf-8", "replace")) <= MAX_PASSWORD \
        and "\x00" not in password


def _hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthService:
    def __init__(self, store: Store, *, secret: str, access_ttl: float, refresh_ttl: float,
                 bcrypt_rounds: int) -> None:
        self._store = store
        self._secret = secret
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._hasher = bcrypt.using(rounds=bcrypt_rounds)
        # verified against when the login is unknown, so timing does not reveal accounts
        self._dummy_hash = self._hasher.hash("not-a-real-password")

    # passwords run bcrypt (~230 ms at 12 rounds) on a worker thread, never on the loop
    async def _hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password)

    async def _verify(self, password: str, hashed: str) -> bool:
        return await trio.to_thread.run_sync(self._hasher.verify, password, hashed)

    async def register(self, *, username: str, email: str, password: str,
                       display_name: str | None) -> Session:
        """Create an account and sign it in. Raises Invalid, Conflict (taken)."""
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
        return await self._issue(user, family_id=new_id())

    async def login(self, *, login: str, password: str) -> Session:
        """Raises Unauthorized with the same message for an unknown login or a wrong password."""
        found = await self._store.find_login(login.strip()) if login.strip() else None
        if found is None or not usable_password(password):
            # the same bcrypt work as a real check, so timing does not reveal accounts; a
            # password no account can have (too long, NUL) is never handed to bcrypt
            await self._verify("not-a-real-password", self._dummy_hash)
            raise Unauthorized("invalid credentials", code="invalid_credentials")
        user, hashed = found
        if not await self._verify(password, hashed):
            raise Unauthorized("invalid credentials", code="invalid_credentials")
        return await self._issue(user, family_id=new_id())

    async def refresh(self, refresh_token: str) -> Session:
        """Rotate: the old refresh token is consumed; replaying it revokes the whole family."""
        grant = await self._store.use_refresh_token(_hash_refresh(refresh_token), now=utcnow())
        if grant is None:
            raise Unauthorized("refresh token is invalid, expired or revoked",
                               code="invalid_refresh_token")
        user = await self._store.get_user(grant.user_id)
        if user is None:
            raise Unauthorized("account no longer exists", code="invalid_refresh_token")
        return await self._issue(user, family_id=grant.family_id)

    async def logout(self, refresh_token: str) -> None:
        await self._store.revoke_refresh_family(_hash_refresh(refresh_token))

    async def _issue(self, user: User, *, family_id: str) -> Session:
        now = utcnow()
        refresh = secrets.token_urlsafe(32)
        await self._store.add_refresh_token(
            token_hash=_hash_refresh(refresh), user_id=user.id, family_id=family_id,
            expires_at=now + timedelta(seconds=self._refresh_ttl),
        )
        return Session(token=self.access_token(user.id), refresh_token=refresh,
                       expires_in=int(self._access_ttl), user=user)

    def access_token(self, user_id: str) -> str:
        now = utcnow()
        claims = {
            "sub": user_id, "iat": now, "exp": now + timedelta(seconds=self._access_ttl),
            "jti": secrets.token_hex(8), "typ": "access",
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def authenticate(self, token: str) -> str:
        """The user id a valid access token belongs to. Raises Unauthorized. Pure CPU."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "sub", "iat"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", code="token_expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token", code="invalid_token") from None
        if claims.get("typ", "access") != "access" or not isinstance(claims["sub"], str):
            raise Unauthorized("invalid token", code="invalid_token")
        return claims["sub"]

    async def get_user(self, user_id: str) -> User:
        user = await self._store.get_user(user_id)
        if user is None:
            raise NotFound("user not found")
        return user
