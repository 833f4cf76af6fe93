"""Blocking end to end (docs/protocol.md "Blocking and privacy"): real server, real sockets,
SQLite and PostgreSQL. Every rule holds whichever of the two made the block, and unblocking
restores it.

A "nothing arrives" check waits for a frame that the same publish sent to a third user who
is not blocked (the router queues one publish for every recipient at once), then settles the
socket that must not have it (tests/helpers.py `Ws.none`)."""

from __future__ import annotations

import pytest

from tests.helpers import Account, Client, pair

# which side blocks: "a" (the actor blocks the other) or "b" (the other blocks the actor)
SIDES = ["actor_blocks", "actor_is_blocked"]


async def block(client: Client, who: Account, whom: Account) -> None:
    r = await client.http.put(f"/api/users/{whom.id}/block", headers=who.headers)
    assert r.status_code == 204, r.text


async def unblock(client: Client, who: Account, whom: Account) -> None:
    r = await client.http.delete(f"/api/users/{whom.id}/block", headers=who.headers)
    assert r.status_code == 204, r.text


async def block_between(client: Client, actor: Account, other: Account, side: str) -> Account:
    """Make the block; returns who made it (the one who can lift it)."""
    blocker, blocked = (actor, other) if side == "actor_blocks" else (other, actor)
    await block(client, blocker, blocked)
    return blocker


async def test_block_list_and_unblock(client: Client) -> None:
    a, b = await client.register(), await client.register()
    async with client.ws(a) as wa:
        await block(client, a, b)
        await wa.expect("block_update", user_id=b.id, blocked=True)
        await block(client, a, b)  # idempotent
        await wa.none("block_update")
    async with client.ws(a) as wa:
        assert wa.ready["payload"]["blocked"] == [b.id]  # type: ignore[attr-defined]
    r = await client.http.get("/api/blocks", headers=a.headers)
    assert r.status_code == 200
    blocks = r.json()["blocks"]
    assert [x["user"]["id"] for x in blocks] == [b.id]
    assert blocks[0]["user"]["username"] == b.username and blocks[0]["created_at"]
    assert blocks[0]["user"]["email"] is None  # someone else's profile
    # b's own list is empty: a block is the blocker's
    assert (await client.http.get("/api/blocks", headers=b.headers)).json()["blocks"] == []
    r = await client.http.put(f"/api/users/{a.id}/block", headers=a.headers)
    assert r.status_code == 400
    r = await client.http.put("/api/users/00000000-0000-4000-8000-000000000000/block",
                              headers=a.headers)
    assert r.status_code == 404
    r = await client.http.put("/api/users/not-a-uuid/block", headers=a.headers)
    assert r.status_code == 400
    # only the blocker lifts a block
    await unblock(client, b, a)
    assert len((await client.http.get("/api/blocks", headers=a.headers)).json()["blocks"]) == 1
    async with client.ws(a) as wa:
        await unblock(client, a, b)
        await wa.expect("block_update", user_id=b.id, blocked=False)
    await unblock(client, a, b)  # idempotent
    assert (await client.http.get("/api/blocks", headers=a.headers)).json()["blocks"] == []


@pytest.mark.parametrize("side", SIDES)
async def test_no_new_one_to_one(client: Client, side: str) -> None:
    a, b = await client.register(), await client.register()
    blocker = await block_between(client, a, b, side)
    r = await client.http.post("/api/conversations", headers=a.headers,
                               json={"type": "one_to_one", "member_ids": [b.id]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "blocked"
    # groups with both are still allowed
    r = await client.http.post("/api/conversations", headers=a.headers,
                               json={"type": "group", "name": "g", "member_ids": [b.id]})
    assert r.status_code == 201
    await unblock(client, blocker, b if blocker is a else a)
    r = await client.http.post("/api/conversations", headers=a.headers,
                               json={"type": "one_to_one", "member_ids": [b.id]})
    assert r.status_code == 201


@pytest.mark.parametrize("side", SIDES)
async def test_no_messages_into_their_one_to_one(client: Client, side: str) -> None:
    a, b, cid = await pair(client)
    blocker = await block_between(client, a, b, side)
    for sender in (a, b):
        r = await client.http.post(f"/api/conversations/{cid}/messages", headers=sender.headers,
                                   json={"content": "hello?"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "blocked", r.text
    # the conversation stays, readable
    r = await client.http.get("/api/conversations", headers=a.headers)
    assert cid in [c["id"] for c in r.json()["conversations"]]
    async with client.ws(a) as wa, client.ws(b) as wb:
        err = await wa.request("chat_message", {"conversation_id": cid, "content": "ws"},
                               "message_ack")
        assert err["type"] == "error" and err["payload"]["code"] == "blocked"
        await wb.none("new_message")
        # the socket keeps working
        await wa.request("ping", {}, "pong")
        await unblock(client, blocker, b if blocker is a else a)
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "again"},
                               "message_ack")
        assert ack["type"] == "message_ack"
        await wb.expect("new_message", content="again")


@pytest.mark.parametrize("side", SIDES)
async def test_groups_stay_shared_and_the_blocked_are_flagged(client: Client, side: str) -> None:
    a, b, c = await client.register(), await client.register(), await client.register()
    gid = await client.conversation(a, b, c, name="team")
    blocker = await block_between(client, a, b, side)
    blocked = b if blocker is a else a
    async with client.ws(a) as wa, client.ws(b) as wb, client.ws(c) as wc:
        assert wa.ready["payload"]["blocked"] == ([b.id] if blocker is a else [])  # type: ignore[attr-defined]
        assert wb.ready["payload"]["blocked"] == ([a.id] if blocker is b else [])  # type: ignore[attr-defined]
        await wb.request("chat_message", {"conversation_id": gid, "content": "from b"},
                         "message_ack")
        await wa.expect("new_message", content="from b")
        await wc.expect("new_message", content="from b")
        await wa.request("chat_message", {"conversation_id": gid, "content": "from a"},
                         "message_ack")
        await wb.expect("new_message", content="from a")
    page = (await client.http.get(f"/api/conversations/{gid}/messages",
                                  headers=blocker.headers)).json()
    assert [m["content"] for m in page["messages"]] == ["from b", "from a"]
    assert page["blocked_senders"] == [blocked.id]
    for viewer in (blocked, c):
        page = (await client.http.get(f"/api/conversations/{gid}/messages",
                                      headers=viewer.headers)).json()
        assert "blocked_senders" not in page
    await unblock(client, blocker, blocked)
    page = (await client.http.get(f"/api/conversations/{gid}/messages",
                                  headers=blocker.headers)).json()
    assert "blocked_senders" not in page


@pytest.mark.parametrize("side", SIDES)
async def test_no_typing_or_receipts_between_them(client: Client, side: str) -> None:
    """In a shared group: c hears a's typing and receipts, b does not, and the other way
    round; b's watermarks show nothing to a."""
    a, b, c = await client.register(), await client.register(), await client.register()
    gid = await client.conversation(a, b, c, name="team")
    async with client.ws(a) as wa, client.ws(b) as wb, client.ws(c) as wc:
        await wc.request("chat_message", {"conversation_id": gid, "content": "hi"},
                         "message_ack")
        blocker = await block_between(client, a, b, side)
        for actor, w_actor, w_other in ((a, wa, wb), (b, wb, wa)):
            await w_actor.send("typing", {"conversation_id": gid, "is_typing": True})
            await wc.expect("typing", user_id=actor.id, is_typing=True)
            await w_other.none("typing", user_id=actor.id)
            await w_actor.send("read_receipt", {"conversation_id": gid, "up_to_seq": 1})
            await wc.expect("message_status", user_id=actor.id, status="read")
            await w_other.none("message_status", user_id=actor.id)
        # watermarks: the other's show 0 to each of them, the truth to c
        view = (await client.http.get(f"/api/conversations/{gid}", headers=a.headers)).json()
        marks = {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in view["members"]}
        assert marks[b.id] == (0, 0) and marks[a.id] == (1, 1)
        view = (await client.http.get(f"/api/conversations/{gid}", headers=c.headers)).json()
        marks = {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in view["members"]}
        assert marks[b.id] == (1, 1) and marks[a.id] == (1, 1)
        res = await wa.request("sync", {"conversations": {gid: 0}}, "sync_result")
        assert res["payload"]["watermarks"][gid][b.id] == {"delivered_seq": 0, "read_seq": 0}
        msg_id = (await client.http.get(f"/api/conversations/{gid}/messages",
                                        headers=a.headers)).json()["messages"][0]["id"]
        st = (await client.http.get(f"/api/messages/{msg_id}/status", headers=a.headers)).json()
        assert st["statuses"][b.id] == "sent"
        await unblock(client, blocker, b if blocker is a else a)
        # (b still types: stop, then start again, which is announced)
        await wb.send("typing", {"conversation_id": gid, "is_typing": False})
        await wb.send("typing", {"conversation_id": gid, "is_typing": True})
        await wa.expect("typing", user_id=b.id, is_typing=True)
        st = (await client.http.get(f"/api/messages/{msg_id}/status", headers=a.headers)).json()
        assert st["statuses"][b.id] == "read"


@pytest.mark.parametrize("side", SIDES)
async def test_no_presence_between_them(client: Client, side: str) -> None:
    a, b, c = await client.register(), await client.register(), await client.register()
    await client.conversation(a, b, c, name="team")
    async with client.ws(a) as wa, client.ws(c) as wc:
        async with client.ws(b) as wb:
            await wa.expect("presence_update", user_id=b.id, status="online")
            blocker = await block_between(client, a, b, side)
            # at once: each sees the other offline, without last_seen
            off = await wa.expect("presence_update", user_id=b.id, status="offline")
            assert off["payload"]["last_seen"] is None
            await wb.expect("presence_update", user_id=a.id, status="offline")
            for viewer, other in ((a, b), (b, a)):
                u = (await client.http.get(f"/api/users/{other.id}",
                                           headers=viewer.headers)).json()
                assert u["status"] == "offline" and u["last_seen"] is None
                view = (await client.http.get("/api/conversations",
                                              headers=viewer.headers)).json()
                member = next(m for m in view["conversations"][0]["members"]
                              if m["user_id"] == other.id)
                assert member["status"] == "offline" and member["last_seen"] is None
            u = (await client.http.get(f"/api/users/{b.id}", headers=c.headers)).json()
            assert u["status"] == "online"
        # b leaves: c hears it, a does not
        await wc.expect("presence_update", user_id=b.id, status="offline")
        await wa.none("presence_update", user_id=b.id)
        u = (await client.http.get(f"/api/users/{b.id}", headers=a.headers)).json()
        assert u["status"] == "offline" and u["last_seen"] is None
        found = (await client.http.get(f"/api/users?q={b.username}", headers=a.headers)).json()
        assert found["users"][0]["last_seen"] is None
        u = (await client.http.get(f"/api/users/{b.id}", headers=c.headers)).json()
        assert u["last_seen"]
        async with client.ws(b):
            await wc.expect("presence_update", user_id=b.id, status="online")
            await wa.none("presence_update", user_id=b.id, status="online")
            await unblock(client, blocker, b if blocker is a else a)
            await wa.expect("presence_update", user_id=b.id, status="online")
            u = (await client.http.get(f"/api/users/{b.id}", headers=a.headers)).json()
            assert u["status"] == "online"


@pytest.mark.parametrize("side", SIDES)
async def test_no_calls_between_them(client: Client, side: str) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        blocker = await block_between(client, a, b, side)
        for caller, w_caller, w_callee in ((a, wa, wb), (b, wb, wa)):
            other = b if caller is a else a
            for target in ({"recipient_id": other.id}, {"conversation_id": cid}):
                reply = await w_caller.request("call_offer", {**target, "offer": "sdp"},
                                               "call_reject")
                assert reply["type"] == "call_reject", reply
                assert reply["payload"]["reason"] == "blocked"
            await w_callee.none("call_offer")
            await w_callee.none("call_end")
        # no history of it for anyone
        for who in (a, b):
            calls = (await client.http.get("/api/calls", headers=who.headers)).json()["calls"]
            assert calls == []
        await unblock(client, blocker, b if blocker is a else a)
        ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                "call_ringing")
        assert ring["type"] == "call_ringing"
        await wb.expect("call_offer", caller_id=a.id)
        await wa.send("call_end", {"call_id": ring["payload"]["call_id"]})
        await wb.expect("call_end")


@pytest.mark.parametrize("side", SIDES)
async def test_a_block_ends_their_call(client: Client, side: str) -> None:
    """A call in progress (and one still ringing) ends for both with reason `blocked`."""
    a, b, _ = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        ring = await wa.request("call_offer", {"recipient_id": b.id, "offer": "sdp"},
                                "call_ringing")
        call_id = ring["payload"]["call_id"]
        await wb.expect("call_offer", call_id=call_id)
        await wb.send("call_answer", {"call_id": call_id, "answer": "sdp"})
        await wa.expect("call_answer", call_id=call_id)
        blocker = await block_between(client, a, b, side)
        for ws in (wa, wb):
            end = await ws.expect("call_end", call_id=call_id)
            assert end["payload"]["reason"] == "blocked"
            assert end["payload"]["status"] == "ended"
        await unblock(client, blocker, b if blocker is a else a)
        # ringing
        ring = await wb.request("call_offer", {"recipient_id": a.id, "offer": "sdp"},
                                "call_ringing")
        call_id = ring["payload"]["call_id"]
        await wa.expect("call_offer", call_id=call_id)
        await block_between(client, a, b, side)
        for ws in (wa, wb):
            end = await ws.expect("call_end", call_id=call_id)
            assert end["payload"]["reason"] == "blocked"
    calls = (await client.http.get("/api/calls", headers=a.headers)).json()["calls"]
    assert [c["end_reason"] for c in calls] == ["blocked", "blocked"]
