"""The cluster's Redis connection: connecting (a plain Redis or a Redis Cluster), waiting
for Redis at start (open_redis, wait_for_redis), describing its URL and errors for
messages, and what counts as "Redis is down" (_redis_down) for the directory in redis.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import redis.asyncio as aredis
import redis.exceptions
import trio
from trio_asyncio import aio_as_trio

from chatsrv.adapters.aio import raised_inside
from chatsrv.config import Settings
from chatsrv.tasks import StartupError, retry

# Redis down, unreachable or too slow; anything else (ResponseError...) is a bug and raises.
# On a Redis Cluster also: no node reachable, CLUSTERDOWN/TRYAGAIN while a shard restarts
# or fails over, a slot not covered yet.
_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
         trio.TooSlowError, redis.exceptions.RedisClusterException,
         redis.exceptions.ClusterError, redis.exceptions.TryAgainError)


def _redis_down(exc: BaseException) -> bool:
    """Redis down (see _DOWN), or redis-py's cluster client writing on a connection it is
    replacing while the node restarts ("'NoneType' object has no attribute 'writelines'",
    seen in CI): an AttributeError raised inside redis-py, not one of ours."""
    return isinstance(exc, _DOWN) or (isinstance(exc, AttributeError)
                                      and raised_inside(exc, "redis"))


async def _connect(url: str, name: str, sharded: bool) -> aredis.Redis:
    # decode_responses: every reply is str (the casts in redis_ops.py rely on it)
    if sharded:
        cluster = aredis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1),
                                               decode_responses=True, client_name=name)
        return cluster  # type: ignore[return-value]
    return aredis.Redis.from_url(url, decode_responses=True, client_name=name)


def describe_url(url: str) -> str:
    """'Redis at host:port' without credentials, for error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"Redis at {parts.path}"
    return f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"


def _describe(exc: BaseException) -> str:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:  # the driver's reason is a few causes down
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host name ({e.strerror})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
    if isinstance(exc, redis.exceptions.TimeoutError | trio.TooSlowError | TimeoutError):
        return "connection timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def wait_for_redis(client: aredis.Redis, url: str, *, deadline: float,
                         ping_timeout: float) -> None:
    """Block until Redis answers PING: connection failures are retried for `deadline`
    seconds; refused credentials and an unknown host fail at once. Raises StartupError."""
    where = describe_url(url)

    async def attempt() -> None:
        try:
            with trio.fail_after(ping_timeout):
                await aio_as_trio(client.ping)()
        except (redis.exceptions.ClusterError, redis.exceptions.TryAgainError):
            raise  # a cluster still forming or failing over: retried
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as exc:
            raise StartupError(f"{where}: {_describe(exc)}") from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException) as exc:
            if "Name or service not known" in str(exc) or "nodename nor servname" in str(exc):
                raise StartupError(f"{where}: cannot resolve the host name") from exc
            raise

    await retry(attempt, what=where, deadline=deadline, transient=_DOWN, describe=_describe)


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[aredis.Redis]:
    """Own a Redis client for the block, once Redis answers PING (see wait_for_redis:
    raises StartupError). Closed on exit (shielded, REDIS_TIMEOUT)."""
    if not settings.redis_url:
        raise ValueError("open_redis needs settings.redis_url")
    # named, so CLIENT LIST shows which node a connection belongs to
    client = await aio_as_trio(_connect)(settings.redis_url,
                                         f"{settings.redis_prefix}.{settings.node_id}",
                                         settings.redis_cluster)
    try:
        await wait_for_redis(client, settings.redis_url,
                             deadline=settings.connect_retry_deadline,
                             ping_timeout=settings.redis_timeout)
        yield client
    finally:
        with trio.move_on_after(settings.redis_timeout, shield=True):
            await aio_as_trio(client.aclose)()
