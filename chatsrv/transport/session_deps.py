"""What every Session on this node shares: the services it calls (`SessionDeps`, built
once in app.py and handed to the endpoint) and the users' frame budgets (`FrameRates`,
one per user, whichever of their connections here a frame comes on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from chatsrv.config import Settings
from chatsrv.domain.errors import RateLimited
from chatsrv.domain.model import Principal
from chatsrv.domain.ratelimit import TokenBucket
from chatsrv.metrics import Metrics
from chatsrv.services.auth import AuthService
from chatsrv.services.calls import CallService
from chatsrv.services.changes import ChangeService
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService
from chatsrv.services.privacy import PrivacyService

if TYPE_CHECKING:
    from chatsrv.transport.session import Session


class FrameRates:
    """WebSocket frames per user on this node (RATE_PER_SECOND / RATE_BURST), shared by
    the user's connections here."""

    def __init__(self, *, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, user_id: str) -> None:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(rate=self._rate, burst=self._burst)
        wait = bucket.take(now=trio.current_time())
        if wait > 0:
            raise RateLimited(f"too many frames; retry after {wait:.2f}s", retry_after=wait)

    def forget(self, user_id: str) -> None:
        self._buckets.pop(user_id, None)


@dataclass(frozen=True, slots=True)
class SessionDeps:
    """What a session calls: services only (built once by the endpoint)."""

    settings: Settings
    metrics: Metrics
    auth: AuthService
    messaging: MessagingService
    presence: PresenceService
    calls: CallService
    rates: FrameRates
    # the endpoint: this connection now runs on a new principal (after `auth`)
    bind: Callable[[Session, Principal], None]
    changes: ChangeService  # edits, deletes, reactions (issue 14)
    # whom the user blocked, for `ready.blocked` (None: not told)
    privacy: PrivacyService | None = None
