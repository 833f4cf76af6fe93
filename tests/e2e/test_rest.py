"""REST against a real Hypercorn on port 0, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import Client


async def test_seed_curl_examples_work_verbatim(client: Client) -> None:
    name = f"john_{uuid.uuid4().hex[:6]}"
    r = await client.http.post("/api/auth/register", json={
        "username": name, "email": f"{name}@example.com", "password": "securepassword123",
        "display_name": "John Doe"})
    assert r.status_code == 201
    body = r.json()
    assert body["token"] and body["user"]["username"] == name
    assert set(body["user"]) >= {"id", "username", "email", "display_name"}

    r = await client.http.post("/api/auth/login", json={
        "email": f"{name}@example.com", "password": "securepassword123"})
    assert r.status_code == 200
    login = r.json()
    assert login["user"]["id"] == body["user"]["id"] and login["refresh_token"]
    headers = {"Authorization": f"Bearer {login['token']}"}

    other = await client.register()
    r = await client.http.post("/api/conversations", headers=headers, json={
        "type": "one_to_one", "member_ids": [other.id]})
    assert r.status_code == 201
    conv = r.json()["id"]

    r = await client.http.get(f"/api/conversations/{conv}/messages?limit=50&offset=0",
                              headers=headers)
    assert r.status_code == 200
    assert r.json() == {"messages": [], "has_more": False}


async def test_login_by_username_and_uniform_401(client: Client) -> None:
    a = await client.register()
    r = await client.http.post("/api/auth/login", json={"username": a.username,
                                                        "password": a.password})
    assert r.status_code == 200
    wrong_pw = await client.http.post("/api/auth/login", json={"email": a.email,
                                                               "password": "wrong-password"})
    no_user = await client.http.post("/api/auth/login", json={"email": "nobody@example.com",
                                                              "password": "wrong-password"})
    assert wrong_pw.status_code == no_user.status_code == 401
    assert wrong_pw.json() == no_user.json()


@pytest.mark.parametrize("body,field", [
    ({"username": "a", "email": "a@example.com", "password": "password123"}, "username"),
    ({"username": "valid_name", "email": "not-an-email", "password": "password123"}, "email"),
    ({"username": "valid_name", "email": "v@example.com", "password": "short"}, "password"),
    ({"username": "valid_name", "email": "v@example.com", "password": "p" * 73}, "password"),
])
async def test_register_validation(client: Client, body: dict, field: str) -> None:
    r = await client.http.post("/api/auth/register", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["field"] == field


async def test_register_conflicts(client: Client) -> None:
    a = await client.register()
    r = await client.http.post("/api/auth/register", json={
        "username": a.username.upper(), "email": "fresh@example.com", "password": "password123"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "username_taken"
    r = await client.http.post("/api/auth/register", json={
        "username": "fresh_name", "email": a.email, "password": "password123"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "email_taken"


async def test_refresh_rotates_and_logout_revokes(client: Client) -> None:
    a = await client.register()
    r = await client.http.post("/api/auth/refresh", json={"refresh_token": a.refresh_token})
    assert r.status_code == 200
    new = r.json()["refresh_token"]
    assert new != a.refresh_token
    r = await client.http.get("/api/users/me", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert r.status_code == 200 and r.json()["id"] == a.id
    # the old one is spent; replaying it revokes the new one too
    assert (await client.http.post("/api/auth/refresh",
                                   json={"refresh_token": a.refresh_token})).status_code == 401
    assert (await client.http.post("/api/auth/refresh",
                                   json={"refresh_token": new})).status_code == 401
    b = await client.register()
    assert (await client.http.post("/api/auth/logout",
                                   json={"refresh_token": b.refresh_token})).status_code == 204
    assert (await client.http.post("/api/auth/refresh",
                                   json={"refresh_token": b.refresh_token})).status_code == 401


async def test_users_me_by_id_and_search(client: Client) -> None:
    a = await client.register()
    b = await client.register()
    r = await client.http.get("/api/users/me", headers=a.headers)
    assert r.json()["email"] == a.email and r.json()["status"] == "offline"
    r = await client.http.get(f"/api/users/{b.id}", headers=a.headers)
    assert r.status_code == 200
    assert r.json()["username"] == b.username and r.json().get("email") is None
    # a stranger's presence is not shown; a contact's is
    assert r.json()["status"] is None and r.json()["last_seen"] is None
    r = await client.http.get("/api/users", params={"q": b.username[1:8]}, headers=a.headers)
    assert [u["id"] for u in r.json()["users"]] == [b.id]
    assert r.json()["users"][0]["status"] is None
    await client.conversation(a, b)
    r = await client.http.get(f"/api/users/{b.id}", headers=a.headers)
    assert r.json()["status"] == "offline"


async def test_conversations_group_flow_and_admin_rules(client: Client) -> None:
    a, b, c, d = [await client.register() for _ in range(4)]
    r = await client.http.post("/api/conversations", headers=a.headers, json={
        "type": "group", "name": "team", "member_ids": [b.id, c.id]})
    assert r.status_code == 201
    conv = r.json()
    assert {m["user_id"]: m["role"] for m in conv["members"]} == {
        a.id: "admin", b.id: "member", c.id: "member"}
    cid = conv["id"]
    # a non-admin cannot add
    r = await client.http.post(f"/api/conversations/{cid}/members", headers=b.headers,
                               json={"member_ids": [d.id]})
    assert r.status_code == 403
    r = await client.http.post(f"/api/conversations/{cid}/members", headers=a.headers,
                               json={"member_ids": [d.id]})
    assert r.status_code == 200 and d.id in {m["user_id"] for m in r.json()["members"]}
    # a member can leave; a non-admin cannot remove others
    r = await client.http.delete(f"/api/conversations/{cid}/members/{c.id}", headers=b.headers)
    assert r.status_code == 403
    r = await client.http.delete(f"/api/conversations/{cid}/members/{c.id}", headers=c.headers)
    assert r.status_code == 204
    r = await client.http.get(f"/api/conversations/{cid}", headers=c.headers)
    assert r.status_code == 404


async def test_one_to_one_is_idempotent_per_pair(client: Client) -> None:
    a, b = await client.register(), await client.register()
    r1 = await client.http.post("/api/conversations", headers=a.headers,
                                json={"type": "one_to_one", "member_ids": [b.id]})
    r2 = await client.http.post("/api/conversations", headers=b.headers,
                                json={"type": "one_to_one", "member_ids": [a.id]})
    assert r1.status_code == 201 and r2.status_code == 200
    assert r1.json()["id"] == r2.json()["id"]


async def test_messages_send_page_and_list_unread(client: Client) -> None:
    a, b = await client.register(), await client.register()
    cid = await client.conversation(a, b)
    for i in range(7):
        r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                                   json={"content": f"m{i}"})
        assert r.status_code == 201 and r.json()["seq"] == i + 1
    r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                               json={"content": "again", "client_msg_id": "k1"})
    again = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                                   json={"content": "again", "client_msg_id": "k1"})
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]

    page = (await client.http.get(f"/api/conversations/{cid}/messages?limit=3",
                                  headers=b.headers)).json()
    assert [m["seq"] for m in page["messages"]] == [6, 7, 8] and page["has_more"]
    page = (await client.http.get(f"/api/conversations/{cid}/messages?limit=3&offset=3",
                                  headers=b.headers)).json()
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5]
    page = (await client.http.get(f"/api/conversations/{cid}/messages?before_seq=3",
                                  headers=b.headers)).json()
    assert [m["seq"] for m in page["messages"]] == [1, 2] and not page["has_more"]
    page = (await client.http.get(f"/api/conversations/{cid}/messages?after_seq=6&limit=100000",
                                  headers=b.headers)).json()
    assert [m["seq"] for m in page["messages"]] == [7, 8]

    convs = (await client.http.get("/api/conversations", headers=b.headers)).json()
    [summary] = convs["conversations"]
    assert summary["unread"] == 8 and summary["last_message"]["content"] == "again"
    r = await client.http.post(f"/api/conversations/{cid}/read", headers=b.headers,
                               json={"up_to_seq": 5})
    assert r.status_code == 204
    [summary] = (await client.http.get("/api/conversations", headers=b.headers)).json()["conversations"]
    assert summary["unread"] == 3
    detail = (await client.http.get(f"/api/conversations/{cid}", headers=a.headers)).json()
    marks = {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in detail["members"]}
    assert marks[b.id] == (5, 5)
    msg5 = page = (await client.http.get(f"/api/conversations/{cid}/messages?after_seq=4&limit=1",
                                         headers=a.headers)).json()["messages"][0]
    status = (await client.http.get(f"/api/messages/{msg5['id']}/status", headers=a.headers)).json()
    assert status["statuses"] == {b.id: "read"}


async def test_outsider_gets_404_everywhere(client: Client) -> None:
    a, b, outsider = await client.register(), await client.register(), await client.register()
    cid = await client.conversation(a, b)
    r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                               json={"content": "secret"})
    mid = r.json()["id"]
    h = outsider.headers
    checks = [
        await client.http.get(f"/api/conversations/{cid}", headers=h),
        await client.http.get(f"/api/conversations/{cid}/messages", headers=h),
        await client.http.post(f"/api/conversations/{cid}/messages", headers=h,
                               json={"content": "x"}),
        await client.http.post(f"/api/conversations/{cid}/members", headers=h,
                               json={"member_ids": [outsider.id]}),
        await client.http.delete(f"/api/conversations/{cid}/members/{a.id}", headers=h),
        await client.http.post(f"/api/conversations/{cid}/read", headers=h,
                               json={"up_to_seq": 1}),
        await client.http.get(f"/api/messages/{mid}/status", headers=h),
    ]
    assert [r.status_code for r in checks] == [404] * len(checks)
    assert all(r.json()["error"]["code"] == "not_found" for r in checks)
    assert (await client.http.get("/api/conversations", headers=h)).json() == {"conversations": []}


async def test_every_protected_endpoint_requires_a_token(client: Client) -> None:
    fake = str(uuid.uuid4())
    for method, path in [("GET", "/api/users/me"), ("GET", f"/api/users/{fake}"),
                         ("GET", "/api/users?q=x"), ("GET", "/api/conversations"),
                         ("POST", "/api/conversations"), ("GET", f"/api/conversations/{fake}"),
                         ("GET", f"/api/conversations/{fake}/messages")]:
        r = await client.http.request(method, path)
        assert r.status_code == 401, (method, path)
        r = await client.http.request(method, path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("content,expected", [
    (b"{not json", "invalid_json"),
    (b"[]", "invalid_request"),
    (b'{"type": "one_to_one", "member_ids": "abc"}', "invalid_request"),
    (b'{"type": "one_to_one", "member_ids": ["not-a-uuid"]}', "invalid_request"),
    (b'{"type": "one_to_one", "member_ids": ["6f1c2f6e-9a63-4a1c-9a1e-4d2a0c1b7e11"]}',
     "unknown_user"),
    (b'{"type": "triangle", "member_ids": []}', "invalid_request"),
    (b"", "invalid_json"),
])
async def test_bad_input_gets_4xx_json(client: Client, content: bytes, expected: str) -> None:
    a = await client.register()
    r = await client.http.post("/api/conversations", content=content,
                               headers={**a.headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == expected


async def test_huge_body_non_uuid_ids_and_unknown_routes(client: Client) -> None:
    a = await client.register()
    r = await client.http.post("/api/conversations", content=b"x" * (200 * 1024),
                               headers={**a.headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = await client.http.get("/api/conversations/not-a-uuid/messages", headers=a.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "conversation_id"
    r = await client.http.get("/api/conversations/x/messages?limit=abc", headers=a.headers)
    assert r.status_code == 400
    r = await client.http.get("/api/nothing-here", headers=a.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.http.put("/api/conversations", headers=a.headers)
    assert r.status_code in (404, 405) and "error" in r.json()
    b = await client.register()
    cid = await client.conversation(a, b)
    r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                               json={"content": "x" * 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_too_long"
    r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                               json={"content": "   "})
    assert r.status_code == 400
    # and the server still works
    assert (await client.http.get("/healthz")).status_code == 200


async def test_health_ready_metrics_openapi(client: Client) -> None:
    assert (await client.http.get("/healthz")).json()["status"] == "ok"
    assert (await client.http.get("/readyz")).json()["status"] == "ready"
    metrics = (await client.http.get("/metrics")).text
    assert "chatsrv_connections " in metrics
    spec = (await client.http.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "post" in spec["paths"]["/api/conversations/{conversation_id}/messages"]
    assert "RegisterIn" in spec["components"]["schemas"]
    assert "AuthOut" in spec["components"]["schemas"]
