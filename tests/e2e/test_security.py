"""Sessions, abuse limits, CORS and Origin, admin, socket caps, structured logs — as a
hostile or careless client meets them, on both backends."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatsrv.config import Settings
from chatsrv.domain.model import new_id
from tests.conftest import Server, start_server
from tests.helpers import Account, Client, Ws, pair


async def closed_with(ws: Ws, code: int, *, within: float = 3.0) -> str:
    """Wait until the server closes `ws`; assert the close code; return the reason."""
    with trio.fail_after(within):
        try:
            while True:
                await ws.conn.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == code, exc.reason
            return str(exc.reason.reason)


def with_limits(settings: Settings, **changes: Any) -> Settings:
    """The test server's settings with production-like limits (the suite raises them)."""
    base = dict(login_failures_per_minute=10.0, registrations_per_minute=20.0,
                refreshes_per_minute=60.0, address_rate_per_second=50.0,
                address_rate_burst=200.0, rest_rate_per_second=20.0, rest_rate_burst=60.0,
                expensive_per_minute=60.0, max_sockets_per_user=64,
                max_sockets_per_address=4096, trusted_proxies=("127.0.0.1",))
    return dataclasses.replace(settings, **{**base, **changes})


@pytest.fixture
async def start(aio_loop: None, nursery: trio.Nursery) -> AsyncIterator[Any]:
    started: list[Server] = []

    async def go(settings: Settings) -> Server:
        srv = await start_server(nursery, settings)
        started.append(srv)
        return srv

    yield go
    for srv in started:
        srv.shutdown.set()


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}  # honoured: 127.0.0.1 is a trusted proxy here


# ------------------------------------------------------------------ sessions


async def test_logout_refuses_the_token_and_closes_its_sockets(client: Client) -> None:
    a, _, _ = await pair(client)
    async with client.ws(a) as wa:
        r = await client.http.post("/api/auth/logout", headers=a.headers)  # by bearer token
        assert r.status_code == 204
        assert "revoked" in await closed_with(wa, 4401, within=2)
    r = await client.http.get("/api/users/me", headers=a.headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_revoked"
    r = await client.http.post("/api/auth/refresh", json={"refresh_token": a.refresh_token})
    assert r.status_code == 401
    url = f"{client.server.ws_url}?token={a.token}"
    with pytest.raises(Exception, match="401"):
        async with open_websocket_url(url):
            pass


async def test_a_password_change_ends_every_other_session(client: Client) -> None:
    a = await client.register()
    r = await client.http.post("/api/auth/login", json={"email": a.email,
                                                        "password": a.password})
    other = Account(**{**a.__dict__, "token": r.json()["token"],
                       "refresh_token": r.json()["refresh_token"]})
    async with client.ws(other) as w_other, client.ws(a) as w_mine:
        r = await client.http.post("/api/auth/password", headers=a.headers,
                                   json={"old_password": "wrong-password",
                                         "new_password": "another-pass-1"})
        assert r.status_code == 401
        r = await client.http.post("/api/auth/password", headers=a.headers,
                                   json={"old_password": a.password,
                                         "new_password": "another-pass-1"})
        assert r.status_code == 204, r.text
        await closed_with(w_other, 4401, within=2)
        pong = await w_mine.request("ping", {}, "pong")  # this session goes on
        assert pong["type"] == "pong"
    assert (await client.http.get("/api/users/me", headers=other.headers)).status_code == 401
    assert (await client.http.get("/api/users/me", headers=a.headers)).status_code == 200
    old = await client.http.post("/api/auth/login", json={"email": a.email,
                                                          "password": a.password})
    new = await client.http.post("/api/auth/login", json={"email": a.email,
                                                          "password": "another-pass-1"})
    assert (old.status_code, new.status_code) == (401, 200)


async def test_a_replayed_refresh_token_kills_the_session(client: Client) -> None:
    a = await client.register()
    first = await client.http.post("/api/auth/refresh", json={"refresh_token": a.refresh_token})
    assert first.status_code == 200
    rotated = first.json()
    async with client.ws(a) as wa:
        again = await client.http.post("/api/auth/refresh",
                                       json={"refresh_token": a.refresh_token})
        assert again.status_code == 401  # the stolen copy, replayed
        await closed_with(wa, 4401, within=2)
    for token in (a.token, rotated["token"]):
        r = await client.http.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    r = await client.http.post("/api/auth/refresh",
                               json={"refresh_token": rotated["refresh_token"]})
    assert r.status_code == 401  # the thief's fork is dead too


async def test_concurrent_refreshes_of_one_token_fork_nothing(client: Client) -> None:
    a = await client.register()
    codes: list[int] = []

    async def refresh() -> None:
        r = await client.http.post("/api/auth/refresh", json={"refresh_token": a.refresh_token})
        codes.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(refresh)
    assert codes.count(200) <= 1 and codes.count(401) >= 11  # at most one; then replay


@pytest.fixture
def short_tokens(settings: Settings) -> Settings:
    return dataclasses.replace(settings, access_token_ttl=2.0)


async def test_an_expired_token_closes_its_socket_unless_replaced_by_auth(
        short_tokens: Settings, start: Any) -> None:
    server = await start(short_tokens)
    client = server.client()
    a, _, _ = await pair(client)
    async with client.ws(a) as lazy, client.ws(a) as careful:
        # a token of the same session that lives longer, as a later refresh would give
        claims = jwt.decode(a.token, short_tokens.jwt_secret, algorithms=["HS256"])
        longer = jwt.encode({**claims, "exp": claims["exp"] + 60}, short_tokens.jwt_secret,
                            algorithm="HS256")
        reply = await careful.request("auth", {"token": longer}, "auth_ok")
        assert reply["type"] == "auth_ok" and reply["payload"]["user_id"] == a.id
        assert "expired" in await closed_with(lazy, 4401, within=4)
        assert (await careful.request("ping", {}, "pong"))["type"] == "pong"
    await client.aclose()


async def test_auth_frame_refuses_a_token_of_another_user(client: Client) -> None:
    a, b, _ = await pair(client)
    async with client.ws(a) as wa:
        reply = await wa.request("auth", {"token": b.token}, "auth_ok")
        assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden"
        reply = await wa.request("auth", {"token": "not.a.token"}, "auth_ok")
        assert reply["payload"]["code"] == "invalid_token"


async def test_tokens_of_unknown_users_or_sessions_are_refused(client: Client) -> None:
    secret = client.server.settings.jwt_secret
    import time

    def token(sub: str, sid: str) -> dict[str, str]:
        now = int(time.time())
        signed = jwt.encode({"sub": sub, "sid": sid, "iat": now, "exp": now + 60,
                             "typ": "access"}, secret, algorithm="HS256")
        return {"Authorization": f"Bearer {signed}"}

    a = await client.register()
    for headers in (token(new_id(), new_id()), token(a.id, new_id()), token("x", "y"),
                    token("not-a-uuid", new_id())):
        for method, path in (("GET", "/api/users/me"), ("GET", "/api/conversations"),
                             ("POST", "/api/conversations")):
            r = await client.http.request(method, path, headers=headers,
                                          json={"type": "one_to_one", "member_ids": [a.id]})
            assert r.status_code == 401, (path, r.text)
    bad = token(new_id(), new_id())["Authorization"].removeprefix("Bearer ")
    with pytest.raises(Exception, match="401"):
        async with open_websocket_url(f"{client.server.ws_url}?token={bad}"):
            pass


# ------------------------------------------------------------------ abuse limits


async def test_failed_logins_are_limited_per_account_and_per_address(
        settings: Settings, start: Any) -> None:
    server = await start(with_limits(settings, login_failures_per_minute=5))
    client = server.client()
    victim, bystander = await client.register(), await client.register()
    for _ in range(5):
        r = await client.http.post("/api/auth/login", headers=from_address("10.0.0.1"),
                                   json={"email": victim.email, "password": "guess-guess"})
        assert r.status_code == 401
    r = await client.http.post("/api/auth/login", headers=from_address("10.0.0.2"),
                               json={"email": victim.email, "password": victim.password})
    assert r.status_code == 429  # the account's limit, from any address
    body = r.json()["error"]
    assert body["code"] == "rate_limited" and body["retry_after"] > 0
    assert int(r.headers["Retry-After"]) >= 1
    # the attacker's address is limited too, for every account
    r = await client.http.post("/api/auth/login", headers=from_address("10.0.0.1"),
                               json={"email": bystander.email, "password": "guess-guess"})
    assert r.status_code == 429
    # someone else, elsewhere, signs in as usual
    r = await client.http.post("/api/auth/login", headers=from_address("10.0.0.3"),
                               json={"email": bystander.email, "password": bystander.password})
    assert r.status_code == 200
    await client.aclose()


async def test_registrations_refreshes_and_rest_calls_are_limited(
        settings: Settings, start: Any) -> None:
    server = await start(with_limits(settings, registrations_per_minute=3,
                                     refreshes_per_minute=2, rest_rate_per_second=1,
                                     rest_rate_burst=5, address_rate_burst=1000))
    client = server.client()
    codes = []
    for i in range(4):
        name = f"lim{new_id()[:8]}{i}"
        r = await client.http.post("/api/auth/register", headers=from_address("10.1.0.1"),
                                   json={"username": name, "email": f"{name}@example.com",
                                         "password": "password123"})
        codes.append(r.status_code)
    assert codes == [201, 201, 201, 429]
    a = await client.register()  # another address (the test client's own)
    codes = [(await client.http.post("/api/auth/refresh", json={"refresh_token": "x" * 40},
                                     headers=from_address("10.1.0.2"))).status_code
             for _ in range(3)]
    assert codes == [401, 401, 429]
    codes = [(await client.http.get("/api/conversations", headers=a.headers)).status_code
             for _ in range(7)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    await client.aclose()


async def test_every_address_is_limited(settings: Settings, start: Any) -> None:
    server = await start(with_limits(settings, address_rate_per_second=1,
                                     address_rate_burst=5))
    client = server.client()
    codes = [(await client.http.get("/api/openapi.json",
                                    headers=from_address("10.2.0.1"))).status_code
             for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    # the probes of an operator are never limited
    probes = [(await client.http.get("/healthz", headers=from_address("10.2.0.1"))).status_code
              for _ in range(10)]
    assert probes == [200] * 10
    await client.aclose()


async def test_bcrypt_work_is_bounded(settings: Settings, start: Any) -> None:
    server = await start(with_limits(dataclasses.replace(settings, bcrypt_rounds=10),
                                     bcrypt_concurrency=1, bcrypt_queue=1))
    client = server.client()
    a = await client.register()
    codes: list[int] = []

    async def login(i: int) -> None:
        r = await client.http.post("/api/auth/login", headers=from_address(f"10.3.0.{i}"),
                                   json={"email": a.email, "password": a.password})
        codes.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "busy"

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(login, i)
    assert 200 in codes and 503 in codes, codes
    await client.aclose()


# ------------------------------------------------------------------ CORS, Origin, headers


@pytest.fixture
def cors(settings: Settings) -> Settings:
    return dataclasses.replace(settings, cors_origins=("https://chat.example",))


async def test_cors_only_for_listed_origins(cors: Settings, start: Any) -> None:
    server = await start(cors)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        r = await http.options("/api/conversations", headers={
            "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        r = await http.get("/api/openapi.json", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers
        page = await http.get("/")
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"


async def test_the_websocket_handshake_checks_the_origin(cors: Settings, start: Any) -> None:
    server = await start(cors)
    client = server.client()
    a = await client.register()
    host = server.url.removeprefix("http://")
    url = f"{server.ws_url}?token={a.token}"
    with pytest.raises(Exception, match="403"):
        async with open_websocket_url(url, extra_headers=[(b"Origin", b"https://evil.example")]):
            pass
    for origin in (b"https://chat.example", f"http://{host}".encode()):
        async with open_websocket_url(url, extra_headers=[(b"Origin", origin)]) as ws:
            assert json.loads(await ws.get_message())["type"] == "ready"
    async with open_websocket_url(url) as ws:  # no Origin: not a browser
        assert json.loads(await ws.get_message())["type"] == "ready"
    await client.aclose()


# ------------------------------------------------------------------ admin


async def make_admin(server: Server, account: Account) -> None:
    await server.services.admin.set_admin(account.id, True)


async def test_admins_list_deactivate_and_reactivate(client: Client) -> None:
    admin, user = await client.register(), await client.register()
    await make_admin(client.server, admin)
    r = await client.http.get("/api/admin/users", headers=user.headers)
    assert r.status_code == 403
    r = await client.http.get("/api/admin/users", params={"q": user.username},
                              headers=admin.headers)
    assert r.status_code == 200 and [u["id"] for u in r.json()["users"]] == [user.id]
    async with client.ws(user) as wu:
        r = await client.http.post(f"/api/admin/users/{user.id}/deactivate",
                                   headers=admin.headers)
        assert r.status_code == 200 and r.json()["active"] is False
        await closed_with(wu, 4401, within=2)
    assert (await client.http.get("/api/users/me", headers=user.headers)).status_code == 401
    r = await client.http.post("/api/auth/login", json={"email": user.email,
                                                        "password": user.password})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_deactivated"
    r = await client.http.get("/api/users", params={"q": user.username}, headers=admin.headers)
    assert r.json()["users"] == []
    r = await client.http.post(f"/api/admin/users/{user.id}/deactivate", headers=user.headers)
    assert r.status_code == 401
    r = await client.http.post(f"/api/admin/users/{user.id}/reactivate",
                               headers=admin.headers)
    assert r.status_code == 200 and r.json()["active"] is True
    r = await client.http.post("/api/auth/login", json={"email": user.email,
                                                        "password": user.password})
    assert r.status_code == 200


async def test_registration_can_be_closed(settings: Settings, start: Any) -> None:
    server = await start(dataclasses.replace(settings, allow_registration=False))
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        r = await http.post("/api/auth/register", json={
            "username": "closed_door", "email": "c@example.com", "password": "password123"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "registration_closed"


# ------------------------------------------------------------------ greedy and slow clients


async def test_sockets_per_user_are_capped(settings: Settings, start: Any) -> None:
    server = await start(dataclasses.replace(settings, max_sockets_per_user=2))
    client = server.client()
    a = await client.register()
    async with client.ws(a), client.ws(a):
        with pytest.raises(Exception, match="429"):
            async with open_websocket_url(f"{server.ws_url}?token={a.token}"):
                pass
    async with client.ws(a):  # a slot is free again
        pass
    metrics = (await client.http.get("/metrics")).text
    assert 'chatsrv_ws_refused_total{reason="user"} 1' in metrics
    await client.aclose()


async def test_a_slowloris_is_dropped_at_the_head_deadline(settings: Settings,
                                                           start: Any) -> None:
    server = await start(dataclasses.replace(settings, head_timeout=0.5))
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    began = trio.current_time()
    with trio.fail_after(5):
        try:
            for part in (b"GET /api/ws HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: 1\r\n"):
                await stream.send_all(part)
                with trio.move_on_after(0.3):  # the attack's pace: a header every 0.3 s
                    if await stream.receive_some(1) == b"":
                        break
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
    assert trio.current_time() - began < 2
    await stream.aclose()


# ------------------------------------------------------------------ logs


def test_json_logs_carry_context_and_no_tokens(tmp_path: Any) -> None:
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "CHATSRV_DATA_DIR": str(tmp_path), "HTTP_PORT": "0",
           "BCRYPT_ROUNDS": "4", "LOG_FORMAT": "json", "NODE_ID": "node-log"}
    proc = subprocess.Popen([sys.executable, "-m", "chatsrv", "serve"], env=env,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "server exited"
            lines.append(json.loads(line))
            found = re.search(r"serving on (http://[\d.]+:\d+)", lines[-1]["msg"])
            url = found.group(1) if found else None
        body = json.dumps({"username": "log_user", "email": "log@example.com",
                           "password": "password123"}).encode()
        req = urllib.request.Request(f"{url}/api/auth/register", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["token"]
        req = urllib.request.Request(f"{url}/api/users/me",
                                     headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(req, timeout=10).read()
        while True:
            line = proc.stderr.readline()
            lines.append(json.loads(line))
            if lines[-1]["logger"] == "chatsrv.access" and "/api/users/me" in lines[-1]["msg"]:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=15)[1]
    access = lines[-1]
    assert access["node_id"] == "node-log" and access["status"] == 200
    assert access["user_id"] and access["session_id"] and access["request_id"]
    assert token not in rest and all(token not in json.dumps(x) for x in lines)
