"""Offline push in a cluster: the outbox is shared, each push is sent by exactly one node,
and "online" is the cluster's (a user on another node is not pushed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from chatsrv.adapters.push.webpush import b64url
from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import routable
from tests.e2e.test_push import push_settings, send, subscribe
from tests.push_service import PushService

# one VAPID key for every node: a subscription made through one node is pushed by any
VAPID = b64url(bytes(range(1, 33)))


@pytest.fixture
async def push_service(nursery: trio.Nursery) -> AsyncIterator[PushService]:
    service = await nursery.start(PushService().run)
    yield service
    service.release.set()
    assert not service.errors, service.errors


async def test_each_push_is_sent_once_and_online_is_cluster_wide(
        cluster: Cluster, push_service: PushService) -> None:
    with trio.fail_after(60):
        base = push_settings(cluster.node_settings("node-1"), push_delay=0.5,
                             push_poll_interval=0.05, vapid_private_key=VAPID)
        changes = {k: getattr(base, k) for k in (
            "push_delay", "push_poll_interval", "push_allow_insecure", "push_retry_delay",
            "push_retry_max_delay", "push_http_timeout", "vapid_private_key")}
        n1, n2 = await cluster.start("node-1", **changes), await cluster.start("node-2", **changes)
        c1, c2 = n1.client(), n2.client()
        alice, bob = await c1.register(), await c1.register()
        r = await c2.http.get("/api/push/vapid-public-key", headers=alice.headers)
        r1 = await c1.http.get("/api/push/vapid-public-key", headers=alice.headers)
        assert r.json() == r1.json()  # the same key on every node
        push_service.expect_key = r.json()["key"]
        await subscribe(c2, bob, push_service.browser("bob"))  # through node 2
        offline = []
        for i in range(8):
            someone = await c1.register()
            await subscribe(c1 if i % 2 else c2, someone, push_service.browser(f"u{i}"))
            offline.append((someone, await c1.conversation(alice, someone, bob,
                                                           name=f"g{i}")))
        async with c2.ws(bob):  # bob is online on node 2 only
            await routable(n1, bob.id)
            for someone, conv in offline:
                await send(c1, alice, conv, f"to {someone.username}")
            names = sorted([(await push_service.next()).name for _ in offline])
            assert names == sorted(f"u{i}" for i in range(8))  # each once, nobody twice
            for n in (n1, n2):
                push = n.services.push
                assert push is not None
                assert await push.pending(bob.id) == 0  # bob, online elsewhere: none queued
        sent = [n.services.push.counts["sent"] for n in (n1, n2)]  # type: ignore[union-attr]
        assert sum(sent) == 8
        assert push_service.nothing_pending()
        await c1.aclose()
        await c2.aclose()
