"""Cluster mode end to end: real nodes on one PostgreSQL and one Redis, real sockets.

Users connect to different nodes, as behind a load balancer with sticky sessions; what one
node publishes must reach the users of the others, and presence must be the cluster's.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio

from bench.server import LOAD_TEST_LIMITS
from chatsrv.config import ConfigError, Settings
from chatsrv.tasks import StartupError
from chatsrv.wiring import open_services
from tests.cluster.conftest import (
    Cluster,
    NodeSettings,
    RedisClusterProcs,
    admin_client,
    cluster_keys,
    server_clients,
)
from tests.conftest import Server
from tests.helpers import Account, Client


async def routable(server: Server, user_id: str, *, present: bool = True) -> None:
    """Wait until `server` knows the user is (or is no longer) on another node. Redis
    pub/sub tells the nodes asynchronously; a live event published before that is missed
    and healed by `sync`, which tests of live delivery must not depend on."""
    router = server.services.router
    with trio.fail_after(5):
        await router.wait_view(  # type: ignore[attr-defined]
            lambda: bool(router.nodes_of(user_id)) == present)  # type: ignore[attr-defined]


async def test_messages_cross_nodes_in_order_and_reach_every_device(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as a1, c2.ws(a) as a2, c2.ws(b) as wb:
            await routable(n1, a.id)
            await routable(n1, b.id)
            ack = await a1.request("chat_message", {"conversation_id": cid, "content": "across",
                                                    "client_msg_id": "x-1"}, "message_ack")
            assert ack["type"] == "message_ack", ack
            for ws in (wb, a2):  # the other member, and the sender's device on node 2
                got = await ws.expect("new_message", content="across")
                assert got["payload"]["id"] == ack["payload"]["id"]
                assert got["payload"]["sender_id"] == a.id and got["payload"]["seq"] == 1
            await a1.none("new_message")  # not echoed to the sending device

            # a burst arrives complete and in order (batched over one link)
            for i in range(30):
                await a1.send("chat_message", {"conversation_id": cid, "content": f"m{i}"})
            seqs = [(await wb.expect("new_message", content=f"m{i}"))["payload"]["seq"]
                    for i in range(30)]
            assert seqs == list(range(2, 32))

            # and back, with receipts to the sender on the other node
            await routable(n2, a.id)
            back = await wb.request("chat_message", {"conversation_id": cid, "content": "back"},
                                    "message_ack")
            for ws in (a1, a2):
                await ws.expect("new_message", content="back")
            assert back["type"] == "message_ack", back
            tick = await a1.request("chat_message", {"conversation_id": cid, "content": "tick"},
                                    "message_ack")
            await wb.expect("new_message", content="tick")
            await wb.send("read_receipt", {"message_id": tick["payload"]["id"]})
            for ws in (a1, a2):
                status = await ws.expect("message_status", status="read")
                assert status["payload"]["user_id"] == b.id
                assert status["payload"]["message_id"] == tick["payload"]["id"]
        await c1.aclose()
        await c2.aclose()


async def test_a_member_removed_through_one_node_gets_no_more_live_events_from_others(
        cluster: Cluster) -> None:
    """Node 2 caches the group's members for its fan-out; removing a member through node 1
    must reach that cache at once (over Redis), not when it expires."""
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, _ = await cluster.two_nodes_and_a_pair()
        r = await c1.register()
        cid = await c1.conversation(a, b, r, name="group")
        cache = n2.services.members
        async with c2.ws(b) as wb, c1.ws(r) as wr:
            await routable(n2, r.id)
            await wb.request("chat_message", {"conversation_id": cid, "content": "before"},
                             "message_ack")
            await wr.expect("new_message", content="before")
            assert r.id in await cache.members(cid)  # node 2 has the members cached
            gone = await c1.http.delete(f"/api/conversations/{cid}/members/{r.id}",
                                        headers=a.headers)
            assert gone.status_code == 204, gone.text
            await wr.expect("member_removed")
            with trio.fail_after(3):  # well inside the cache's 5 s lifetime
                await cache.wait_uncached(cid)  # node 1's note reached node 2
            await wb.request("chat_message", {"conversation_id": cid, "content": "after"},
                             "message_ack")
            # a barrier on the same path (node 2 -> node 1, one link, in order): b's message
            # in their own 1:1 arrives after "after" would have
            direct = await c1.conversation(b, r)
            await wb.request("chat_message", {"conversation_id": direct, "content": "marker"},
                             "message_ack")
            await wr.expect("new_message", content="marker")
            assert not [f for f in wr.backlog if f["payload"].get("content") == "after"]
        await c1.aclose()
        await c2.aclose()


async def test_a_node_that_joins_later_routes_to_users_already_online(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1 = await cluster.start("node-1")
        c1 = n1.client()
        a, b = await c1.register(), await c1.register()
        cid = await c1.conversation(a, b)
        async with c1.ws(b) as wb:
            n2 = await cluster.start("node-2")  # loads who is where when it starts
            c2 = n2.client()
            assert n2.services.router.nodes_of(b.id)  # type: ignore[attr-defined]
            async with c2.ws(a) as wa:
                await wa.request("chat_message", {"conversation_id": cid, "content": "hi"},
                                 "message_ack")
                await wb.expect("new_message", content="hi")
        await c1.aclose()
        await c2.aclose()


async def test_presence_and_status_across_nodes(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c2.ws(b) as wb:
            await routable(n1, b.id)
            async with c1.ws(a):
                await wb.expect("presence_update", user_id=a.id, status="online")
                r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
                assert r.json()["status"] == "online"  # node 2 has no connection of a
            off = await wb.expect("presence_update", user_id=a.id, status="offline")
            assert off["payload"]["last_seen"]
            r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
            assert r.json()["status"] == "offline" and r.json()["last_seen"]

            # multi-device across nodes: online while a device is connected anywhere
            async with c2.ws(a):
                await wb.expect("presence_update", user_id=a.id, status="online")
                async with c1.ws(a):
                    pass  # a device on the other node comes and goes
                r = await c1.http.get(f"/api/users/{a.id}", headers=b.headers)
                assert r.json()["status"] == "online"  # node 1 has none of a's devices now
            await wb.expect("presence_update", user_id=a.id, status="offline")
        await c1.aclose()
        await c2.aclose()


async def test_typing_across_nodes(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            await wa.send("typing", {"conversation_id": cid, "is_typing": True})
            t = await wb.expect("typing", is_typing=True)
            assert t["payload"] == {"conversation_id": cid, "user_id": a.id, "is_typing": True}
            with trio.fail_after(3):  # typing_ttl is 1 s in tests: it stops by itself
                await wb.expect("typing", is_typing=False)
        await c1.aclose()
        await c2.aclose()


async def test_users_of_a_stopped_node_go_offline_elsewhere(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c2.ws(b) as wb:
            await routable(n1, b.id)
            async with c1.ws(a):
                await wb.expect("presence_update", user_id=a.id, status="online")
                n1.shutdown.set()
                off = await wb.expect("presence_update", user_id=a.id, status="offline",
                                      wait=n1.settings.node_ttl)
            assert off["payload"]["last_seen"]
            r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
            assert r.json()["status"] == "offline" and r.json()["last_seen"]
            await routable(n2, a.id, present=False)
        await c1.aclose()
        await c2.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def node_process(node_settings: NodeSettings, tmp_path: Path,
                       name: str) -> AsyncIterator[tuple[trio.Process, Client]]:
    """A cluster node in a process of its own (to kill or stop it), serving; and a client
    of it. Killed at the end if still running."""
    s = node_settings(name)
    port = _free_port()
    env = dict(os.environ, DATABASE_URL=s.database_url or "", REDIS_URL=s.redis_url or "",
               REDIS_PREFIX=s.redis_prefix, NODE_ID=s.node_id, HTTP_HOST="127.0.0.1",
               HTTP_PORT=str(port), GRPC_HOST="127.0.0.1", GRPC_PORT="0",
               JWT_SECRET=s.jwt_secret, BCRYPT_ROUNDS="4", PRESENCE_GRACE="0.2",
               NODE_HEARTBEAT_INTERVAL=str(s.node_heartbeat_interval),
               NODE_TTL=str(s.node_ttl), CONNECT_RETRY_DEADLINE="10", **LOAD_TEST_LIMITS)
    log_path = tmp_path / f"{name}.log"
    log = log_path.open("wb")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chatsrv", "serve"], env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            while True:  # wait for it to serve
                assert proc.returncode is None, log_path.read_text()
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        client = Client(SimpleNamespace(url=url, ws_url=url.replace("http", "ws") + "/api/ws"))
        try:
            yield proc, client
        finally:
            await client.aclose()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5, shield=True):
                await proc.wait()
        log.close()


async def _seen_online(c2: Client, a: Account, b: Account) -> None:
    with trio.fail_after(5):  # the node process registered a in Redis
        while True:
            r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
            if r.json()["status"] == "online":
                return
            await trio.sleep(0.05)


@asynccontextmanager
async def watching_a_user_of_a_node_process(
        cluster: Cluster, node_settings: NodeSettings, tmp_path: Path,
        name: str) -> AsyncIterator[tuple[trio.Process, Account, Account, Client, Any]]:
    """node-2 in this process and `name` in its own; user a connected to `name` (seen online
    by node-2), user b, a's contact, connected to node-2. Yields (the process, a, b, node-2's
    client, b's socket)."""
    n2 = await cluster.start("node-2")
    async with node_process(node_settings, tmp_path, name) as (proc, other):
        c2 = n2.client()
        a, b = await c2.register(), await c2.register()
        await c2.conversation(a, b)
        async with other.ws(a):
            await _seen_online(c2, a, b)
            async with c2.ws(b) as wb:
                yield proc, a, b, c2, wb
        await c2.aclose()


async def test_users_of_a_killed_node_go_offline_by_ttl(
        cluster: Cluster, node_settings: NodeSettings, tmp_path: Path) -> None:
    """A node killed with SIGKILL says nothing: its liveness key expires (node_ttl) and a
    surviving node turns its users offline, persisting last_seen."""
    s = node_settings("node-killed")
    with trio.fail_after(45):
        async with watching_a_user_of_a_node_process(
                cluster, node_settings, tmp_path, "node-killed") as (proc, a, b, c2, wb):
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = trio.current_time()
            # dead by TTL, noticed at node 2's next heartbeat
            off = await wb.expect("presence_update", user_id=a.id, status="offline",
                                  wait=s.node_ttl + 2 * s.node_heartbeat_interval + 0.5)
            assert trio.current_time() - killed_at >= s.node_ttl * 0.5
            assert off["payload"]["last_seen"]
            r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
            assert r.json()["status"] == "offline" and r.json()["last_seen"]


async def test_a_stalled_node_that_was_reaped_announces_its_users_online_again(
        cluster: Cluster, node_settings: NodeSettings, tmp_path: Path) -> None:
    """A node that stalls past node_ttl (SIGSTOP) is reaped and its users announced offline;
    when it runs again it registers again, and its users, still connected, are announced
    online again."""
    s = node_settings("node-stalled")
    with trio.fail_after(45):
        async with watching_a_user_of_a_node_process(
                cluster, node_settings, tmp_path, "node-stalled") as (proc, a, b, c2, wb):
            proc.send_signal(signal.SIGSTOP)
            try:
                await wb.expect("presence_update", user_id=a.id, status="offline",
                                wait=s.node_ttl + 2 * s.node_heartbeat_interval + 0.5)
            finally:
                proc.send_signal(signal.SIGCONT)
            await wb.expect("presence_update", user_id=a.id, status="online",
                            wait=5 * s.node_heartbeat_interval + 2)
            r = await c2.http.get(f"/api/users/{a.id}", headers=b.headers)
            assert r.json()["status"] == "online"


async def test_a_node_does_not_start_without_redis(node_settings: NodeSettings,
                                                   aio_loop: None) -> None:
    s = dataclasses.replace(node_settings("node-1"), redis_url="redis://127.0.0.1:1/0",
                            connect_retry_deadline=0.5)
    with trio.fail_after(10), pytest.raises(StartupError,
                                            match=r"Redis at 127\.0\.0\.1:1: connection refused"):
        async with open_services(s):
            pass


async def test_cluster_mode_needs_postgres(tmp_path: Path) -> None:
    s = Settings(redis_url="redis://127.0.0.1:6379/0", data_dir=tmp_path,
                 jwt_secret="test-secret-" + "x" * 40, embedded=False)
    with trio.fail_after(10), pytest.raises(ConfigError, match="DATABASE_URL"):
        async with open_services(s):
            pass
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"REDIS_URL": "redis://cache:6379/0", "JWT_SECRET": "s" * 40})
    with pytest.raises(ConfigError, match="NODE_TTL"):  # live nodes would be taken for dead
        Settings.from_env({"REDIS_URL": "redis://cache:6379/0", "JWT_SECRET": "s" * 40,
                           "DATABASE_URL": "postgresql://x@db/chat", "NODE_TTL": "5",
                           "NODE_HEARTBEAT_INTERVAL": "5"})


async def test_nodes_recover_when_redis_loses_everything(cluster: Cluster, redis_url: str,
                                                         redis_prefix: str) -> None:
    """Redis restarted empty (it holds nothing acknowledged): every key of the cluster is
    gone and the nodes' connections are cut. The nodes re-register their users; live
    delivery resumes, and what was missed meanwhile comes with `sync`."""
    await recovers_after(cluster, lambda: lose_everything(redis_url, redis_prefix))


@pytest.mark.parametrize("redis_url", ["redis-cluster"], indirect=True)
async def test_nodes_recover_when_the_directory_shard_restarts(
        cluster: Cluster, redis_cluster: RedisClusterProcs, redis_prefix: str) -> None:
    """On a Redis Cluster the shard holding the directory's slot is killed and comes back
    empty (no replica, no persistence: the worst case). Until it is back the nodes cannot
    reach the directory; then they re-register and delivery resumes."""
    port = redis_cluster.port_of_slot(cluster_keys(redis_cluster.url, redis_prefix).nodes)
    await recovers_after(cluster, lambda: redis_cluster.restart(port))


async def recovers_after(cluster: Cluster, wreck: Callable[[], None]) -> None:
    with trio.fail_after(40):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c2.ws(b) as wb:
            async with c1.ws(a) as wa:
                await routable(n1, b.id)
                await trio.to_thread.run_sync(wreck)
                await status_on(c2, b, a, "online")  # both nodes registered again
                await status_on(c1, a, b, "online")
                sent = []
                with trio.fail_after(10):
                    while True:  # a live event in the gap is missed (sync heals it)
                        text = f"still here {len(sent)}"
                        await wa.request("chat_message", {"conversation_id": cid,
                                                          "content": text}, "message_ack")
                        sent.append(text)
                        with trio.move_on_after(0.5):
                            await wb.expect("new_message", content=text)
                            break
                result = await wb.request("sync", {"conversations": {cid: 0}}, "sync_result")
                assert [m["content"] for m in result["payload"]["messages"]] == sent
            # and presence is right again: a leaves, b hears it, node 2 says offline (at
            # once, or at node 1's next heartbeat if its last Redis call hit a cut connection)
            await wb.expect("presence_update", user_id=a.id, status="offline")
            await status_on(c2, b, a, "offline")
        await c1.aclose()
        await c2.aclose()


async def test_rate_limits_are_shared_by_the_nodes(cluster: Cluster) -> None:
    """A limit holds for the cluster, not per node: failed logins against one account are
    counted on Redis whichever node they reach (GCRA in one Lua call)."""
    with trio.fail_after(30):
        n1 = await cluster.start("node-1", login_failures_per_minute=4.0)
        n2 = await cluster.start("node-2", login_failures_per_minute=4.0)
        c1, c2 = n1.client(), n2.client()
        a = await c1.register()
        wrong = {"email": a.email, "password": "not-the-password"}
        codes = [(await c.http.post("/api/auth/login", json=wrong)).status_code
                 for c in (c1, c2, c1, c2, c1)]
        assert codes == [401, 401, 401, 401, 429]
        r = await c2.http.post("/api/auth/login", json=wrong)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        await c1.aclose()
        await c2.aclose()


async def status_on(client: Client, viewer: Account, user: Account, status: str) -> None:
    """Wait until the client's node reports `user` with `status`."""
    with trio.fail_after(5):
        while True:
            r = await client.http.get(f"/api/users/{user.id}", headers=viewer.headers)
            if r.json()["status"] == status:
                return
            await trio.sleep(0.05)


def lose_everything(redis_url: str, redis_prefix: str) -> None:
    """What a Redis restart does to one cluster: its keys vanish, its connections drop."""
    found = 0
    for admin in server_clients(redis_url):
        try:
            for key in list(admin.scan_iter(f"{cluster_keys(redis_url, redis_prefix).prefix}:*")):
                found += admin.delete(key)
            for conn in admin.client_list():
                if conn["name"].startswith(f"{redis_prefix}."):
                    admin.client_kill_filter(_id=conn["id"])
        finally:
            admin.close()
    assert found


async def test_the_node_port_refuses_strangers(cluster: Cluster, redis_url: str,
                                               redis_prefix: str) -> None:
    from grpclib.client import Channel
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError
    from trio_asyncio import aio_as_trio

    from chatsrv._pb.chatsrv.node.v1 import node_grpc, node_pb2
    from chatsrv.adapters.cluster.peer_link import NODE_KEY_HEADER, node_key, split_address

    with trio.fail_after(30):
        n1 = await cluster.start("node-1")
        c1 = n1.client()
        a = await c1.register()
        admin = admin_client(redis_url)
        try:
            (address,) = admin.hgetall(cluster_keys(redis_url, redis_prefix).nodes).values()
        finally:
            admin.close()
        address = address.decode()
        host, port = split_address(address)

        async def channel() -> Channel:
            return Channel(host, port)

        ch = await aio_as_trio(channel)()
        try:
            stub = node_grpc.NodeStub(ch)
            forged = '{"type":"new_message","payload":{"content":"forged"}}'
            request = node_pb2.DeliverRequest(from_instance="x", events=[
                node_pb2.Envelope(user_ids=[a.id], type="new_message", text=forged)])
            async with c1.ws(a) as wa:
                with pytest.raises(GRPCError) as refused:
                    await aio_as_trio(stub.Deliver)(request, metadata={NODE_KEY_HEADER: "guess"})
                assert refused.value.status is Status.UNAUTHENTICATED
                await wa.none("new_message")
                # a node of the cluster (same JWT_SECRET) is heard, and the text is sent as is
                await aio_as_trio(stub.Deliver)(
                    request, metadata={NODE_KEY_HEADER: node_key(n1.settings)})
                got = await wa.expect("new_message")
                assert got["payload"] == {"content": "forged"}
        finally:
            async def close() -> None:
                ch.close()

            await aio_as_trio(close)()
        await c1.aclose()


async def test_a_peer_whose_name_resolves_late_gets_the_events_queued_meanwhile(
        node_settings: NodeSettings, aio_loop: None, nursery: trio.Nursery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after `podman-compose up` a container's name may not resolve yet: the link keeps
    what it has for that node (bounded) and tries again, under PEER_RPC_TIMEOUT each time."""
    import chatsrv.adapters.cluster.peer_link as peer_link

    resolvable = trio.Event()
    failed_twice = trio.Event()
    lookups = 0
    real = peer_link.resolve_host

    async def late_dns(host: str) -> str:
        nonlocal lookups
        if host == "late.invalid":
            lookups += 1
            if not resolvable.is_set():
                if lookups >= 2:
                    failed_twice.set()
                raise OSError("Temporary failure in name resolution")
            return "127.0.0.1"
        return await real(host)

    monkeypatch.setattr(peer_link, "resolve_host", late_dns)
    port = _free_port()

    def settings_of(node_id: str) -> Settings:
        s = node_settings(node_id)
        if node_id == "node-2":
            s = dataclasses.replace(s, grpc_port=port, node_address=f"late.invalid:{port}")
        return s

    cluster = Cluster(nursery, settings_of)
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            await wa.request("chat_message", {"conversation_id": cid, "content": "early"},
                             "message_ack")
            await failed_twice.wait()  # the link tried and failed: the event waits in its queue
            resolvable.set()
            got = await wb.expect("new_message", content="early")  # live, not by sync
            assert got["payload"]["sender_id"] == a.id
    for srv in cluster.servers:
        srv.shutdown.set()
