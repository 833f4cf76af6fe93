"""The Limiter port on Redis: rate-limit buckets shared by every node of a cluster.

One Lua script per check (GCRA, the token bucket as a single "theoretical arrival time" per
key, on Redis's own clock), so a check is one round trip and atomic across nodes. While
Redis is down or slow the node falls back to its own in-memory buckets (each node then
limits on its own: at most N nodes times the limit, never unlimited), logged once.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aredis
import redis.exceptions
import trio
from trio_asyncio import aio_as_trio

from chatsrv.domain.errors import Unavailable
from chatsrv.services.limits import LocalLimiter

log = logging.getLogger(__name__)

# KEYS[1]: bucket; ARGV: emission interval (ms per token), burst, cost, take (1) / peek (0).
# Returns the milliseconds to wait (0: allowed, and taken when ARGV[4] is 1).
GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - interval * burst - now
if wait > 0 then return math.ceil(wait) end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
end
return 0
"""


class RedisLimiter:
    def __init__(self, client: aredis.Redis, *, prefix: str, timeout: float) -> None:
        self._script = client.register_script(GCRA)
        self._prefix = f"{prefix}:limit:"
        self._timeout = timeout
        self._fallback = LocalLimiter()
        self._down = False

    async def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> float:
        return await self._check(key, rate, burst, cost, take=True)

    async def peek(self, key: str, *, rate: float, burst: float) -> float:
        return await self._check(key, rate, burst, 1.0, take=False)

    async def _check(self, key: str, rate: float, burst: float, cost: float, *,
                     take: bool) -> float:
        interval_ms = 1000.0 / rate if rate > 0 else 1e12
        try:
            with trio.fail_after(self._timeout):
                waited: Any = await aio_as_trio(self._script)(
                    keys=[self._prefix + key], args=[interval_ms, burst, cost, int(take)])
        except (OSError, trio.TooSlowError, aredis.RedisError,
                redis.exceptions.RedisClusterException) as exc:
            if not self._down:
                log.warning("rate limits on Redis unavailable (%s): limiting on this node "
                            "alone until it answers", Unavailable(str(exc)).message)
            self._down = True
            if take:
                return await self._fallback.take(key, rate=rate, burst=burst, cost=cost)
            return await self._fallback.peek(key, rate=rate, burst=burst)
        if self._down:
            log.info("rate limits on Redis again")
            self._down = False
        return float(waited) / 1000.0
