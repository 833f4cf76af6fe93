"""An outsider tries every REST path and every frame type against someone else's
conversation, message and call, and gets nothing: 404 (never a hint that it exists), an
`error` frame, and the members see no trace of it."""

from __future__ import annotations

import pytest

from tests.helpers import Client, pair


async def test_an_outsider_gets_nothing_anywhere(client: Client) -> None:
    a, b, cid = await pair(client)
    x = await client.register()  # shares no conversation with a or b
    async with client.ws(a) as wa, client.ws(b) as wb, client.ws(x) as wx:
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "private",
                                                "client_msg_id": "p-1"}, "message_ack")
        mid = ack["payload"]["id"]
        await wb.expect("new_message", content="private")
        ring = await wa.request("call_offer", {"conversation_id": cid, "media": "audio",
                                               "offer": "v=0", "call_id": "secret-call"},
                                "call_ringing")
        assert ring["type"] == "call_ringing", ring
        await wb.expect("call_offer", call_id="secret-call")

        rest = [
            ("GET", f"/api/conversations/{cid}", None),
            ("POST", f"/api/conversations/{cid}/members", {"member_ids": [x.id]}),
            ("DELETE", f"/api/conversations/{cid}/members/{a.id}", None),
            ("DELETE", f"/api/conversations/{cid}/members", {"member_ids": [a.id]}),
            ("GET", f"/api/conversations/{cid}/messages", None),
            ("GET", f"/api/conversations/{cid}/messages?after_seq=0", None),
            ("POST", f"/api/conversations/{cid}/messages", {"content": "intrude"}),
            ("POST", f"/api/conversations/{cid}/read", {"up_to_seq": 1}),
            ("GET", f"/api/messages/{mid}/status", None),
        ]
        for method, path, body in rest:
            r = await client.http.request(method, path, headers=x.headers, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert "private" not in r.text and a.id not in r.text, (method, path, r.text)
        r = await client.http.get("/api/calls", headers=x.headers)
        assert r.status_code == 200 and r.json()["calls"] == []
        r = await client.http.get(f"/api/users/{a.id}", headers=x.headers)
        assert r.json()["status"] is None and r.json()["last_seen"] is None

        frames = [
            ("chat_message", {"conversation_id": cid, "content": "intrude"}),
            ("typing", {"conversation_id": cid, "is_typing": True}),
            ("delivery_receipt", {"message_id": mid}),
            ("read_receipt", {"conversation_id": cid, "up_to_seq": 1}),
            ("sync", {"conversations": {cid: 0}}),
            ("call_offer", {"conversation_id": cid, "media": "audio", "offer": "v=0"}),
            ("call_offer", {"recipient_id": a.id, "media": "audio", "offer": "v=0"}),
            ("call_offer", {"recipient_id": x.id, "media": "audio", "offer": "v=0",
                            "call_id": "secret-call"}),
            ("call_answer", {"call_id": "secret-call", "answer": "v=0"}),
            ("ice_candidate", {"call_id": "secret-call", "candidate": {"candidate": "x"}}),
            ("call_reject", {"call_id": "secret-call"}),
            ("call_end", {"call_id": "secret-call"}),
        ]
        for type_, payload in frames:
            reply = await wx.request(type_, payload, "never")
            assert reply["type"] == "error", (type_, reply)
            code = reply["payload"]["code"]
            assert code in ("not_found", "not_a_contact", "call_not_found", "invalid_request"), \
                (type_, reply)
            assert code != "call_exists"
        # the members saw nothing of it, and the call goes on
        for ws in (wa, wb):
            assert (await ws.request("ping", {}, "pong"))["type"] == "pong"
            leaked = [f for f in ws.backlog if x.id in str(f) or "intrude" in str(f)]
            assert leaked == []
        await wb.send("call_answer", {"call_id": "secret-call", "answer": "v=0"})
        answered = await wa.expect("call_answer", call_id="secret-call")
        assert answered["payload"]["callee_id"] == b.id
    r = await client.http.get(f"/api/conversations/{cid}/messages", headers=a.headers)
    assert [m["content"] for m in r.json()["messages"]] == ["private"]
    members = (await client.http.get(f"/api/conversations/{cid}", headers=a.headers)).json()
    assert {m["user_id"] for m in members["members"]} == {a.id, b.id}


@pytest.mark.parametrize("member_left", [True, False])
async def test_a_removed_member_is_cut_off_at_once(client: Client, member_left: bool) -> None:
    """Removed (or leaving): from the 204 on, no history, no sends, no typing, no live
    messages — no cache lag."""
    a, b, c = await client.register(), await client.register(), await client.register()
    gid = await client.conversation(a, b, c, name="team")
    async with client.ws(a) as wa, client.ws(c) as wc:
        # warm the member cache on every path
        await wa.request("chat_message", {"conversation_id": gid, "content": "before"},
                         "message_ack")
        await wc.expect("new_message", content="before")
        who = c if member_left else a
        r = await client.http.delete(f"/api/conversations/{gid}/members/{c.id}",
                                     headers=who.headers)
        assert r.status_code == 204
        r = await client.http.get(f"/api/conversations/{gid}/messages", headers=c.headers)
        assert r.status_code == 404
        reply = await wc.request("chat_message", {"conversation_id": gid, "content": "late"},
                                 "message_ack")
        assert reply["type"] == "error" and reply["payload"]["code"] == "not_found"
        reply = await wc.request("typing", {"conversation_id": gid}, "never")
        assert reply["payload"]["code"] == "not_found"
        await wa.request("chat_message", {"conversation_id": gid, "content": "after"},
                         "message_ack")
        assert (await wc.request("ping", {}, "pong"))["type"] == "pong"
        assert not [f for f in wc.backlog if f["type"] == "new_message"
                    and f["payload"].get("content") == "after"]
