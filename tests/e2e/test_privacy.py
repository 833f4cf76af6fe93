"""Privacy settings and group renames end to end (docs/protocol.md "Blocking and privacy"):
real server, real sockets, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import trio

from tests.helpers import Account, Client, pair


async def patch_me(client: Client, who: Account, **fields: Any) -> dict[str, Any]:
    r = await client.http.patch("/api/users/me", headers=who.headers, json=fields)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_patch_me_changes_and_validates(client: Client) -> None:
    a = await client.register()
    me = await patch_me(client, a, display_name="  New Name ")
    assert me["display_name"] == "New Name" and me["email"] == a.email
    assert me["presence_visible"] is True and me["read_receipts_visible"] is True
    me = await patch_me(client, a, presence_visible=False, read_receipts_visible=False)
    assert me["display_name"] == "New Name"
    assert me["presence_visible"] is False and me["read_receipts_visible"] is False
    got = (await client.http.get("/api/users/me", headers=a.headers)).json()
    assert got["presence_visible"] is False and got["read_receipts_visible"] is False
    for bad in ({"display_name": ""}, {"display_name": "x" * 65},
                {"presence_visible": "no"}, {"read_receipts_visible": 1}):
        r = await client.http.patch("/api/users/me", headers=a.headers, json=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await client.http.patch("/api/users/me", json={"display_name": "x"})
    assert r.status_code == 401


async def wait_offline(client: Client, who: Account) -> None:
    """Until the server took `who` offline (the grace period ran out, last_seen stored).
    Nobody else hears it (hidden presence), so this asks, every 20 ms."""
    with trio.fail_after(10):
        while True:
            me = (await client.http.get("/api/users/me", headers=who.headers)).json()
            if me["status"] == "offline" and me["last_seen"]:
                return
            await trio.sleep(0.02)


async def test_hidden_presence_shows_offline_to_others_and_the_truth_to_me(
        client: Client) -> None:
    a, b, _ = await pair(client)
    async with client.ws(b) as wb:
        async with client.ws(a) as wa:
            await wb.expect("presence_update", user_id=a.id, status="online")
            await patch_me(client, a, presence_visible=False)
            off = await wb.expect("presence_update", user_id=a.id, status="offline")
            assert off["payload"]["last_seen"] is None
            await wa.none("presence_update", user_id=a.id, status="offline")
            u = (await client.http.get(f"/api/users/{a.id}", headers=b.headers)).json()
            assert u["status"] == "offline" and u["last_seen"] is None
            conv = (await client.http.get("/api/conversations", headers=b.headers)).json()
            member = next(m for m in conv["conversations"][0]["members"] if m["user_id"] == a.id)
            assert member["status"] == "offline" and member["last_seen"] is None
            me = (await client.http.get("/api/users/me", headers=a.headers)).json()
            assert me["status"] == "online"
        # a leaves and comes back: b hears neither (a's own device does)
        await wait_offline(client, a)
        async with client.ws(a) as wa:
            await wa.expect("presence_update", user_id=a.id, status="online")
            await wb.none("presence_update", user_id=a.id)
            u = (await client.http.get(f"/api/users/{a.id}", headers=b.headers)).json()
            assert u["status"] == "offline" and u["last_seen"] is None
            await patch_me(client, a, presence_visible=True)
            await wb.expect("presence_update", user_id=a.id, status="online")
            u = (await client.http.get(f"/api/users/{a.id}", headers=b.headers)).json()
            assert u["status"] == "online"
        off = await wb.expect("presence_update", user_id=a.id, status="offline")
        assert off["payload"]["last_seen"]


async def test_hidden_read_receipts_show_delivered_to_others(client: Client) -> None:
    a, b, cid = await pair(client)
    await patch_me(client, b, read_receipts_visible=False)
    async with client.ws(a) as wa, client.ws(b) as wb, client.ws(b) as wb2:
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "hi"},
                               "message_ack")
        mid = ack["payload"]["id"]
        await wb.send("read_receipt", {"message_id": mid})
        # the others: delivered, never read
        st = await wa.expect("message_status", user_id=b.id)
        assert st["payload"]["status"] == "delivered" and st["payload"]["up_to_seq"] == 1
        await wa.none("message_status", user_id=b.id, status="read")
        # my own devices: my read mark
        await wb2.expect("message_status", user_id=b.id, status="read", up_to_seq=1)
        status = (await client.http.get(f"/api/messages/{mid}/status", headers=a.headers)).json()
        assert status["statuses"][b.id] == "delivered"
        view = (await client.http.get(f"/api/conversations/{cid}", headers=a.headers)).json()
        marks = {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in view["members"]}
        assert marks[b.id] == (1, 0)
        res = await wa.request("sync", {"conversations": {cid: 0}}, "sync_result")
        assert res["payload"]["watermarks"][cid][b.id] == {"delivered_seq": 1, "read_seq": 0}
        # mine still move: my unread count is right, and I see my read_seq
        mine = (await client.http.get("/api/conversations", headers=b.headers)).json()
        assert mine["conversations"][0]["unread"] == 0
        view = (await client.http.get(f"/api/conversations/{cid}", headers=b.headers)).json()
        assert {m["user_id"]: m["read_seq"] for m in view["members"]}[b.id] == 1
        res = await wb.request("sync", {"conversations": {cid: 0}}, "sync_result")
        assert res["payload"]["watermarks"][cid][b.id]["read_seq"] == 1
        # switched back on: the next read is told as read
        await patch_me(client, b, read_receipts_visible=True)
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "again"},
                               "message_ack")
        await wb.send("read_receipt", {"message_id": ack["payload"]["id"]})
        await wa.expect("message_status", user_id=b.id, status="read", up_to_seq=2)
        status = (await client.http.get(f"/api/messages/{mid}/status", headers=a.headers)).json()
        assert status["statuses"][b.id] == "read"


async def test_rename_group_admins_only(client: Client) -> None:
    a, b, c = await client.register(), await client.register(), await client.register()
    gid = await client.conversation(a, b, name="before")
    _, _, direct = await pair(client)
    async with client.ws(b) as wb:
        r = await client.http.patch(f"/api/conversations/{gid}", headers=a.headers,
                                    json={"name": "  after "})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "after"
        upd = await wb.expect("conversation_updated", conversation_id=gid)
        assert upd["payload"]["name"] == "after" and upd["payload"]["by"] == a.id
    listed = (await client.http.get("/api/conversations", headers=b.headers)).json()
    assert [x["name"] for x in listed["conversations"] if x["id"] == gid] == ["after"]
    r = await client.http.patch(f"/api/conversations/{gid}", headers=b.headers,
                                json={"name": "mine"})
    assert r.status_code == 403
    r = await client.http.patch(f"/api/conversations/{gid}", headers=c.headers,
                                json={"name": "outsider"})
    assert r.status_code == 404
    r = await client.http.patch(f"/api/conversations/{gid}", headers=a.headers,
                                json={"name": " "})
    assert r.status_code == 400
    owner = (await client.http.get(f"/api/conversations/{direct}")).status_code
    assert owner == 401
    one = await client.register()
    other = await client.register()
    cid = await client.conversation(one, other)
    r = await client.http.patch(f"/api/conversations/{cid}", headers=one.headers,
                                json={"name": "no"})
    assert r.status_code == 400
