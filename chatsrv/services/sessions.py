"""Which sessions are live, on this node, without lag.

A session is one login (services/auth.py); every access token names it (`sid`). Checking a
token costs a dictionary lookup: sessions seen alive are cached, sessions revoked recently
are remembered. A session revoked anywhere reaches every node by two roads:

- Redis (cluster): the revoking node publishes the ids; the others apply them at once;
- the database: every node polls `sessions.revoked_at` every SESSION_POLL_INTERVAL, so
  revocation never depends on Redis (or on a note that was lost).

Applying a revocation drops the cache entry and calls the `on_revoked` listeners (the
WebSocket endpoint closes that session's sockets with 4401). A check that was looking the
session up in the database while it was revoked never caches it (the race that let removed
members read for 5 s, avoided here by re-checking after the lookup).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import trio

from chatsrv.domain.errors import Unauthorized, Unavailable
from chatsrv.domain.model import NO_ID, utcnow
from chatsrv.domain.ports import Store

log = logging.getLogger(__name__)

# How far another node's clock may be behind ours: revocations are re-read this far back.
CLOCK_SKEW = timedelta(seconds=30)
POLL_PAGE = 1000


class SessionRegistry:
    def __init__(self, store: Store, *, poll_interval: float, remember: float,
                 max_cached: int = 200_000) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._remember = remember  # seconds a revocation is kept (an access token's life)
        self._max_cached = max_cached
        self._live: OrderedDict[str, str] = OrderedDict()  # session -> user, seen alive
        self._revoked: dict[str, float] = {}  # session -> when we learned it
        self._listeners: list[Callable[[list[str]], None]] = []
        self._publish: Callable[[list[str]], Awaitable[None]] | None = None
        self._since = utcnow() - CLOCK_SKEW

    # ------------------------------------------------------------------ wiring

    def on_revoked(self, listener: Callable[[list[str]], None]) -> None:
        """`listener(session_ids)` whenever sessions are revoked (here or elsewhere)."""
        self._listeners.append(listener)

    def publish_with(self, publish: Callable[[list[str]], Awaitable[None]]) -> None:
        """How to tell the other nodes (cluster: a Redis note; best effort)."""
        self._publish = publish

    # ------------------------------------------------------------------ checks

    async def check(self, session_id: str, user_id: str) -> None:
        """Raise Unauthorized unless the session exists, belongs to `user_id`, is not
        revoked, and its user is active. One dictionary lookup when seen before."""
        if session_id in self._revoked:
            raise Unauthorized("session revoked: sign in again", code="session_revoked")
        owner = self._live.get(session_id)
        if owner is not None:
            if owner != user_id:
                raise Unauthorized("invalid token", code="invalid_token")
            self._live.move_to_end(session_id)
            return
        info = await self._store.get_session(session_id)
        if info is None or info.user_id != user_id:
            raise Unauthorized("invalid token", code="invalid_token")
        if info.revoked_at is not None or session_id in self._revoked:
            self._revoked.setdefault(session_id, trio.current_time())
            raise Unauthorized("session revoked: sign in again", code="session_revoked")
        if not info.user_active:
            raise Unauthorized("account deactivated", code="account_deactivated")
        self._live[session_id] = user_id
        if len(self._live) > self._max_cached:
            self._live.popitem(last=False)

    # ------------------------------------------------------------------ revocation

    async def revoke(self, session_ids: Sequence[str], *, reason: str) -> list[str]:
        """Revoke in the database, then apply here and tell the other nodes. Returns the
        sessions that were live. Raises Unavailable (storage down: nothing revoked)."""
        revoked = await self._store.revoke_sessions(list(session_ids), at=utcnow(),
                                                    reason=reason)
        await self.revoked(revoked)
        return revoked

    async def revoked(self, session_ids: Sequence[str]) -> None:
        """Sessions revoked in the database already (a refresh-token replay): apply and
        tell the other nodes."""
        if not session_ids:
            return
        self.apply(session_ids)
        if self._publish is not None:
            await self._publish(list(session_ids))

    def apply(self, session_ids: Sequence[str]) -> None:
        """Forget these sessions and close what they hold (another node revoked them)."""
        now = trio.current_time()
        fresh = [sid for sid in session_ids if sid not in self._revoked]
        for sid in session_ids:
            self._revoked.setdefault(sid, now)
            self._live.pop(sid, None)
        if fresh:
            for listener in self._listeners:
                listener(fresh)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: read what was revoked anywhere since the last look (SESSION_POLL_INTERVAL)
        and apply it; forget revocations older than an access token's life."""
        task_status.started()
        down = False
        while True:
            await trio.sleep(self._poll_interval)
            try:
                await self._poll_once()
            except Unavailable as exc:
                if not down:
                    log.warning("cannot read revoked sessions (%s); sessions revoked on "
                                "other nodes apply here once storage answers", exc.message)
                down = True
                continue
            down = False
            cutoff = trio.current_time() - self._remember
            for sid in [s for s, at in self._revoked.items() if at < cutoff]:
                del self._revoked[sid]

    async def _poll_once(self) -> None:
        """Everything revoked since the last successful poll began (minus CLOCK_SKEW),
        page by page. Raises Unavailable: the next poll reads from the same point."""
        began = utcnow()
        since, after = self._since, NO_ID
        while True:
            found = await self._store.revoked_sessions_since(since, after_id=after,
                                                             limit=POLL_PAGE)
            self.apply([sid for sid, _ in found])
            if len(found) < POLL_PAGE:
                break
            after, since = found[-1]  # keyset: sessions revoked together share a time
        self._since = began - CLOCK_SKEW

    def live_count(self) -> int:
        return len(self._live)

    def revoked_count(self) -> int:
        return len(self._revoked)

