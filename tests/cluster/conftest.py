"""Cluster fixtures: real nodes on the same PostgreSQL and Redis, each test in its own Redis
namespace (REDIS_PREFIX).

Redis comes from CHATSRV_TEST_REDIS (default redis://127.0.0.1:6379/0). Outside CI these tests
skip loudly when it is unreachable; under CI=true they fail.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import trio

from chatsrv.adapters.cluster.redis_ops import Keys
from chatsrv.config import Settings
from tests.conftest import Server, _unreachable, start_server
from tests.helpers import Account, Client

REDIS_URL = os.environ.get("CHATSRV_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def single_redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        _unreachable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


class RedisClusterProcs:
    """A real 3-master Redis Cluster of our own on free local ports (never the shared
    Redis): redis-server --cluster-enabled yes three times, then redis-cli --cluster
    create. Nothing kept on disk but each node's cluster config (a restarted shard comes
    back empty, with its slots)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [_free_cluster_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, port: int) -> None:
        log_path = self.root / f"redis-{port}.log"
        log = log_path.open("ab")
        proc = self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
             "--dir", str(self.root)], stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"redis-server on {port} exited: {' '.join(tail)}")
            return _ping(port)

        _wait(up, f"redis-server on {port}")

    def create(self) -> None:
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self) -> None:
        _wait(lambda: all(_cluster_ok(p) for p in self.ports), "cluster_state:ok")

    def port_of_slot(self, key: str) -> int:
        admin = redis.Redis(port=self.ports[0])
        try:
            slot = admin.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, primary, *_ in admin.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            admin.close()
        raise LookupError(key)

    def restart(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)
        self.start(port)
        self.wait_ok()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def _cluster_ok(port: int) -> bool:
    try:
        info = redis.Redis(port=port, socket_connect_timeout=0.5).cluster("info")
    except (redis.exceptions.RedisError, OSError):
        return False
    return str(info.get("cluster_state")) == "ok"


def _wait(ready: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    import time

    until = time.monotonic() + deadline
    while not ready():  # polled: a process coming up has no event to wait on
        if time.monotonic() > until:
            raise TimeoutError(f"{what} not ready within {deadline:g}s")
        time.sleep(0.1)


def _free_cluster_port() -> int:
    """A free port for a cluster node: at most 55535, its bus port (+10000) free too."""
    import random
    import socket

    for _ in range(100):
        port = random.randrange(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _unreachable("redis-server/redis-cli (for a Redis Cluster)", FileNotFoundError())
    procs = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster"))
    try:
        for port in procs.ports:
            procs.start(port)
        procs.create()
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_url(request: pytest.FixtureRequest, single_redis_url: str) -> str:
    """The cluster suite runs on one Redis and on a 3-master Redis Cluster."""
    if request.param == "redis":
        return single_redis_url
    return str(request.getfixturevalue("redis_cluster").url)


def admin_client(url: str) -> Any:
    """A synchronous client of the test's Redis (a cluster client for a cluster)."""
    if url.startswith("redis+cluster://"):
        return redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"),
                                           socket_connect_timeout=2, socket_timeout=2)
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def server_clients(url: str, **options: Any) -> list[redis.Redis]:
    """One plain client per Redis server of the test's Redis (every primary of a cluster):
    for what is per server, such as CLIENT LIST and SCAN."""
    if not url.startswith("redis+cluster://"):
        return [redis.Redis.from_url(url, **options)]
    seed = redis.Redis.from_url(url.replace("redis+cluster://", "redis://"))
    try:
        ports = sorted({int(primary[1]) for _, _, primary, *_ in
                        seed.execute_command("CLUSTER", "SLOTS")})
    finally:
        seed.close()
    return [redis.Redis(port=port, **options) for port in ports]


def cluster_keys(url: str, prefix: str) -> Keys:
    """The key names a node uses for `prefix` on the test's Redis."""
    return Keys(prefix, sharded=url.startswith("redis+cluster://"))


@pytest.fixture
def backend() -> str:
    # A cluster shares one PostgreSQL; SQLite is single-node only.
    return "postgres"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own; its keys are deleted afterwards."""
    prefix = f"chatsrv-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    for client in server_clients(redis_url, socket_connect_timeout=2, socket_timeout=2):
        try:
            for key in list(client.scan_iter(f"{cluster_keys(redis_url, prefix).prefix}:*")):
                client.delete(key)
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
            redis_cluster=redis_url.startswith("redis+cluster://"),
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

    async def start(self, node_id: str, **changes: Any) -> Server:
        settings = dataclasses.replace(self.node_settings(node_id), **changes)
        srv = await start_server(self.nursery, settings)
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
