"""A driver's own AttributeError on a connection it is dropping means "the dependency is
down"; the same error from our code is a bug and must not be hidden as an outage."""

from __future__ import annotations

from typing import Any

import pytest
import trio_asyncio

from chatsrv.adapters.aio import raised_inside
from chatsrv.adapters.cluster.peer_link import _rpc_failed
from chatsrv.adapters.cluster.redis import RedisDirectory
from chatsrv.adapters.cluster.redis_client import _redis_down
from chatsrv.domain.errors import Unavailable


def _in_module(module: str) -> Any:
    """An async function whose code runs as module `module` (what a traceback records), that
    fails the way redis-py's cluster client did in CI: writing on a dropped connection."""
    namespace: dict[str, Any] = {"__name__": module}
    exec("async def write(conn=None):\n    conn.writelines([b'PING'])\n", namespace)
    return namespace["write"]


async def _ours(conn: Any = None) -> None:
    conn.writelines([b"PING"])


def _raised(fn: Any) -> BaseException:
    try:
        fn().send(None)
    except AttributeError as exc:  # the error under test
        return exc
    raise AssertionError("did not raise")


def test_raised_inside_names_the_package_of_the_innermost_frame() -> None:
    exc = _raised(_in_module("redis.asyncio.cluster"))
    assert raised_inside(exc, "redis")
    assert not raised_inside(exc, "grpclib")
    assert not raised_inside(_raised(_in_module("redisfoo")), "redis")  # a prefix is not a package
    assert not raised_inside(_raised(_ours), "redis")
    assert not raised_inside(AttributeError("never raised"), "redis")


def test_attribute_errors_count_as_down_only_when_the_driver_raised_them() -> None:
    assert _redis_down(_raised(_in_module("redis.asyncio.connection")))
    assert not _redis_down(_raised(_ours))
    assert _redis_down(ConnectionError("refused"))
    assert _rpc_failed(_raised(_in_module("grpclib.protocol")))
    assert _rpc_failed(_raised(_in_module("h2.connection")))
    assert not _rpc_failed(_raised(_ours))


async def test_redis_call_maps_only_redis_py_faults_to_unavailable() -> None:
    directory = object.__new__(RedisDirectory)  # _call needs only its timeout
    directory._timeout = 1.0
    async with trio_asyncio.open_loop():
        with pytest.raises(Unavailable, match="writelines"):
            await directory._call(_in_module("redis.asyncio.cluster"))
        with pytest.raises(AttributeError):  # our bug: raised as it is, not an outage
            await directory._call(_ours)
