"""Fault runs with counts: senders keep a ledger of every `message_ack` while a node, its
PostgreSQL or its Redis fails; afterwards every acked message is stored exactly once, the
seqs are gap-free, a fresh client's `sync` has each exactly once, the senders saw only
`unavailable` or a closed socket (never an ack for something not stored), and service
resumed by itself within RECOVER_BOUND.

Each test runs its own PostgreSQL cluster (initdb) and, for the cluster, its own Redis: the
shared ones are never touched. The longer version of these runs is `python -m bench.chaos`.
"""

from __future__ import annotations

from pathlib import Path

import trio

from bench.faults import Node, PrivatePostgres, PrivateRedis, add_node
from bench.ledger import check, open_traffic, set_up
from tests.fault.conftest import RECOVER_BOUND, assert_clean, assert_reached, explained

SENDERS = 4
RATE = 25.0  # messages/s per sender: 100/s in all, light for 2 shared cores
WARM_UP = 20  # acks before a fault, and again after recovery
DOWN = 1.0  # seconds a killed node or a stopped PostgreSQL/Redis stays down: the outage


async def test_a_node_killed_with_sigkill_while_sending_loses_nothing(
        private_pg: PrivatePostgres, nodes: list[Node], tmp_path: Path) -> None:
    node = add_node(nodes, tmp_path, "node-1", pg=private_pg)
    with explained(nodes, private_pg), trio.fail_after(60):
        await node.start()
        work = await set_up(node.url, SENDERS, [node.url])
        async with open_traffic(work, rate=RATE, watch=[node.child.watch]) as traffic:
            await traffic.wait_acks(WARM_UP)
            async with traffic.fault("kill -9 node") as fault:
                await node.kill()
                await traffic.wait_failures(SENDERS)
                await trio.sleep(DOWN)  # the outage's length, not a wait for an event
                await node.spawn()  # the same port; start-up counts as recovery time
            await traffic.wait_recovered(fault, RECOVER_BOUND)
            await traffic.wait_acks(WARM_UP)
        result = await check(traffic.ledger, work, [node.url])
    assert_reached(fault)
    assert_clean(traffic.ledger, result, nodes)


async def test_a_postgres_restart_while_sending_loses_nothing(
        private_pg: PrivatePostgres, nodes: list[Node], tmp_path: Path) -> None:
    node = add_node(nodes, tmp_path, "node-1", pg=private_pg)
    with explained(nodes, private_pg), trio.fail_after(60):
        await node.start()
        work = await set_up(node.url, SENDERS, [node.url])
        async with open_traffic(work, rate=RATE, watch=[node.child.watch]) as traffic:
            await traffic.wait_acks(WARM_UP)
            for attempt in (1, 2):  # the second finds a pool that already reconnected once
                async with traffic.fault(f"postgres restart {attempt} (stop -m fast, start)"
                                         ) as fault:
                    await private_pg.stop("fast")
                    await traffic.wait_failures(SENDERS)
                    await trio.sleep(DOWN)  # the outage's length
                    await private_pg.start()  # returns once it accepts connections
                await traffic.wait_recovered(fault, RECOVER_BOUND)
                await traffic.wait_acks(WARM_UP)
                assert_reached(fault)
        result = await check(traffic.ledger, work, [node.url])
    assert_clean(traffic.ledger, result, nodes)


async def test_terminated_postgres_connections_while_sending_lose_nothing(
        private_pg: PrivatePostgres, nodes: list[Node], tmp_path: Path) -> None:
    node = add_node(nodes, tmp_path, "node-1", pg=private_pg)
    with explained(nodes, private_pg), trio.fail_after(60):
        await node.start()
        # twice the senders: more statements in flight when a connection is cut
        work = await set_up(node.url, 2 * SENDERS, [node.url])
        terminated = 0
        async with open_traffic(work, rate=RATE, watch=[node.child.watch]) as traffic:
            await traffic.wait_acks(WARM_UP)
            async with traffic.fault("pg_terminate_backend x5, 300 ms apart") as fault:
                for _ in range(5):
                    terminated += await private_pg.terminate_backends()
                    await trio.sleep(0.3)  # the fault's own rhythm, not a wait for an event
            await traffic.wait_recovered(fault, RECOVER_BOUND)
            await traffic.wait_acks(WARM_UP)
        result = await check(traffic.ledger, work, [node.url])
    assert terminated >= 5  # the node's pool had connections each time
    assert_clean(traffic.ledger, result, nodes)


async def test_a_cluster_survives_a_killed_node_and_a_redis_restart(
        private_pg: PrivatePostgres, private_redis: PrivateRedis, nodes: list[Node],
        tmp_path: Path) -> None:
    n1 = add_node(nodes, tmp_path, "node-1", pg=private_pg, redis=private_redis)
    n2 = add_node(nodes, tmp_path, "node-2", pg=private_pg, redis=private_redis)
    urls = [n1.url, n2.url]
    with explained(nodes, private_pg, private_redis), trio.fail_after(80):
        await n1.start()
        await n2.start()
        work = await set_up(n2.url, SENDERS, urls)  # senders alternate between the nodes
        async with open_traffic(work, rate=RATE,
                                watch=[n1.child.watch, n2.child.watch]) as traffic:
            await traffic.wait_acks(WARM_UP)
            async with traffic.fault("kill -9 node-1") as killed:
                await n1.kill()
                await traffic.wait_failures(SENDERS // 2)  # node-1's senders
                await trio.sleep(DOWN)  # the outage's length
                await n1.spawn()
            await traffic.wait_recovered(killed, RECOVER_BOUND)
            await traffic.wait_acks(WARM_UP)
            async with traffic.fault("redis restart (empty)") as redis_restart:
                await private_redis.stop()
                await trio.sleep(DOWN)  # the outage's length
                await private_redis.start()
            await traffic.wait_recovered(redis_restart, RECOVER_BOUND)
            await traffic.wait_acks(WARM_UP)
        result = await check(traffic.ledger, work, urls)
    assert_reached(killed)
    assert_clean(traffic.ledger, result, nodes)
