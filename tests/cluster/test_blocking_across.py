"""A block made through one node holds on the other at once (after the "privacy" note, a
Redis round trip): no messages into the pair's one_to_one, no typing, presence or calls of
one to the other, with the other node's cache warm beforehand; a call the other node owns
between them ends."""

from __future__ import annotations

import trio

from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import routable


async def test_a_block_made_on_one_node_holds_on_the_other(cluster: Cluster) -> None:
    with trio.fail_after(40):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        c = await c1.register()
        gid = await c1.conversation(a, b, c, name="team")
        cache = n2.services.privacy_cache
        # b on node 1 blocks a, who is on node 2 (as is c, who hears everything)
        async with c2.ws(c) as wc, c1.ws(b) as wb:
            async with c2.ws(a) as wa:
                for user in (a, c):
                    await routable(n1, user.id)
                await routable(n2, b.id)
                for ws in (wc, wb):
                    await ws.expect("presence_update", user_id=a.id, status="online")
                # node 2 has a's privacy cached (warm): a sends
                ack = await wa.request("chat_message", {"conversation_id": cid,
                                                        "content": "hi"}, "message_ack")
                assert ack["type"] == "message_ack", ack
                await wb.expect("new_message", content="hi")
                assert cache.cached(a.id)

                r = await c1.http.put(f"/api/users/{a.id}/block", headers=b.headers)
                assert r.status_code == 204, r.text
                await wa.expect("presence_update", user_id=b.id, status="offline")
                await wb.expect("presence_update", user_id=a.id, status="offline")
                with trio.fail_after(3):  # well inside the cache's lifetime
                    await cache.wait_uncached(a.id)  # node 1's note reached node 2

                # messages: refused on node 2
                err = await wa.request("chat_message", {"conversation_id": cid,
                                                        "content": "no"}, "message_ack")
                assert err["type"] == "error" and err["payload"]["code"] == "blocked", err
                # typing: c (node 2) hears it, b (node 1) does not
                await wa.send("typing", {"conversation_id": gid, "is_typing": True})
                await wc.expect("typing", user_id=a.id, is_typing=True)
                await wb.none("typing", user_id=a.id)
                # calls placed on node 2 to b on node 1: rejected, b hears nothing
                reply = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                         "call_reject")
                assert reply["type"] == "call_reject", reply
                assert reply["payload"]["reason"] == "blocked"
                await wb.none("call_offer")
                # and from node 1 to node 2
                reply = await wb.request("call_offer", {"recipient_id": a.id, "offer": "sdp"},
                                         "call_reject")
                assert reply["payload"]["reason"] == "blocked"
                await wa.none("call_offer")
            # presence, told by node 2: a leaving and coming back is heard by c, not by b
            await wc.expect("presence_update", user_id=a.id, status="offline")
            await wb.none("presence_update", user_id=a.id)
            async with c2.ws(a):
                await wc.expect("presence_update", user_id=a.id, status="online")
                await wb.none("presence_update", user_id=a.id)

            # unblocked on node 1: b sees a again, and node 2 lets a's messages through
            r = await c1.http.delete(f"/api/users/{a.id}/block", headers=b.headers)
            assert r.status_code == 204
            async with c2.ws(a) as wa:
                # told by node 2: it sees the block gone
                await wb.expect("presence_update", user_id=a.id, status="online")
                ack = await wa.request("chat_message",
                                       {"conversation_id": cid, "content": "again"},
                                       "message_ack")
                assert ack["type"] == "message_ack", ack
                await wb.expect("new_message", content="again")
                # a call owned by node 2 (a's) ends when node 1 takes b's block
                ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                        "call_ringing")
                assert ring["type"] == "call_ringing", ring
                call_id = ring["payload"]["call_id"]
                await wb.expect("call_offer", call_id=call_id)
                await wb.send("call_answer", {"call_id": call_id, "answer": "sdp"})
                await wa.expect("call_answer", call_id=call_id)
                r = await c1.http.put(f"/api/users/{a.id}/block", headers=b.headers)
                assert r.status_code == 204
                for ws in (wa, wb):
                    end = await ws.expect("call_end", call_id=call_id)
                    assert end["payload"]["reason"] == "blocked"
