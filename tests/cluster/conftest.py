"""Cluster fixtures: real nodes on the same PostgreSQL and Redis, each test in its own Redis
namespace (REDIS_PREFIX).

Redis comes from CHATSRV_TEST_REDIS (default redis://127.0.0.1:6379/0). Outside CI these tests
skip loudly when it is unreachable; under CI=true they fail.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NamedTuple

import pytest
import redis
import trio

from chatsrv.config import Settings
from tests.conftest import Server, _unreachable, start_server
from tests.helpers import Account, Client

REDIS_URL = os.environ.get("CHATSRV_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        _unreachable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def backend() -> str:
    # A cluster shares one PostgreSQL; SQLite is single-node only.
    return "postgres"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own; its keys are deleted afterwards."""
    prefix = f"chatsrv-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


NodeSettings = Callable[[str], Settings]


@pytest.fixture
def node_settings(settings: Settings, redis_url: str, redis_prefix: str) -> NodeSettings:
    """Settings of one cluster node: same database and Redis namespace, its own node id,
    any free gRPC port, and short heartbeats: a dead node is noticed within ~3.6 s, and a
    node that a loaded CI machine pauses for a second is not taken for dead."""

    def make(node_id: str) -> Settings:
        return dataclasses.replace(
            settings, redis_url=redis_url, redis_prefix=redis_prefix, node_id=node_id,
            grpc_host="127.0.0.1", grpc_port=0, node_heartbeat_interval=0.3, node_ttl=3.0,
            embedded=False,
        )

    return make


class Cluster:
    """Starts nodes of one cluster in the test's nursery; stops them at the end."""

    def __init__(self, nursery: trio.Nursery, node_settings: NodeSettings) -> None:
        self.nursery = nursery
        self.node_settings = node_settings
        self.servers: list[Server] = []

    async def start(self, node_id: str) -> Server:
        srv = await start_server(self.nursery, self.node_settings(node_id))
        self.servers.append(srv)
        return srv

    async def two_nodes_and_a_pair(self) -> TwoNodes:
        """node-1 and node-2, a client of each, two users and their conversation."""
        n1, n2 = await self.start("node-1"), await self.start("node-2")
        c1, c2 = n1.client(), n2.client()
        a, b = await c1.register(), await c1.register()
        cid = await c1.conversation(a, b)
        return TwoNodes(n1, n2, c1, c2, a, b, cid)


class TwoNodes(NamedTuple):
    n1: Server
    n2: Server
    c1: Client
    c2: Client
    a: Account
    b: Account
    cid: str


@pytest.fixture
async def cluster(node_settings: NodeSettings, aio_loop: None,
                  nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    c = Cluster(nursery, node_settings)
    yield c
    for srv in c.servers:
        srv.shutdown.set()
