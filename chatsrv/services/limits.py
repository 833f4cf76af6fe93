"""Abuse limits on REST: named policies over token buckets, per client address and per account.

The policies (rates from Settings):

    login-failure   per account and per address   LOGIN_FAILURES_PER_MINUTE
    register        per address                   REGISTRATIONS_PER_MINUTE
    refresh         per address                   REFRESHES_PER_MINUTE
    address         every request, per address    ADDRESS_RATE_PER_SECOND / _BURST
    user            every authenticated request   REST_RATE_PER_SECOND / REST_RATE_BURST
    expensive       search, uploads, per user     EXPENSIVE_PER_MINUTE

Only *failed* logins consume login-failure tokens, so a user who types the right password is
never slowed by someone else's failures beyond that account's own limit (an attacker
guessing one account locks that account for a minute, not everyone behind one address).

Buckets live behind the `Limiter` port: in memory on one node, in Redis in a cluster (the
counters shared by every node; adapters/redis_limits.py), falling back to memory while
Redis is down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from chatsrv.domain.errors import RateLimited
from chatsrv.domain.ratelimit import TokenBucket


class Limiter(Protocol):
    """Token buckets by key. `take` consumes `cost` if there is enough; `peek` only looks.
    Both return 0.0 when allowed, else the seconds until it would be."""

    async def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> float: ...
    async def peek(self, key: str, *, rate: float, burst: float) -> float: ...


class LocalLimiter:
    """Buckets in this process. Bounded: past `max_keys`, buckets that have refilled (and so
    mean nothing) are dropped, then the oldest."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._max = max_keys

    async def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> float:
        await trio.lowlevel.checkpoint()
        return self._bucket(key, rate, burst).take(now=trio.current_time(), cost=cost)

    async def peek(self, key: str, *, rate: float, burst: float) -> float:
        await trio.lowlevel.checkpoint()
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.peek(now=trio.current_time())

    def _bucket(self, key: str, rate: float, burst: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(rate=rate, burst=burst)
        return bucket

    def _prune(self) -> None:
        now = trio.current_time()
        for key in [k for k, b in self._buckets.items() if b.full(now=now)]:
            del self._buckets[key]
        while len(self._buckets) >= self._max:
            del self._buckets[next(iter(self._buckets))]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rate: float  # tokens per second
    burst: float


class RateLimits:
    """The REST policies. Each check raises RateLimited (429, `retry_after`)."""

    def __init__(self, limiter: Limiter, *, login_failures_per_minute: float,
                 registrations_per_minute: float, refreshes_per_minute: float,
                 address_rate: float, address_burst: float, user_rate: float,
                 user_burst: float, expensive_per_minute: float) -> None:
        self._limiter = limiter
        per_minute = lambda name, n: Policy(name, n / 60.0, max(1.0, n))  # noqa: E731
        self.login_failure = per_minute("login-failure", login_failures_per_minute)
        self.register = per_minute("register", registrations_per_minute)
        self.refresh = per_minute("refresh", refreshes_per_minute)
        self.expensive = per_minute("expensive", expensive_per_minute)
        self.address = Policy("address", address_rate, address_burst)
        self.user = Policy("user", user_rate, user_burst)

    async def take(self, policy: Policy, subject: str) -> None:
        wait = await self._limiter.take(f"{policy.name}:{subject}", rate=policy.rate,
                                        burst=policy.burst)
        if wait > 0:
            raise RateLimited(f"too many requests ({policy.name}); retry after {wait:.1f}s",
                              retry_after=wait)

    async def check_login(self, subjects: Iterable[str]) -> None:
        """Before checking a password: refused while the account or the address has used
        up its failures."""
        p = self.login_failure
        for subject in subjects:
            wait = await self._limiter.peek(f"{p.name}:{subject}", rate=p.rate, burst=p.burst)
            if wait > 0:
                raise RateLimited(f"too many failed logins; retry after {wait:.0f}s",
                                  retry_after=wait)

    async def login_failed(self, subjects: Iterable[str]) -> None:
        p = self.login_failure
        for subject in subjects:
            await self._limiter.take(f"{p.name}:{subject}", rate=p.rate, burst=p.burst)
