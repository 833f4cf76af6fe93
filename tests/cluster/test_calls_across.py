"""Calls whose caller and callee — and the callee's devices — are on different nodes behave
as on one node: ring every device, first answer wins, ICE both ways, end, reject, busy,
offline, glare, ring timeout, hang-up on disconnect, a node dying mid-call; and a real
WebRTC connection established through two nodes."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import trio

from tests.cluster.conftest import Cluster, NodeSettings
from tests.cluster.test_cluster import node_process, routable
from tests.e2e.test_calls import calls_of, webrtc_call
from tests.helpers import Account, Client


async def test_a_call_rings_devices_on_both_nodes_and_a_remote_answer_wins(
        cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as phone, c1.ws(b) as laptop:
            await routable(n1, b.id)
            ring = await wa.request("call_offer", {"recipient_id": b.id, "media": "video",
                                                   "offer": "v=0 offer"}, "call_ringing")
            assert ring["type"] == "call_ringing", ring
            call_id = ring["payload"]["call_id"]
            assert ring["payload"]["devices"] >= 2  # here, and on the other node
            for device in (phone, laptop):
                got = await device.expect("call_offer", call_id=call_id)
                assert got["payload"]["caller_id"] == a.id
            # early ICE from the caller reaches every ringing device, on both nodes
            await wa.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c1"}})
            for device in (phone, laptop):
                await device.expect("ice_candidate", call_id=call_id, candidate={"candidate": "c1"})

            await phone.send("call_answer", {"call_id": call_id, "answer": "v=0 answer"})
            ans = await wa.expect("call_answer", call_id=call_id)
            assert ans["payload"]["answer"] == "v=0 answer" and ans["payload"]["callee_id"] == b.id
            await laptop.expect("call_answered_elsewhere", call_id=call_id)
            await phone.none("call_answered_elsewhere")  # not to the device that answered
            late = await laptop.request("call_answer", {"call_id": call_id, "answer": "x"},
                                        "never")
            assert late["type"] == "error" and late["payload"]["code"] == "call_not_ringing"

            # ICE only between the two devices in the call, across the nodes
            await wa.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c2"}})
            got = await phone.expect("ice_candidate", candidate={"candidate": "c2"})
            assert got["payload"]["from"] == a.id
            await laptop.none("ice_candidate", candidate={"candidate": "c2"})
            await phone.send("ice_candidate", {"call_id": call_id, "candidate": {"candidate": "c3"}})
            back = await wa.expect("ice_candidate", candidate={"candidate": "c3"})
            assert back["payload"]["from"] == b.id

            await phone.send("call_end", {"call_id": call_id})
            end = await wa.expect("call_end", call_id=call_id)
            assert end["payload"]["status"] == "ended" and end["payload"]["reason"] == "hangup"
        history = await calls_of(c2, b)
        assert [(x["status"], x["direction"]) for x in history] == [("ended", "incoming")]


async def test_reject_busy_and_offline_across_nodes(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        c = await c1.register()
        await c1.conversation(c, b)
        async with c1.ws(a) as wa:
            off = await wa.request("call_offer", {"conversation_id": cid, "offer": "sdp"},
                                   "call_end")
            assert off["payload"]["reason"] == "offline"  # b has no device anywhere
            async with c2.ws(b) as wb, c2.ws(c) as wc:
                await routable(n1, b.id)
                call_id = f"across-{uuid.uuid4().hex[:8]}"  # a client's own id; one database
                ring = await wa.request("call_offer", {"call_id": call_id,
                                                       "conversation_id": cid, "offer": "sdp"},
                                        "call_ringing")
                assert ring["payload"]["call_id"] == call_id
                await wb.expect("call_offer", call_id=call_id)
                # c, on the callee's node, calls b who is in a call owned by node 1: busy
                busy = await wc.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                        "call_reject")
                assert busy["type"] == "call_reject" and busy["payload"]["reason"] == "busy"
                # someone else's live call id is not revealed, on any node
                dup = await wc.request("call_offer", {"call_id": call_id,
                                                      "recipient_id": b.id, "offer": "sdp"},
                                       "never")
                assert dup["payload"]["code"] == "not_found"
                await wb.send("call_reject", {"call_id": call_id, "reason": "declined"})
                rej = await wa.expect("call_reject", call_id=call_id)
                assert rej["payload"]["reason"] == "declined"
        statuses = sorted(x["status"] for x in await calls_of(c1, b))
        assert statuses == ["busy", "missed", "rejected"]


async def test_a_remote_callee_disconnecting_ends_the_call_for_the_caller(
        cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa:
            async with c2.ws(b) as wb:
                await routable(n1, b.id)
                ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                        "call_ringing")
                call_id = ring["payload"]["call_id"]
                await wb.expect("call_offer", call_id=call_id)
                await wb.send("call_answer", {"call_id": call_id, "answer": "a"})
                await wa.expect("call_answer", call_id=call_id)
            end = await wa.expect("call_end", call_id=call_id)
            assert end["payload"]["reason"] == "disconnected"
            # and the users are free again: a new call rings
            async with c2.ws(b) as wb:
                ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                        "call_ringing")
                assert ring["type"] == "call_ringing", ring


async def test_a_caller_hanging_up_while_ringing_cancels_on_the_other_node(
        cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c2.ws(b) as wb:
            async with c1.ws(a) as wa:
                await routable(n1, b.id)
                ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                        "call_ringing")
                call_id = ring["payload"]["call_id"]
                await wb.expect("call_offer", call_id=call_id)
            gone = await wb.expect("call_end", call_id=call_id)
            assert gone["payload"]["status"] == "cancelled"


@pytest.fixture
def short_ring(node_settings: NodeSettings) -> NodeSettings:
    return lambda node_id: dataclasses.replace(node_settings(node_id), ring_timeout=1.5)


async def test_an_unanswered_call_across_nodes_is_missed(
        short_ring: NodeSettings, aio_loop: None, nursery: trio.Nursery) -> None:
    cluster = Cluster(nursery, short_ring)
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                    "call_ringing")
            call_id = ring["payload"]["call_id"]
            missed = await wa.expect("call_end", call_id=call_id)
            assert missed["payload"]["status"] == "missed"
            assert (await wb.expect("call_end", call_id=call_id))["payload"]["status"] == "missed"
    for srv in cluster.servers:
        srv.shutdown.set()


async def test_glare_across_nodes_keeps_one_call(cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        low, high = sorted([a, b], key=lambda x: x.id)
        async with c1.ws(low) as wl, c2.ws(high) as wh:
            await routable(n1, high.id)
            await routable(n2, low.id)
            first = await wh.request("call_offer", {"recipient_id": low.id, "offer": "h"},
                                     "call_ringing")
            await wl.expect("call_offer")
            second = await wl.request("call_offer", {"recipient_id": high.id, "offer": "l"},
                                      "call_ringing")
            assert second["type"] == "call_ringing"  # the smaller user id's call survives
            kept = second["payload"]["call_id"]
            gone = await wh.expect("call_end", call_id=first["payload"]["call_id"])
            assert gone["payload"]["reason"] == "glare" and gone["payload"]["kept_call_id"] == kept
            await wh.expect("call_offer", call_id=kept)


@pytest.mark.parametrize("answered", [True, False], ids=["in-call", "ringing"])
async def test_a_caller_node_dying_ends_its_call_for_the_other_side(
        node_settings: NodeSettings, cluster: Cluster, tmp_path: Path, answered: bool) -> None:
    """The caller's node owns the call and dies (SIGKILL): within NODE_TTL the callee's
    devices on the other node get call_end (ended in a call, failed while still ringing
    on every device), the history says so, and the callee can be called again."""
    with trio.fail_after(40):
        n2 = await cluster.start("node-2")
        c2 = n2.client()
        a, b = await c2.register(), await c2.register()
        await c2.conversation(a, b)
        async with node_process(node_settings, tmp_path, "node-1") as (proc, c1):
            async with c1.ws(a) as wa, c2.ws(b) as phone, c2.ws(b) as laptop:
                await routable(n2, a.id)
                ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                        "call_ringing")
                call_id = ring["payload"]["call_id"]
                for device in (phone, laptop):
                    await device.expect("call_offer", call_id=call_id)
                in_call = [phone, laptop]
                if answered:
                    await phone.send("call_answer", {"call_id": call_id, "answer": "a"})
                    await wa.expect("call_answer", call_id=call_id)
                    await laptop.expect("call_answered_elsewhere", call_id=call_id)
                    await recorded(c2, b, call_id, "answered")  # written after the relay
                    in_call = [phone]
                proc.kill()
                for device in in_call:
                    ended = await device.expect("call_end", call_id=call_id,
                                                wait=3 * n2.settings.node_ttl)
                    assert ended["payload"]["reason"] == "disconnected"
                    assert ended["payload"]["status"] == ("ended" if answered else "failed")
        (record,) = [x for x in await calls_of(c2, b) if x["id"] == call_id]
        assert record["status"] == ("ended" if answered else "failed")
        assert record["end_reason"] == "disconnected"
        # b is free again: the dead owner's claims were released
        c = await c2.register()
        await c2.conversation(c, b)
        async with c2.ws(c) as wc, c2.ws(b):
            ring = await wc.request("call_offer", {"recipient_id": b.id, "offer": "s"},
                                    "call_ringing")
            assert ring["type"] == "call_ringing", ring


async def recorded(client: Client, who: Account, call_id: str, status: str) -> None:
    """Wait until the call history shows the call with `status`."""
    with trio.fail_after(5):
        while True:  # another process writes it: polled over REST
            if any(x["id"] == call_id and x["status"] == status
                   for x in await calls_of(client, who)):
                return
            await trio.sleep(0.05)


async def test_real_webrtc_peers_connect_through_two_nodes(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
    async with c1.ws(a) as wa, c2.ws(b) as wb:
        await routable(n1, b.id)
        await webrtc_call(wa, wb, b.id, monkeypatch)
