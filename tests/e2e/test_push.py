"""Offline push end to end: a real node, a real local push service (tests/push_service.py)
that verifies VAPID and decrypts the RFC 8291 body, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from chatsrv.config import Settings
from tests.conftest import Server, fresh_pg_database, start_server
from tests.helpers import Account, Client
from tests.push_service import Browser, PushService


def push_settings(settings: Settings, **changes: Any) -> Settings:
    base = dict(push_delay=0.3, push_poll_interval=0.1, push_allow_insecure=True,
                push_retry_delay=0.05, push_retry_max_delay=0.2, push_http_timeout=2.0)
    return dataclasses.replace(settings, **{**base, **changes})


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """This module's own database (overrides the run's shared one): every node on a database
    sends the outbox's pushes (that is how a cluster shares the work), so a node here would
    also take what other tests queued, with their push services long gone."""
    with fresh_pg_database("chatsrv_push") as dsn:
        yield dsn


@pytest.fixture
async def push_service(nursery: trio.Nursery) -> AsyncIterator[PushService]:
    service = await nursery.start(PushService().run)
    yield service
    service.release.set()
    assert not service.errors, service.errors  # every request passed VAPID and decrypted


async def node(nursery: trio.Nursery, settings: Settings, push: PushService) -> Server:
    server = await start_server(nursery, settings)
    c = server.client()
    anyone = await c.register()
    r = await c.http.get("/api/push/vapid-public-key", headers=anyone.headers)
    assert r.status_code == 200
    push.expect_key = r.json()["key"]
    await c.aclose()
    return server


async def subscribe(c: Client, who: Account, browser: Browser) -> str:
    r = await c.http.post("/api/push/subscriptions", json=browser.json(), headers=who.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def subscribed_pair(c: Client, push: PushService) -> tuple[Account, Account, str]:
    """alice and bob in a one_to_one; bob has a push subscription ("bob") and no socket."""
    alice, bob = await c.register(), await c.register()
    conv = await c.conversation(alice, bob)
    await subscribe(c, bob, push.browser("bob"))
    return alice, bob, conv


async def send(c: Client, who: Account, conversation_id: str, content: str) -> str:
    r = await c.http.post(f"/api/conversations/{conversation_id}/messages",
                          json={"content": content}, headers=who.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _pending_is(server: Server, user: Account, n: int) -> bool:
    push = server.services.push
    assert push is not None
    return await push.pending(user.id) == n


async def considered(server: Server, sending: Callable[[], Awaitable[object]]) -> None:
    """Send, then wait until the outbox writer has looked at the message (decided whom to
    push), so what the test changes next cannot race with that decision."""
    push = server.services.push
    assert push is not None
    seen = push.counts["messages"]
    await sending()

    async def past() -> bool:
        return bool(push.counts["messages"] > seen)

    await wait_until(past)


async def wait_until(check: Callable[[], Awaitable[bool]], wait: float = 10.0) -> None:
    """Until `check()` holds: a condition in the server's database (the outbox), which
    has no event to wait on."""
    with trio.fail_after(wait):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def outbox_empty(server: Server, user: Account) -> bool:
    """No push waiting for `user` (the PostgreSQL database is shared by the run's tests)."""
    return await _pending_is(server, user, 0)


@pytest.fixture
async def env(settings: Settings, aio_loop: None, nursery: trio.Nursery,
              push_service: PushService) -> AsyncIterator[tuple[Server, Client, PushService]]:
    server = await node(nursery, push_settings(settings), push_service)
    c = server.client()
    yield server, c, push_service
    await c.aclose()
    server.shutdown.set()


async def test_offline_member_gets_an_encrypted_push(env: Any) -> None:
    server, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    await subscribe(c, alice, push.browser("alice"))
    message_id = await send(c, alice, conv, "dinner at eight?")
    got = await push.next()
    assert got.name == "bob" and got.status == 201  # the sender is never pushed
    assert got.payload == {
        "type": "new_message", "conversation_id": conv, "message_id": message_id,
        "sender_id": alice.id, "sender": alice.username.title(),
        "title": alice.username.title(), "body": "dinner at eight?", "count": 1,
        "mentioned": False, "redacted": False}
    assert got.headers["topic"] == conv.replace("-", "")
    assert got.headers["urgency"] == "normal" and int(got.headers["ttl"]) > 0
    await wait_until(lambda: outbox_empty(server, bob))
    assert push.nothing_pending()


async def test_online_member_is_not_pushed(env: Any) -> None:
    server, c, push = env
    alice, bob, carol = await c.register(), await c.register(), await c.register()
    conv = await c.conversation(alice, bob, carol, name="trio")
    await subscribe(c, bob, push.browser("bob"))
    await subscribe(c, carol, push.browser("carol"))
    async with c.ws(bob) as ws:
        await send(c, alice, conv, "hello both")
        await ws.expect("new_message", conversation_id=conv)
        got = await push.next()
        assert got.name == "carol"  # offline: pushed
        await wait_until(lambda: outbox_empty(server, bob))
        assert push.nothing_pending()  # bob, online, got nothing


async def test_member_coming_online_before_the_delay_is_skipped(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(settings, push_delay=1.0), push_service)
    c = server.client()
    alice, bob, conv = await subscribed_pair(c, push_service)
    await send(c, alice, conv, "are you there?")
    push = server.services.push
    assert push is not None
    await wait_until(lambda: _pending_is(server, bob, 1))  # queued while bob is offline
    async with c.ws(bob):
        await wait_until(lambda: outbox_empty(server, bob))  # due, and skipped
    assert push.counts["skipped_online"] == 1 and push_service.nothing_pending()
    await c.aclose()
    server.shutdown.set()


async def test_muted_conversation_is_not_pushed_until_the_mute_ends(env: Any) -> None:
    server, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    r = await c.http.put(f"/api/conversations/{conv}/mute", json={"until": until.isoformat()},
                         headers=bob.headers)
    assert r.status_code == 200, r.text
    assert r.json()["muted"] is True and r.json()["until"].startswith(until.isoformat()[:19])
    r = await c.http.get("/api/push/mutes", headers=bob.headers)
    assert [m["conversation_id"] for m in r.json()["mutes"]] == [conv]
    await send(c, alice, conv, "muted one")
    await trio.sleep_until(trio.current_time() + (until - datetime.now(UTC)).total_seconds())
    second = await send(c, alice, conv, "after the mute")
    got = await push.next()
    # the muted message was never queued: the first push is the second message, alone
    assert got.payload["message_id"] == second and got.payload["count"] == 1

    # muted for good, then unmuted
    r = await c.http.put(f"/api/conversations/{conv}/mute", headers=bob.headers)
    assert r.status_code == 200 and r.json()["until"] is None
    await considered(server, lambda: send(c, alice, conv, "muted for good"))
    r = await c.http.delete(f"/api/conversations/{conv}/mute", headers=bob.headers)
    assert r.status_code == 204
    third = await send(c, alice, conv, "unmuted")
    got = await push.next()
    assert got.payload["message_id"] == third and got.payload["count"] == 1


async def test_a_mention_is_pushed_through_a_mute(env: Any) -> None:
    server, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    r = await c.http.put(f"/api/conversations/{conv}/mute", headers=bob.headers)
    assert r.status_code == 200, r.text
    await considered(server, lambda: send(c, alice, conv, "not for bob's pocket"))
    named = await send(c, alice, conv, f"@{bob.username} look at this")
    got = await push.next()
    assert got.payload["message_id"] == named and got.payload["mentioned"] is True
    assert got.headers.get("urgency") == "high"


async def test_a_blocked_senders_group_messages_are_not_pushed(env: Any) -> None:
    server, c, push = env
    alice, bob, carol = await c.register(), await c.register(), await c.register()
    group = await c.conversation(alice, bob, carol, name="three")
    await subscribe(c, bob, push.browser("bob"))
    r = await c.http.put(f"/api/users/{alice.id}/block", headers=bob.headers)
    assert r.status_code == 204, r.text
    await considered(server, lambda: send(c, alice, group, "from the blocked one"))
    from_carol = await send(c, carol, group, "from carol")
    got = await push.next()
    assert got.name == "bob" and got.payload["message_id"] == from_carol
    assert got.payload["count"] == 1  # alice's message was never queued for bob


async def test_mute_is_for_members_and_future_times(env: Any) -> None:
    _, c, _ = env
    alice, bob, eve = await c.register(), await c.register(), await c.register()
    conv = await c.conversation(alice, bob)
    r = await c.http.put(f"/api/conversations/{conv}/mute", json={}, headers=eve.headers)
    assert r.status_code == 404
    r = await c.http.put(f"/api/conversations/{conv}/mute",
                         json={"until": "2001-01-01T00:00:00Z"}, headers=bob.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "until"
    for bad in ("soon", "9999-12-31T23:59:59-05:00", 5):
        r = await c.http.put(f"/api/conversations/{conv}/mute", json={"until": bad},
                             headers=bob.headers)
        assert r.status_code == 400, (bad, r.text)
    r = await c.http.delete(f"/api/conversations/{conv}/mute", headers=eve.headers)
    assert r.status_code == 404


async def test_redacted_push_says_new_message(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(settings, push_redact_content=True),
                        push_service)
    c = server.client()
    alice, bob, conv = await subscribed_pair(c, push_service)
    await send(c, alice, conv, "the vault code is kiwi-quokka")
    got = await push_service.next()
    assert got.payload is not None and got.payload["body"] == "New message"
    assert "kiwi-quokka" not in repr(got.payload) and got.payload["redacted"] is True
    await c.aclose()
    server.shutdown.set()


async def test_pushes_collapse_per_conversation(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(settings, push_delay=1.0), push_service)
    c = server.client()
    alice, bob, conv = await subscribed_pair(c, push_service)
    for text in ("one", "two", "three"):
        last = await send(c, alice, conv, text)
    got = await push_service.next()
    assert got.payload is not None
    assert (got.payload["count"], got.payload["message_id"]) == (3, last)
    assert got.payload["body"] == "3 new messages · three"
    await wait_until(lambda: outbox_empty(server, bob))
    assert push_service.nothing_pending()  # one push for three messages
    await c.aclose()
    server.shutdown.set()


async def test_gone_subscription_is_deleted(env: Any) -> None:
    server, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    push.script["bob"].append(410)
    await send(c, alice, conv, "anyone?")
    assert (await push.next()).status == 410

    async def gone() -> bool:
        r = await c.http.get("/api/push/subscriptions", headers=bob.headers)
        return bool(r.json()["subscriptions"] == [])

    await wait_until(gone)
    await wait_until(lambda: outbox_empty(server, bob))


async def test_failed_push_is_retried_until_taken(env: Any) -> None:
    _, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    push.script["bob"].extend([500, (429, {"Retry-After": "0"}), 503])
    message_id = await send(c, alice, conv, "persistent")
    statuses = [(await push.next()).status for _ in range(4)]
    assert statuses == [500, 429, 503, 201]
    assert push.nothing_pending()
    del message_id


async def test_push_gives_up_after_max_attempts(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(settings, push_max_attempts=2), push_service)
    c = server.client()
    alice, bob, conv = await subscribed_pair(c, push_service)
    push_service.script["bob"].extend([500, 500, 500])
    await send(c, alice, conv, "doomed")
    assert [(await push_service.next()).status for _ in range(2)] == [500, 500]
    await wait_until(lambda: outbox_empty(server, bob))
    push = server.services.push
    assert push is not None and push.counts["given_up"] >= 1
    assert push_service.nothing_pending()  # no third attempt
    await c.aclose()
    server.shutdown.set()


async def test_outbox_survives_a_restart(settings: Settings, aio_loop: None,
                                          push_service: PushService) -> None:
    # a delay long enough that the node is stopped before the push is due
    s = push_settings(settings, push_delay=1.5)
    async with trio.open_nursery() as first:
        server = await node(first, s, push_service)
        c = server.client()
        alice, bob = await c.register(), await c.register()
        conv = await c.conversation(alice, bob)
        await subscribe(c, bob, push_service.browser("bob"))
        message_id = await send(c, alice, conv, "survive this")
        await wait_until(lambda: _pending_is(server, bob, 1))
        await c.aclose()
        server.shutdown.set()
    assert push_service.nothing_pending()  # stopped before it was sent
    async with trio.open_nursery() as second:
        again = await node(second, s, push_service)
        got = await push_service.next()
        assert got.name == "bob" and got.payload is not None
        assert got.payload["message_id"] == message_id
        again.shutdown.set()


async def test_webhook_gets_each_push_as_json(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(
        settings, push_webhook_url=f"{push_service.url}/webhook"), push_service)
    c = server.client()
    alice, bob = await c.register(), await c.register()
    conv = await c.conversation(alice, bob)
    message_id = await send(c, alice, conv, "to the gateway")
    got = await push_service.next()
    assert got.name == "webhook" and got.payload is not None
    assert {k: got.payload[k] for k in ("user_id", "conversation_id", "message_id", "sender",
                                         "body", "count", "mentions")} == {
        "user_id": bob.id, "conversation_id": conv, "message_id": message_id,
        "sender": alice.username.title(), "body": "to the gateway", "count": 1,
        "mentions": []}
    await c.aclose()
    server.shutdown.set()


async def test_hanging_push_service_blocks_nothing(
        settings: Settings, aio_loop: None, nursery: trio.Nursery,
        push_service: PushService) -> None:
    server = await node(nursery, push_settings(settings, push_http_timeout=1.0),
                        push_service)
    c = server.client()
    alice, bob, carol = await c.register(), await c.register(), await c.register()
    conv = await c.conversation(alice, bob, carol, name="g")
    await subscribe(c, bob, push_service.browser("bob"))
    await subscribe(c, carol, push_service.browser("carol"))
    push_service.hang.add("bob")
    await send(c, alice, conv, "first")
    arrived = {(await push_service.next()).name for _ in range(2)}
    assert arrived == {"bob", "carol"}  # bob's request hangs; carol's went through
    with trio.fail_after(1.0):  # sends are not held up by the hanging push service
        await send(c, alice, conv, "meanwhile")
    # bob's request ran into PUSH_HTTP_TIMEOUT and is retried
    push_service.hang.discard("bob")
    names = [(await push_service.next(wait=10)).name for _ in range(2)]
    assert sorted(names) == ["bob", "carol"]
    await c.aclose()
    server.shutdown.set()


async def test_subscription_rules(env: Any) -> None:
    _, c, push = env
    alice, bob = await c.register(), await c.register()
    browser = push.browser("alice")
    first = await subscribe(c, alice, browser)
    r = await c.http.post("/api/push/subscriptions", json=browser.json(), headers=alice.headers)
    assert r.status_code == 200 and r.json()["id"] == first  # same endpoint: same one
    r = await c.http.get("/api/push/subscriptions", headers=alice.headers)
    assert [s["id"] for s in r.json()["subscriptions"]] == [first]
    bad = browser.json()
    for field, value in (("endpoint", "http://push.example.com/x"),
                         ("endpoint", "https://10.1.2.3/push"), ("endpoint", "https://[fe80::1]/x"),
                         ("endpoint", "https://user:pw@push.example.com/x"),
                         ("endpoint", "ftp://127.0.0.1/x"), ("p256dh", "AAAA"),
                         ("auth", "AAAA"), ("p256dh", "B" + "A" * 86)):
        body = {**bad, "keys": dict(bad["keys"])}
        if field == "endpoint":
            body["endpoint"] = value
        else:
            body["keys"][field] = value
        r = await c.http.post("/api/push/subscriptions", json=body, headers=alice.headers)
        assert r.status_code == 400, (field, value, r.text)
    r = await c.http.delete(f"/api/push/subscriptions/{first}", headers=bob.headers)
    assert r.status_code == 404  # not bob's
    r = await c.http.delete(f"/api/push/subscriptions/{first}", headers=alice.headers)
    assert r.status_code == 204
    r = await c.http.delete(f"/api/push/subscriptions/{first}", headers=alice.headers)
    assert r.status_code == 404
    r = await c.http.get("/api/push/vapid-public-key")
    assert r.status_code == 401


async def test_service_worker_is_served_at_the_root(env: Any) -> None:
    _, c, _ = env
    r = await c.http.get("/sw.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert r.headers["service-worker-allowed"] == "/"
    assert 'addEventListener("push"' in r.text and "showNotification" in r.text


async def test_a_signed_out_device_gets_no_pushes_until_it_subscribes_again(env: Any) -> None:
    server, c, push = env
    alice, bob, conv = await subscribed_pair(c, push)
    r = await c.http.post("/api/auth/logout", headers=bob.headers)
    assert r.status_code == 204
    await considered(server, lambda: send(c, alice, conv, "after the logout"))
    r = await c.http.post("/api/auth/login", json={"email": bob.email, "password": bob.password})
    assert r.status_code == 200
    again = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await c.http.post("/api/push/subscriptions", json=push.browsers["bob"].json(),
                          headers=again)
    assert r.status_code == 200  # the same endpoint: the same subscription, new session
    second = await send(c, alice, conv, "signed in again")
    got = await push.next()
    assert got.payload["message_id"] == second and got.payload["count"] == 1
