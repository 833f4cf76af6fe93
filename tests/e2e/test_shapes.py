"""One shape per field: the same field has the same type (and null/absent rule) in every
REST answer and frame that carries it, so a client author can decode it one way."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.helpers import Client, pair


def _conversation_fields(conv: dict[str, Any]) -> tuple[int, str | None, int]:
    last = conv["last_message"]
    return conv["unread"], last["id"] if last else None, conv["last_seq"]


async def test_unread_and_last_message_are_the_same_in_every_conversation_answer(
        client: Client) -> None:
    a, b = await client.register(), await client.register()
    r = await client.http.post("/api/conversations", headers=a.headers, json={
        "type": "one_to_one", "member_ids": [b.id]})
    assert r.status_code == 201
    fresh = r.json()
    assert fresh["unread"] == 0 and fresh["last_message"] is None  # 0, not null
    cid = fresh["id"]
    group = (await client.http.post("/api/conversations", headers=a.headers, json={
        "type": "group", "name": "g", "member_ids": [b.id]})).json()
    assert group["unread"] == 0

    for text in ("one", "two", "three"):
        r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                                   json={"content": text})
        assert r.status_code == 201
    # b's view of the 1:1, through every answer that carries a conversation
    again = await client.http.post("/api/conversations", headers=b.headers, json={
        "type": "one_to_one", "member_ids": [a.id]})
    assert again.status_code == 200  # the existing one
    one = (await client.http.get(f"/api/conversations/{cid}", headers=b.headers)).json()
    listed = next(c for c in (await client.http.get(
        "/api/conversations", headers=b.headers)).json()["conversations"] if c["id"] == cid)
    views = [_conversation_fields(v) for v in (again.json(), one, listed)]
    assert views[0][0] == 3 and views[0][2] == 3 and views[0][1] is not None
    assert views.count(views[0]) == 3, views
    # and the sender's: everything they sent is read by them
    mine = (await client.http.get(f"/api/conversations/{cid}", headers=a.headers)).json()
    assert mine["unread"] == 0 and mine["last_message"]["content"] == "three"

    c = await client.register()
    added = (await client.http.post(f"/api/conversations/{group['id']}/members",
                                    headers=a.headers, json={"member_ids": [c.id]})).json()
    assert added["unread"] == 0 and added["last_message"] is None


async def test_user_status_is_a_string_wherever_the_caller_may_see_it(client: Client) -> None:
    name = f"s{uuid.uuid4().hex[:10]}"
    body = {"username": name, "email": f"{name}@example.com", "password": "password123"}
    reg = await client.http.post("/api/auth/register", json=body)
    login = await client.http.post("/api/auth/login", json={
        "email": body["email"], "password": body["password"]})
    refresh = await client.http.post("/api/auth/refresh", json={
        "refresh_token": login.json()["refresh_token"]})
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    me = await client.http.get("/api/users/me", headers=headers)
    for answer in (reg, login, refresh):
        assert answer.json()["user"]["status"] == "offline", answer.json()
    assert me.json()["status"] == "offline"

    a, b, cid = await pair(client)
    contact = (await client.http.get(f"/api/users/{b.id}", headers=a.headers)).json()
    member = (await client.http.get(f"/api/conversations/{cid}", headers=a.headers)).json()
    assert contact["status"] == "offline"
    assert {m["status"] for m in member["members"]} == {"offline"}
    # the one null: presence is shown only to contacts (documented in docs/protocol.md)
    stranger = (await client.http.get(f"/api/users/{me.json()['id']}",
                                      headers=a.headers)).json()
    assert stranger["status"] is None and stranger["last_seen"] is None


async def test_frame_timestamps_are_unix_seconds_with_milliseconds_beside(
        client: Client) -> None:
    a, b, cid = await pair(client)
    before = int(time.time() * 1000)
    async with client.ws(a) as wa:
        async with client.ws(b) as wb:
            online = await wa.expect("presence_update", user_id=b.id, status="online")
            await wa.send("chat_message", {"conversation_id": cid, "content": "hi"})
            msg = await wb.expect("new_message")
            await wb.send("read_receipt", {"message_id": msg["payload"]["id"]})
            status = await wa.expect("message_status", status="read")
        offline = await wa.expect("presence_update", user_id=b.id, status="offline")
    after = int(time.time() * 1000)
    for frame in (online, status, offline):
        p = frame["payload"]
        assert type(p["timestamp"]) is int and type(p["timestamp_ms"]) is int, frame
        assert p["timestamp"] == p["timestamp_ms"] // 1000, frame
        assert before <= p["timestamp_ms"] <= after, frame


async def test_unknown_user_names_the_missing_ids_on_create_and_on_add(client: Client) -> None:
    a, b = await client.register(), await client.register()
    ghost = str(uuid.uuid4())
    r = await client.http.post("/api/conversations", headers=a.headers, json={
        "type": "group", "name": "g", "member_ids": [b.id, ghost]})
    assert r.status_code == 400 and r.json()["error"]["user_ids"] == [ghost]
    gid = (await client.http.post("/api/conversations", headers=a.headers, json={
        "type": "group", "name": "g", "member_ids": [b.id]})).json()["id"]
    r = await client.http.post(f"/api/conversations/{gid}/members", headers=a.headers,
                               json={"member_ids": [ghost]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown_user"
    assert r.json()["error"]["user_ids"] == [ghost]


async def test_openapi_says_unread_is_an_integer(client: Client) -> None:
    doc = (await client.http.get("/api/openapi.json")).json()
    unread = doc["components"]["schemas"]["ConversationOut"]["properties"]["unread"]
    assert unread == {"type": "integer", "default": 0}
