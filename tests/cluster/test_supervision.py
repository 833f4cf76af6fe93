"""Failures injected into a cluster node's long-lived tasks (peer links, Redis heartbeat and
listener, node watch): the node keeps serving and the cluster keeps routing. The
single-node tasks are in tests/e2e/test_supervision.py."""

from __future__ import annotations

import pytest
import trio

from chatsrv.adapters.cluster.peer_link import PeerLink
from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import routable
from tests.e2e.test_supervision import metric
from tests.faults import fail_once


def directory_of(server):  # type: ignore[no-untyped-def]
    return server.services.presence._directory


async def test_a_peer_link_failure_loses_one_batch_and_the_link_goes_on(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            failed = fail_once(monkeypatch, PeerLink, "_deliver")
            await wa.request("chat_message", {"conversation_id": cid, "content": "lost live"},
                             "message_ack")
            with trio.fail_after(5):
                await failed.raised.wait()
            # the restarted link delivers what comes next, live
            await wa.request("chat_message", {"conversation_id": cid, "content": "live"},
                             "message_ack")
            await wb.expect("new_message", content="live")
            # and the batch the failure took is healed by sync: nothing acked is lost
            result = await wb.request("sync", {"conversations": {cid: 0}}, "sync_result")
            assert [m["content"] for m in result["payload"]["messages"]] == ["lost live", "live"]
        # (the one failure hit whichever link delivered first: a's message, or a presence note)
        assert await metric(n1, "peer-link-") + await metric(n2, "peer-link-") == 1


async def test_a_redis_heartbeat_failure_restarts_the_heartbeat(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        failed = fail_once(monkeypatch, directory_of(n2)._ops, "refresh")
        await failed.recovered.wait()  # the next beat ran: n2 stays alive in the cluster
        assert await metric(n2, "redis-heartbeat") == 1
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            await wa.request("chat_message", {"conversation_id": cid, "content": "beat"},
                             "message_ack")
            await wb.expect("new_message", content="beat")


async def test_a_node_watch_failure_restarts_the_watch(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        n1, *_ = await cluster.two_nodes_and_a_pair()
        failed = fail_once(monkeypatch, directory_of(n1), "_watch_once")
        await failed.recovered.wait()
        assert await metric(n1, "node-watch") == 1


async def test_a_bad_cluster_event_is_skipped_and_the_feed_goes_on(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        failed = fail_once(monkeypatch, directory_of(n1), "_apply")
        async with c2.ws(a):  # an "on" note n1 fails to apply
            await failed.raised.wait()
            async with c2.ws(b):  # the next one is applied
                await routable(n1, b.id)


async def test_a_session_revoked_on_one_node_closes_its_sockets_on_every_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e.test_security import closed_with

    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as on1, c2.ws(a) as on2:
            r = await c1.http.post("/api/auth/logout", headers=a.headers)
            assert r.status_code == 204
            await closed_with(on1, 4401, within=2)
            await closed_with(on2, 4401, within=2)  # over Redis
        r = await c2.http.get("/api/users/me", headers=a.headers)
        assert r.status_code == 401
        # without Redis notes, the database poll still gets there within 2 s
        monkeypatch.setattr(directory_of(n1), "sessions_revoked", _no_note)
        async with c2.ws(b) as b_on2:
            r = await c1.http.post("/api/auth/logout", headers=b.headers)
            assert r.status_code == 204
            await closed_with(b_on2, 4401, within=2)
        r = await c2.http.get("/api/users/me", headers=b.headers)
        assert r.status_code == 401


async def _no_note(session_ids: list[str]) -> None:
    await trio.lowlevel.checkpoint()
