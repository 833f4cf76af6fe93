"""Redis stopped under a running two-node cluster (a private redis-server; the machine's
shared one is never touched): a user who connects during the outage is registered and
reachable from the other node within a second of Redis returning, and /metrics shows the
outage."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from bench.faults import PrivateRedis, open_private_redis
from chatsrv.config import Settings
from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import routable
from tests.fault.conftest import _require


@pytest.fixture
def backend() -> str:
    return "postgres"  # a cluster shares one PostgreSQL


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    _require(redis=True)
    async with open_private_redis() as r:
        yield r


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        text = (await http.get("/metrics")).text
    found = re.search(rf"^chatsrv_{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


async def test_users_who_connect_during_a_redis_outage_are_reachable_within_a_second(
        settings: Settings, private_redis: PrivateRedis, aio_loop: None,
        nursery: trio.Nursery) -> None:
    def node(node_id: str) -> Settings:
        return dataclasses.replace(
            settings, redis_url=private_redis.url, redis_prefix="outage", node_id=node_id,
            grpc_host="127.0.0.1", grpc_port=0, node_heartbeat_interval=5.0, node_ttl=15.0,
            redis_timeout=0.5, embedded=False)

    cluster = Cluster(nursery, node)
    with trio.fail_after(60):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        assert await metric(n1.url, "redis_up") == 1.0
        async with c2.ws(b) as wb:
            await routable(n1, b.id)
            await private_redis.stop()
            async with c1.ws(a) as wa:  # a connects while Redis is down
                await wa.settle()  # its arrival was handled: registering it failed
                assert await metric(n1.url, "redis_up") == 0.0
                assert await metric(n1.url, "redis_outages_total") >= 1
                await private_redis.start()  # empty: everything is registered again
                back = trio.current_time()
                await routable(n2, a.id)
                reachable = trio.current_time() - back
                # a message from b on node 2 reaches a on node 1, live
                await wb.request("chat_message", {"conversation_id": cid, "content": "back"},
                                 "message_ack")
                await wa.expect("new_message", content="back")
        assert reachable < 1.0 + 0.5, f"reachable {reachable:.2f}s after Redis returned"
    for srv in cluster.servers:
        srv.shutdown.set()
