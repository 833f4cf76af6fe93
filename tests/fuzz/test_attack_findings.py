"""Regression tests for every finding of the attack run in issue 9, as a client sees them.

Each test sends one hostile request or frame to a real node (a `chatsrv serve` subprocess)
and asserts what a client of a production chat backend should get: a 4xx JSON error with a
stable code (and the `field` at fault where there is one), or an `error` frame whose code is
not `internal`; then that the node is still up, logged no traceback, and — where a WebSocket
is involved — that other users still chat. Storage-bound cases run on SQLite and PostgreSQL
(the `node` fixture is parametrized); framing and HTTP cases run on one node (`sqlite_node`).

Judgement calls are written in each test's docstring.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.fuzz.node import Account, Node, RawConn, conversation, register, rest, send
from tests.fuzz.wsclient import Bystanders, WsClient, client_frame

pytestmark = pytest.mark.fuzz

DEEP = 5000  # the attack run: msgspec hits RecursionError somewhere past ~3,000 levels
BIG = [2**63, 2**64, 10**30, -(2**63) - 1]
HEAD_TIMEOUT = 10.0  # transport/listener.py: a request head must arrive within this


def assert_error(r: httpx.Response, status: int, codes: str | tuple[str, ...],
                 field: str | None = None) -> dict[str, Any]:
    """`r` is the JSON error a client can act on: `status`, one of `codes`, and `field`."""
    codes = (codes,) if isinstance(codes, str) else codes
    assert r.status_code == status, f"{r.request.method} {r.request.url.path}: " \
                                    f"{r.status_code} {r.text[:300]}"
    body = r.json()["error"]
    assert body["code"] in codes, body
    if field is not None:
        assert body.get("field") == field, body
    return body  # type: ignore[no-any-return]


@pytest.fixture
def http(node: Node) -> httpx.Client:
    with rest(node) as client:
        yield client  # type: ignore[misc]


@pytest.fixture
def user(http: httpx.Client) -> Account:
    return register(http)


@pytest.fixture
def chat(http: httpx.Client, user: Account) -> tuple[Account, Account, str]:
    """The user, a peer, and their 1:1 conversation with one message in it."""
    peer = register(http)
    cid = conversation(http, user, peer)
    send(http, user, cid, "first")
    return user, peer, cid


# ---------------------------------------------------------------------------- REST bodies


def _deep(kind: str) -> bytes:
    inner = ("[" * DEEP + "]" * DEEP) if kind == "arrays" else ('{"a":' * DEEP + "1" + "}" * DEEP)
    return inner.encode()


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_deep_nesting_in_a_rest_body_is_invalid_json(node: Node, http: httpx.Client,
                                                     chat: tuple[Account, Account, str],
                                                     kind: str) -> None:
    """5,000 levels of nesting in an (ignored) unknown field: 400 `invalid_json`, never a
    RecursionError turned 500. Judgement: `invalid_json` (we refuse to parse it) rather than
    `invalid_request`; both are 400."""
    user, _, cid = chat
    mark = node.mark()
    deep = _deep(kind)
    cases = [
        ("/api/auth/login", b'{"x":' + deep + b',"email":"a@example.com","password":"p"}', {}),
        (f"/api/conversations/{cid}/messages", b'{"x":' + deep + b',"content":"hi"}',
         user.headers),
        ("/api/conversations", b'{"member_ids":[],"x":' + deep + b"}", user.headers),
    ]
    for path, body, headers in cases:
        r = http.post(path, content=body,
                      headers={**headers, "Content-Type": "application/json"})
        assert_error(r, 400, "invalid_json")
    node.assert_healthy(mark)


@pytest.mark.parametrize("where", ["known_field", "unknown_field", "key", "first_byte"])
def test_invalid_utf8_in_a_rest_body_is_invalid_json(node: Node, http: httpx.Client,
                                                     chat: tuple[Account, Account, str],
                                                     where: str) -> None:
    """Bytes that are not UTF-8 anywhere in a JSON body: 400 `invalid_json` (RFC 8259 §8.1:
    JSON text is UTF-8), for the anonymous login as for an authenticated send."""
    user, _, cid = chat
    bad = b"\xff\xfe\xc3"
    login, message = {
        "known_field": (b'{"email":"' + bad + b'","password":"password123"}',
                        b'{"content":"' + bad + b'"}'),
        "unknown_field": (b'{"x":"' + bad + b'","email":"a@example.com","password":"p1234567"}',
                          b'{"x":"' + bad + b'","content":"hi"}'),
        "key": (b'{"' + bad + b'":1,"email":"a@example.com","password":"p1234567"}',
                b'{"' + bad + b'":1,"content":"hi"}'),
        "first_byte": (bad + b'{"email":"a@example.com","password":"p1234567"}',
                       bad + b'{"content":"hi"}'),
    }[where]
    mark = node.mark()
    json_ct = {"Content-Type": "application/json"}
    assert_error(http.post("/api/auth/login", content=login, headers=json_ct), 400,
                 "invalid_json")
    assert_error(http.post(f"/api/conversations/{cid}/messages", content=message,
                           headers={**user.headers, **json_ct}), 400, "invalid_json")
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- REST numbers


@pytest.mark.parametrize("param", ["offset", "before_seq", "after_seq"])
@pytest.mark.parametrize("value", BIG, ids=["2^63", "2^64", "1e30", "-2^63-1"])
def test_history_cursor_out_of_range_is_invalid_request(node: Node, http: httpx.Client,
                                                        chat: tuple[Account, Account, str],
                                                        param: str, value: int) -> None:
    """`offset`/`before_seq`/`after_seq` outside a signed 64-bit integer: 400
    `invalid_request` with `field` = the parameter. Judgement: refused, not clamped (a
    client sending 2^63 has a bug it should hear about; both backends store int64)."""
    user, _, cid = chat
    mark = node.mark()
    r = http.get(f"/api/conversations/{cid}/messages", params={param: str(value)},
                 headers=user.headers)
    assert_error(r, 400, "invalid_request", field=param)
    node.assert_healthy(mark)


@pytest.mark.parametrize("value", BIG, ids=["2^63", "2^64", "1e30", "-2^63-1"])
def test_read_receipt_out_of_range(node: Node, http: httpx.Client,
                                   chat: tuple[Account, Account, str], value: int) -> None:
    """`POST /api/conversations/{id}/read` with `up_to_seq` outside int64. Past the end it
    means "everything": 204 and the mark clamped to `last_seq` (what the server does today,
    and harmless); below 1 it is 400 `invalid_request` field `up_to_seq`. Judgement: 400 for
    a positive value past int64 would be as good; a 5xx or a mark past last_seq is not."""
    _, peer, cid = chat
    mark = node.mark()
    r = http.post(f"/api/conversations/{cid}/read", json={"up_to_seq": value},
                  headers=peer.headers)
    if value < 0:
        assert_error(r, 400, "invalid_request", field="up_to_seq")
    elif r.status_code != 204:
        assert_error(r, 400, "invalid_request", field="up_to_seq")
    conv = http.get(f"/api/conversations/{cid}", headers=peer.headers).json()
    me = next(m for m in conv["members"] if m["user_id"] == peer.id)
    assert me["read_seq"] <= conv["last_seq"], conv
    node.assert_healthy(mark)


def test_history_limit_is_capped_not_an_error(node: Node, http: httpx.Client,
                                              chat: tuple[Account, Account, str]) -> None:
    """`limit` above the maximum is capped (docs/protocol.md: "capped at 100"), even at
    2^63; `limit=0` or negative is 400 `invalid_request` field `limit`."""
    user, _, cid = chat
    mark = node.mark()
    path = f"/api/conversations/{cid}/messages"
    for value in (101, 2**63, 10**30):
        r = http.get(path, params={"limit": str(value)}, headers=user.headers)
        assert r.status_code == 200, (value, r.text)
        assert [m["content"] for m in r.json()["messages"]] == ["first"]
    for value in (0, -1, -(2**63) - 1):
        assert_error(http.get(path, params={"limit": str(value)}, headers=user.headers),
                     400, "invalid_request", field="limit")
    node.assert_healthy(mark)


@pytest.mark.parametrize("value", ["0", "-1", "101", str(2**63), "abc"])
def test_calls_limit_outside_1_to_100_is_refused(node: Node, http: httpx.Client,
                                                 user: Account, value: str) -> None:
    """`/api/calls?limit=` outside 1-100 (the service's own rule): 400 `invalid_request`,
    field `limit` — `limit=0` must not silently mean the default 50."""
    mark = node.mark()
    assert_error(http.get("/api/calls", params={"limit": value}, headers=user.headers),
                 400, "invalid_request", field="limit")
    assert http.get("/api/calls", params={"limit": "1"}, headers=user.headers).status_code == 200
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- NUL, surrogates


NUL_CASES = {
    # name: (method, path template, body or query, field)
    "register.password": ("POST", "/api/auth/register",
                          {"username": "{u}", "email": "{u}@example.com",
                           "password": "pass\x00word1"}, "password"),
    "register.display_name": ("POST", "/api/auth/register",
                              {"username": "{u}", "email": "{u}@example.com",
                               "password": "password123", "display_name": "a\x00b"},
                              "display_name"),
    "register.email": ("POST", "/api/auth/register",
                       {"username": "{u}", "email": "{u}\x00@example.com",
                        "password": "password123"}, "email"),
    "login.password": ("POST", "/api/auth/login",
                       {"email": "{email}", "password": "pass\x00word1"}, "password"),
    "login.email": ("POST", "/api/auth/login",
                    {"email": "a\x00@example.com", "password": "password123"}, "email"),
    "group.name": ("POST", "/api/conversations",
                   {"type": "group", "name": "a\x00b", "member_ids": ["{peer}"]}, "name"),
    "search.q": ("GET", "/api/users", {"q": "a\x00b"}, "q"),
    "message.content": ("POST", "/api/conversations/{cid}/messages", {"content": "a\x00b"},
                        "content"),
    "message.client_msg_id": ("POST", "/api/conversations/{cid}/messages",
                              {"content": "hi", "client_msg_id": "a\x00b"}, "client_msg_id"),
    "refresh.refresh_token": ("POST", "/api/auth/refresh", {"refresh_token": "a\x00b"},
                              "refresh_token"),
}


# Credentials a NUL can never match (nothing stored holds one): the plain "wrong
# credentials" answer is as good as the field error there, and tells a guesser nothing.
CREDENTIAL_CASES = {"login.password": "invalid_credentials", "login.email": "invalid_credentials",
                    "refresh.refresh_token": "invalid_refresh_token"}


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_in_a_text_field_is_refused_with_its_field(node: Node, http: httpx.Client,
                                                       chat: tuple[Account, Account, str],
                                                       case: str) -> None:
    """U+0000 in any text a client sends: 400 `invalid_request` with `field`, identically on
    SQLite (which would store it) and PostgreSQL (which refuses it at bind time and, today,
    takes the node down). Judgement: for a login or refresh credential (CREDENTIAL_CASES)
    the plain 401 of a wrong credential is accepted too; a 5xx never."""
    user, peer, cid = chat
    method, path, data, field = NUL_CASES[case]
    names = {"u": f"n{uuid.uuid4().hex[:10]}", "email": user.email, "peer": peer.id, "cid": cid}
    path, data = _fill(path, names), _fill(data, names)
    mark = node.mark()
    if method == "GET":
        r = http.get(path, params=data, headers=user.headers)
    else:
        r = http.post(path, json=data, headers=user.headers)
    if case in CREDENTIAL_CASES and r.status_code == 401:
        assert_error(r, 401, CREDENTIAL_CASES[case])
    else:
        assert_error(r, 400, "invalid_request", field=field)
    node.assert_healthy(mark)
    # and the node still stores what it should
    assert send(http, user, cid, "after")["content"] == "after"


@pytest.mark.parametrize("field", ["content", "client_msg_id", "display_name", "name"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud800b", "\\ud800\\ud800"])
def test_lone_surrogate_in_a_text_field_is_refused(node: Node, http: httpx.Client,
                                                   chat: tuple[Account, Account, str],
                                                   field: str, escape: str) -> None:
    """A lone surrogate (JSON `\\ud800`) cannot be UTF-8 at all: 400, `invalid_json` (the
    parser refuses the escape) or `invalid_request` with the field."""
    user, peer, cid = chat
    u = f"s{uuid.uuid4().hex[:10]}"
    path, template = {
        "content": (f"/api/conversations/{cid}/messages", '{"content":"%s"}'),
        "client_msg_id": (f"/api/conversations/{cid}/messages",
                          '{"content":"hi","client_msg_id":"%s"}'),
        "display_name": ("/api/auth/register",
                         '{"username":"' + u + '","email":"' + u + '@example.com",'
                         '"password":"password123","display_name":"%s"}'),
        "name": ("/api/conversations",
                 '{"type":"group","member_ids":["' + peer.id + '"],"name":"%s"}'),
    }[field]
    mark = node.mark()
    r = http.post(path, content=(template % escape).encode(),
                  headers={**user.headers, "Content-Type": "application/json"})
    body = assert_error(r, 400, ("invalid_json", "invalid_request"))
    if body["code"] == "invalid_request":
        assert body.get("field") == field, body
    node.assert_healthy(mark)


def test_invalid_utf8_in_a_query_string_is_not_a_server_error(
        node: Node, http: httpx.Client, user: Account) -> None:
    """`/api/users?q=%ED%A0%80` (an encoded surrogate) or `%FF`: a 2xx/4xx JSON answer,
    never a 5xx; and a NUL (`%00`) is 400 field `q` (covered above)."""
    mark = node.mark()
    for raw in ("%ED%A0%80", "%FF", "%C3", "a%FFb"):
        r = http.get(f"/api/users?q={raw}", headers=user.headers)
        assert r.status_code < 500, (raw, r.status_code, r.text)
        r.json()
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("known", [False, True], ids=["unknown_login", "known_login"])
@pytest.mark.parametrize("password", ["é" * 72, "€" * 72, "😀" * 19, "a" * 73],
                         ids=["72x2bytes", "72x3bytes", "19x4bytes", "73ascii"])
def test_login_with_a_password_over_72_bytes_is_invalid_credentials(
        node: Node, http: httpx.Client, user: Account, known: bool, password: str) -> None:
    """bcrypt reads at most 72 bytes. A login password over 72 bytes (72 multi-byte
    characters are 144-216 bytes) can match no account, since registration refuses it:
    401 `invalid_credentials`, the same answer for an unknown and a known login (no account
    enumeration, no password rules explained to a guesser)."""
    login = user.email if known else f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    mark = node.mark()
    r = http.post("/api/auth/login", json={"email": login, "password": password})
    assert_error(r, 401, "invalid_credentials")
    node.assert_healthy(mark)


@pytest.mark.parametrize("password", ["é" * 37, "€" * 25, "a" * 73])
def test_register_with_a_password_over_72_bytes_is_invalid_request(
        node: Node, http: httpx.Client, password: str) -> None:
    """Registration counts bytes, as bcrypt does: over 72 UTF-8 bytes is 400
    `invalid_request` field `password` (docs: "8-72 bytes")."""
    u = f"p{uuid.uuid4().hex[:10]}"
    mark = node.mark()
    r = http.post("/api/auth/register", json={"username": u, "email": f"{u}@example.com",
                                              "password": password})
    assert_error(r, 400, "invalid_request", field="password")
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- OpenAPI, 405


def test_resent_client_msg_id_answers_a_status_the_openapi_document_declares(
        node: Node, http: httpx.Client, chat: tuple[Account, Account, str]) -> None:
    """A resent `client_msg_id` answers 200 with the stored message (docs/protocol.md), so
    `/api/openapi.json` must declare 200 (with the message schema) beside 201. The same
    holds for `POST /api/conversations`, which answers 200 for an existing 1:1."""
    user, peer, cid = chat
    cmid = f"resend-{uuid.uuid4().hex}"
    first = http.post(f"/api/conversations/{cid}/messages",
                      json={"content": "once", "client_msg_id": cmid}, headers=user.headers)
    again = http.post(f"/api/conversations/{cid}/messages",
                      json={"content": "once", "client_msg_id": cmid}, headers=user.headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    again_conv = http.post("/api/conversations", json={"type": "one_to_one",
                                                       "member_ids": [peer.id]},
                           headers=user.headers)
    assert again_conv.status_code == 200
    doc = http.get("/api/openapi.json").json()["paths"]
    send_op = doc["/api/conversations/{conversation_id}/messages"]["post"]["responses"]
    create_op = doc["/api/conversations"]["post"]["responses"]
    for name, responses in (("send", send_op), ("create conversation", create_op)):
        assert "200" in responses, f"{name}: 200 is answered but not declared: {list(responses)}"
        assert "content" in responses["200"], f"{name}: 200 declared without its schema"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/healthz", {"GET"}),
    ("DELETE", "/api/openapi.json", {"GET"}),
    ("PUT", "/api/users/me", {"GET"}),
    ("POST", "/api/users/me", {"GET"}),
    ("DELETE", "/api/conversations", {"GET", "POST"}),
    ("PATCH", "/api/conversations/{cid}/messages", {"GET", "POST"}),
])
def test_wrong_method_is_405_with_allow(node: Node, http: httpx.Client,
                                        chat: tuple[Account, Account, str], method: str,
                                        path: str, allowed: set[str]) -> None:
    """A known path with a method it does not serve: 405 `method_not_allowed` with an
    `Allow` header listing the methods it does serve (RFC 9110 §15.5.6). Judgement: under
    /api too — the catch-all must not turn a wrong method into 404 `no such endpoint`. HEAD
    and OPTIONS may appear in Allow."""
    user, _, cid = chat
    mark = node.mark()
    r = http.request(method, path.replace("{cid}", cid), headers=user.headers, json={})
    assert_error(r, 405, "method_not_allowed")
    assert "allow" in r.headers, dict(r.headers)
    listed = {m.strip().upper() for m in r.headers["allow"].split(",")}
    assert allowed <= listed and method not in listed, r.headers["allow"]
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- HTTP connection


EARLY_ERRORS = {
    # name: (request head without the blank line, body, early status)
    "401": (b"POST /api/conversations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json",
            b'{"type":"one_to_one","member_ids":["00000000-0000-0000-0000-000000000000"]}',
            401),
    "405": (b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Type: application/json",
            b'{"x":' + b'"a",' * 200 + b'"b":1}', 405),
    "413": (b"POST /api/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json",
            b"x" * (64 * 1024 + 1), 413),
}


BODY_LAG = 0.01  # the attack's shape: the body leaves 10 ms after the head (3 ms hangs 10/10)


@pytest.mark.parametrize("case", list(EARLY_ERRORS))
def test_keep_alive_connection_answers_after_an_early_error(sqlite_node: Node,
                                                            case: str) -> None:
    """An error answered before the request body is read (401 before the body is parsed,
    405 at routing, 413 from Content-Length) must leave the kept-alive connection usable:
    either the body is drained and the next request on the connection is answered, or the
    error carries `Connection: close` and the server closes the connection. The body follows
    the head BODY_LAG later, as from a client whose upload is a separate write; the sleep is
    that stimulus, not a wait for an event. Today the next request hangs (4/10 trials at a
    1 ms lag, 10/10 from 3 ms), so 6 trials, stopping at the first hang."""
    node = sqlite_node
    head, body, status = EARLY_ERRORS[case]
    mark = node.mark()
    for trial in range(6):
        with RawConn(node) as conn:
            conn.send(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(BODY_LAG)
            try:
                conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed after the early error: acceptable if it said so
            first = conn.response(within=5)
            assert first.status == status, (trial, first)
            assert json.loads(first.body)["error"]["code"], first
            if first.headers.get("connection", "").lower() == "close":
                conn.wait_eof(within=3)
                continue
            try:
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                second = conn.response(within=3)
            except TimeoutError:
                pytest.fail(f"trial {trial}: the request after an early {status} on the same "
                            "kept-alive connection got no answer within 3 s (and the early "
                            "answer did not say Connection: close)")
            except (ConnectionError, BrokenPipeError) as exc:
                pytest.fail(f"trial {trial}: the connection was dropped after an early "
                            f"{status} without `Connection: close` ({exc})")
            assert second.status == 200, (trial, second)
    node.assert_healthy(mark)


def _padded_head(first_lines: bytes, size: int) -> bytes:
    pad = size - len(first_lines) - len(b"X-Pad: ")
    return first_lines + b"X-Pad: " + b"a" * pad


@pytest.mark.parametrize("upgrade", [True, False], ids=["websocket_upgrade", "plain_get"])
@pytest.mark.parametrize("size", [16 * 1024, 16 * 1024 + 1, 64 * 1024])
def test_request_head_without_a_blank_line_is_closed_within_the_head_deadline(
        sqlite_node: Node, upgrade: bool, size: int) -> None:
    """A request head that reaches the head limit (16 KiB) or more without its blank line
    is never completed by a client in good faith. The connection must be closed within the
    head deadline (HEAD_TIMEOUT, 10 s) — ideally at once, with 431 `Request Header Fields
    Too Large` or 400 — and is never held open. Judgement: any 4xx (or none) before the
    close is fine; holding the socket is not."""
    node = sqlite_node
    first = (b"GET /api/ws?token=x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if upgrade else \
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
    mark = node.mark()
    started = time.monotonic()
    with RawConn(node) as conn:
        try:
            conn.send(_padded_head(first, size))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-head: closed, which is what we want
        try:
            rest = conn.wait_eof(within=HEAD_TIMEOUT + 2)
        except TimeoutError:
            pytest.fail(f"a {size}-byte head without a blank line was still held open "
                        f"after {HEAD_TIMEOUT + 2:.0f} s")
    if rest:
        status = int(rest.split(b" ", 2)[1])
        assert 400 <= status < 500, rest[:200]
    assert time.monotonic() - started <= HEAD_TIMEOUT + 2
    node.assert_healthy(mark)


# ---------------------------------------------------------------------------- WebSocket


def _ws_error(replies: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    errors = [f for f in replies if f["type"] == "error" and f.get("ref") == ref]
    assert errors, f"no error frame for ref {ref}: {replies}"
    return errors[0]["payload"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize("where", ["payload", "unknown_envelope_field", "ref"])
def test_deep_nesting_in_a_ws_frame_is_an_error_frame(node: Node, user: Account, kind: str,
                                                      where: str) -> None:
    """5,000-deep nesting in a frame: an `error` frame `invalid_json` (or `invalid_frame` /
    `invalid_payload`), never `internal`, no traceback in the log, and the socket stays
    (docs: nothing a client sends closes its socket). Sent 20 times: the log-flood shape."""
    deep = _deep(kind).decode()
    text = {
        "payload": '{"type":"ping","ref":"d","payload":{"x":' + deep + "}}",
        "unknown_envelope_field": '{"type":"ping","ref":"d","x":' + deep + ',"payload":{}}',
        "ref": '{"type":"ping","payload":{},"ref":' + deep + "}",
    }[where]
    mark = node.mark()
    with Bystanders(node) as others, WsClient(node, user.token) as ws:
        for _ in range(20):
            ws.send_text(text)
        replies = ws.roundtrip()
        errors = [f["payload"] for f in replies if f["type"] == "error"]
        assert len(errors) == 20, replies[:3]
        for e in errors:
            assert e["code"] in ("invalid_json", "invalid_frame", "invalid_payload"), e
        others.chat()
    node.assert_healthy(mark)


@pytest.mark.parametrize(("field", "value"), [
    ("content", "a\x00b"), ("client_msg_id", "a\x00b"), ("message_type", "te\x00xt"),
])
def test_nul_in_a_chat_message_frame_is_an_error_frame(node: Node, http: httpx.Client,
                                                       chat: tuple[Account, Account, str],
                                                       field: str, value: str) -> None:
    """The frame that killed a PostgreSQL node: `chat_message` with a NUL in `content` or
    `client_msg_id`. Expected: an `error` frame `invalid_request` with `field`, no ack, the
    node up, and other users still chatting."""
    user, _, cid = chat
    payload = {"conversation_id": cid, "content": "hi", "client_msg_id": None, field: value}
    mark = node.mark()
    with Bystanders(node) as others, WsClient(node, user.token) as ws:
        ws.send_frame("chat_message", payload, ref="nul")
        replies = ws.roundtrip()
        err = _ws_error(replies, "nul")
        assert err["code"] == "invalid_request" and err.get("field") == field, err
        assert not [f for f in replies if f["type"] == "message_ack"], replies
        others.chat()
    node.assert_healthy(mark)


@pytest.mark.parametrize("frame", ["read_receipt", "delivery_receipt", "sync"])
@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1], ids=["2^63", "2^64", "-2^63-1"])
def test_out_of_range_seq_in_a_frame(node: Node, chat: tuple[Account, Account, str],
                                     frame: str, value: int) -> None:
    """`up_to_seq` / a `sync` position outside int64. Negative: an `error` frame
    `invalid_request` (or `invalid_payload`). Past the end: either that error, or what the
    server does today for receipts — the mark clamped to `last_seq` (any `message_status`
    says `up_to_seq` <= last_seq) — and for `sync` an empty `sync_result`. Never `internal`,
    and other users keep chatting."""
    _, peer, cid = chat
    payload: dict[str, Any] = ({"conversation_id": cid, "up_to_seq": value}
                               if frame != "sync" else {"conversations": {cid: value}})
    mark = node.mark()
    with Bystanders(node) as others, WsClient(node, peer.token) as ws:
        last_seq = ws.ready["payload"]["conversations"][cid]["last_seq"]
        ws.send_frame(frame, payload, ref="big")
        replies = ws.roundtrip()
        mine = [f for f in replies if f.get("ref") == "big"]
        errors = [f["payload"] for f in mine if f["type"] == "error"]
        for e in errors:
            assert e["code"] in ("invalid_request", "invalid_payload"), e
        if value < 0:
            assert errors, f"no error frame for {frame} at {value}: {replies}"
        elif not errors and frame == "sync":
            assert mine and mine[0]["type"] == "sync_result", replies
            assert mine[0]["payload"]["messages"] == []
        for f in replies:
            if f["type"] == "message_status":
                assert f["payload"]["up_to_seq"] <= last_seq, f
        others.chat()
    node.assert_healthy(mark)


@pytest.mark.parametrize("declared", [16 * 64 * 1024 + 1, 2**32, 2**63 - 1],
                         ids=["1MiB+1", "2^32", "2^63-1"])
def test_frame_declaring_a_length_over_the_limit_is_closed_with_1009(sqlite_node: Node,
                                                                     user_on: Any,
                                                                     declared: int) -> None:
    """Found by test_ws_fuzz: a text frame whose header declares more than 16 x
    MAX_FRAME_BYTES (docs: "frames over 16x that close the socket with 1009") followed by
    the first bytes of its payload. The server knows from the header alone that it will
    refuse the frame: close with 1009 at once, without waiting for (or buffering) a payload
    that may never come. Today the socket is held open, silent."""
    node = sqlite_node
    mark = node.mark()
    with WsClient(node, user_on.token) as ws:
        ws.send_raw(client_frame(0x1, b'{"type":"ping"', length=declared))
        try:
            closed = ws.wait_closed(wait=3)
        except TimeoutError:
            pytest.fail(f"a frame declaring {declared} bytes left the socket open for 3 s")
        assert closed.code == 1009, closed
    node.assert_healthy(mark)


@pytest.fixture
def user_on(sqlite_node: Node) -> Account:
    with rest(sqlite_node) as http:
        return register(http)
