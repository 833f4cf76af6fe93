"""Message changes across two real nodes (issue 14): an edit, a delete and a reaction made
on node 1 reach a device on node 2 live, and a device of node 2 that was offline catches up
through `changes_since` (the log is the shared database's, not a node's)."""

from __future__ import annotations

import trio

from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import routable


async def test_changes_on_one_node_reach_the_other_live_and_by_changes_since(
        cluster: Cluster) -> None:
    with trio.fail_after(30):
        n1, n2, c1, c2, a, b, cid = await cluster.two_nodes_and_a_pair()
        async with c1.ws(a) as wa, c2.ws(b) as wb:
            await routable(n1, b.id)
            ack = await wa.request("chat_message", {"conversation_id": cid,
                                                    "content": "helo"}, "message_ack")
            mid = ack["payload"]["id"]
            await wb.expect("new_message", id=mid)
            edited = await wa.request("edit_message", {"message_id": mid,
                                                       "content": "hello"}, "message_edited")
            got = await wb.expect("message_edited", message_id=mid)
            assert got["payload"] == edited["payload"]
            assert got["payload"]["content"] == "hello"
            cursor = wb.ready["payload"]["changes_cursor"]  # type: ignore[attr-defined]
        # b's device on node 2 is offline; a changes more on node 1
        async with c1.ws(a) as wa:
            second = await wa.request("chat_message", {"conversation_id": cid,
                                                       "content": "oops"}, "message_ack")
            await wa.request("reaction", {"message_id": mid, "emoji": "👍"},
                             "reaction_update")
            await wa.request("delete_message", {"message_id": second["payload"]["id"]},
                             "message_deleted")
        async with c2.ws(b) as wb:
            frame = await wb.request("sync", {"changes_since": cursor}, "sync_result")
            assert frame["type"] == "sync_result", frame
            changes = frame["payload"]["changes"]
            assert [(c["type"], c["payload"]["message_id"]) for c in changes] == [
                ("message_edited", mid), ("reaction_update", mid),
                ("message_deleted", second["payload"]["id"])]
            assert frame["payload"]["changes_cursor"] == \
                wb.ready["payload"]["changes_cursor"]  # type: ignore[attr-defined]
        await c1.aclose()
        await c2.aclose()
