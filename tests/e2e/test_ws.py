"""The WebSocket protocol end to end: real Hypercorn, real sockets, SQLite and PostgreSQL."""

from __future__ import annotations

import collections
import dataclasses
import json
import uuid

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from chatsrv.config import Settings
from tests.conftest import Server, start_server
from tests.helpers import Account, Client, pair


async def test_ready_lists_conversations_with_last_seq_and_unread(client: Client) -> None:
    a, b, cid = await pair(client)
    await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                           json={"content": "while you were away"})
    async with client.ws(b) as ws:
        ready = ws.ready  # type: ignore[attr-defined]
        p = ready["payload"]
        assert p["user_id"] == b.id and p["session_id"] and p["heartbeat_interval"] > 0
        assert p["conversations"][cid]["last_seq"] == 1
        assert p["conversations"][cid]["unread"] == 1


async def test_one_to_one_delivery_ack_and_idempotent_resend(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        # the seed's frame, verbatim (no ref, no client_msg_id)
        await wa.send("chat_message", {"conversation_id": cid, "content": "Hello!",
                                       "message_type": "text"})
        ack = await wa.expect("message_ack")
        got = await wb.expect("new_message")
        assert got["payload"]["id"] == ack["payload"]["id"]
        assert got["payload"]["content"] == "Hello!" and got["payload"]["client_msg_id"] is None
        for field in ("id", "conversation_id", "sender_id", "content", "message_type",
                      "created_at", "seq"):
            assert field in got["payload"]
        assert got["payload"]["sender_id"] == a.id and got["payload"]["seq"] == 1

        first = await wa.request("chat_message", {"conversation_id": cid, "content": "once",
                                                  "client_msg_id": "cm-1"}, "message_ack")
        again = await wa.request("chat_message", {"conversation_id": cid, "content": "once",
                                                  "client_msg_id": "cm-1"}, "message_ack")
        assert first["type"] == again["type"] == "message_ack"
        assert first["payload"]["id"] == again["payload"]["id"]
        assert first["payload"]["client_msg_id"] == "cm-1" and again["payload"]["duplicate"]
        await wb.expect("new_message", content="once")
        await wb.none("new_message", content="once")  # the resend was not fanned out again
    # the ack came after the commit: the message is in history
    page = (await client.http.get(f"/api/conversations/{cid}/messages",
                                  headers=b.headers)).json()
    assert [m["content"] for m in page["messages"]] == ["Hello!", "once"]


async def test_group_delivery_and_multi_device(client: Client) -> None:
    a, b, c = [await client.register() for _ in range(3)]
    cid = await client.conversation(a, b, c, name="trio")
    async with client.ws(a) as a1, client.ws(a) as a2, client.ws(b) as wb, client.ws(c) as wc:
        await a1.request("chat_message", {"conversation_id": cid, "content": "to all"},
                         "message_ack")
        for ws in (a2, wb, wc):  # the sender's other device too
            await ws.expect("new_message", content="to all")
        await a1.none("new_message")  # not echoed to the sending device


async def test_receipts_reach_the_sender(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "tick"},
                               "message_ack")
        mid = ack["payload"]["id"]
        await wb.expect("new_message")
        await wb.send("delivery_receipt", {"message_id": mid})
        st = await wa.expect("message_status", status="delivered")
        assert st["payload"] == st["payload"] | {"conversation_id": cid, "message_id": mid,
                                                 "user_id": b.id, "up_to_seq": 1}
        await wb.send("read_receipt", {"conversation_id": cid, "up_to_seq": 1})
        st = await wa.expect("message_status", status="read")
        assert st["payload"]["message_id"] == mid and st["payload"]["user_id"] == b.id
        # a repeated receipt does not move anything, so nothing is sent
        await wb.send("read_receipt", {"message_id": mid})
        await wb.settle()  # the repeated receipt was handled
        await wa.none("message_status")


async def test_typing_arrives_and_expires(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        await wa.send("typing", {"conversation_id": cid, "is_typing": True})
        t = await wb.expect("typing", is_typing=True)
        assert t["payload"] == {"conversation_id": cid, "user_id": a.id, "is_typing": True}
        # typing_ttl is 1 s in tests: it stops on its own
        with trio.fail_after(3):
            await wb.expect("typing", is_typing=False)
        await wa.send("typing", {"conversation_id": cid, "is_typing": True})
        await wb.expect("typing", is_typing=True)
        await wa.send("typing", {"conversation_id": cid, "is_typing": False})
        await wb.expect("typing", is_typing=False)


async def test_typing_ends_when_the_connection_closes(settings: Settings, aio_loop: None,
                                                      nursery: trio.Nursery) -> None:
    # a typing state that would live a minute: only the closed socket can end it
    server = await start_server(nursery, dataclasses.replace(settings, typing_ttl=60.0))
    client = server.client()
    a, b, cid = await pair(client)
    async with client.ws(b) as wb:
        async with client.ws(a) as wa:
            await wa.send("typing", {"conversation_id": cid, "is_typing": True})
            await wb.expect("typing", is_typing=True)
        await wb.expect("typing", is_typing=False)
    await client.aclose()
    server.shutdown.set()


async def test_presence_online_offline_with_last_seen(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(b) as wb:
        async with client.ws(a) as a1:
            await wb.expect("presence_update", user_id=a.id, status="online")
            r = await client.http.get(f"/api/users/{a.id}", headers=b.headers)
            assert r.json()["status"] == "online"
            async with client.ws(a):
                pass  # a second device coming and going changes nothing (the grace rule:
            assert not a1.closed  # tests/unit/test_services.py)
        off = await wb.expect("presence_update", user_id=a.id, status="offline")
        assert off["payload"]["last_seen"] and off["payload"]["timestamp"]
    r = await client.http.get(f"/api/users/{a.id}", headers=b.headers)
    assert r.json()["status"] == "offline" and r.json()["last_seen"]


async def test_reconnect_and_sync_returns_exactly_the_missed_messages(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa:
        async with client.ws(b) as wb:
            for i in range(3):
                await wa.request("chat_message", {"conversation_id": cid, "content": f"m{i}"},
                                 "message_ack")
            for i in range(3):
                await wb.expect("new_message", content=f"m{i}")
        for i in range(3, 8):  # b is away
            await wa.request("chat_message", {"conversation_id": cid, "content": f"m{i}"},
                             "message_ack")
    async with client.ws(b) as wb:
        assert wb.ready["payload"]["conversations"][cid]["last_seq"] == 8  # type: ignore[attr-defined]
        res = await wb.request("sync", {"conversations": {cid: 3}}, "sync_result")
        assert res["type"] == "sync_result"
        assert [m["seq"] for m in res["payload"]["messages"]] == [4, 5, 6, 7, 8]
        assert [m["content"] for m in res["payload"]["messages"]] == [f"m{i}" for i in range(3, 8)]
        assert res["payload"]["has_more"] is False
        assert res["payload"]["watermarks"][cid][a.id] == {"delivered_seq": 8, "read_seq": 8}


async def test_sync_without_map_starts_at_the_delivered_watermark_and_pages(
        server: Server, client: Client) -> None:
    a, b, cid = await pair(client)
    for i in range(5):
        await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                               json={"content": f"m{i}"})
    await client.http.post(f"/api/conversations/{cid}/read", headers=b.headers,
                           json={"up_to_seq": 2, "status": "delivered"})
    async with client.ws(b, query="&since=auto") as wb:
        res = await wb.expect("sync_result")
        assert [m["seq"] for m in res["payload"]["messages"]] == [3, 4, 5]


async def test_sync_pages_with_has_more(client: Client, server: Server) -> None:
    a, b, cid = await pair(client)
    n = server.settings.sync_page_size + 5
    async with client.ws(a) as wa:
        for i in range(n):
            await wa.send("chat_message", {"conversation_id": cid, "content": f"m{i}"})
        for _ in range(n):
            await wa.expect("message_ack")
    async with client.ws(b) as wb:
        seen: list[int] = []
        last = 0
        while True:
            res = await wb.request("sync", {"conversations": {cid: last}}, "sync_result")
            seen += [m["seq"] for m in res["payload"]["messages"]]
            last = seen[-1]
            if not res["payload"]["has_more"]:
                break
        assert seen == list(range(1, n + 1))


async def test_outsider_gets_error_frames_and_keeps_the_connection(client: Client) -> None:
    a, b, cid = await pair(client)
    outsider = await client.register()
    async with client.ws(outsider) as wo:
        for type_, payload in [
            ("chat_message", {"conversation_id": cid, "content": "let me in"}),
            ("typing", {"conversation_id": cid, "is_typing": True}),
            ("read_receipt", {"conversation_id": cid, "up_to_seq": 1}),
            ("sync", {"conversations": {cid: 0}}),
        ]:
            err = await wo.request(type_, payload, "never")
            assert err["type"] == "error" and err["payload"]["code"] == "not_found", err
        pong = await wo.request("ping", {}, "pong")
        assert pong["type"] == "pong" and not wo.closed


BAD_FRAMES = [
    ("{oops", "invalid_json"),
    ('"just a string"', "invalid_frame"),
    ('{"payload": {}}', "invalid_frame"),
    ('{"type": "teleport", "payload": {}}', "unknown_type"),
    ('{"type": "chat_message", "payload": {"content": "no conversation"}}', "invalid_payload"),
    ('{"type": "chat_message", "payload": {"conversation_id": 42, "content": "x"}}',
     "invalid_payload"),
    ('{"type": "chat_message", "payload": {"conversation_id": "nope", "content": "x"}}',
     "invalid_request"),
    ('{"type": "typing", "payload": {"conversation_id": "nope"}}', "invalid_request"),
    ('{"type": "read_receipt", "payload": {}}', "invalid_request"),
    ('{"type": "read_receipt", "payload": {"message_id": "6f1c2f6e-9a63-4a1c-9a1e-4d2a0c1b7e11"}}',
     "not_found"),
    ('{"type": "sync", "payload": {"conversations": {"x": "y"}}}', "invalid_payload"),
]


async def test_bad_frames_get_error_frames_and_the_connection_stays(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa:
        for raw, code in BAD_FRAMES:
            await wa.send_raw(raw)
            err = await wa.expect("error")
            assert err["payload"]["code"] == code, (raw, err)
        # ref is echoed when it could be read
        await wa.send("chat_message", {"conversation_id": cid, "content": ""}, ref="r-9")
        err = await wa.expect("error")
        assert err["ref"] == "r-9" and err["payload"]["ref"] == "r-9"
        # content over the limit, frames over the cap
        await wa.send("chat_message", {"conversation_id": cid, "content": "x" * 5000}, ref="big")
        assert (await wa.expect("error"))["payload"]["code"] == "content_too_long"
        await wa.send_raw(json.dumps({"type": "ping", "payload": {"pad": "x" * 70_000}}))
        assert (await wa.expect("error"))["payload"]["code"] == "frame_too_large"
        ack = await wa.request("chat_message", {"conversation_id": cid, "content": "still here"},
                               "message_ack")
        assert ack["type"] == "message_ack"


async def test_rate_limit_answers_rate_limited_with_retry_after(server: Server) -> None:
    from dataclasses import replace

    from tests.conftest import start_server

    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, replace(server.settings, rate_per_second=1.0,
                                                  rate_burst=3.0))
        client = srv.client()
        a = await client.register()
        async with client.ws(a) as wa:
            for _ in range(5):
                await wa.send("ping", {})
            err = await wa.expect("error", code="rate_limited")
            assert err["payload"]["retry_after"] > 0
            assert not wa.closed
        await client.aclose()
        srv.shutdown.set()


async def test_bad_tokens_are_refused_at_the_handshake(server: Server, client: Client) -> None:
    for query in ("", "?token=", "?token=not.a.jwt", "?token=" + "x" * 40):
        with pytest.raises(ConnectionRejected) as exc:
            async with open_websocket_url(server.ws_url + query):
                pass
        assert exc.value.status_code == 401
        assert b"error" in (exc.value.body or b"")


async def test_token_as_subprotocol_for_browsers(server: Server, client: Client) -> None:
    a = await client.register()
    async with open_websocket_url(server.ws_url, subprotocols=["chatsrv", f"bearer.{a.token}"]) as ws:
        ready = json.loads(await ws.get_message())
        assert ready["type"] == "ready" and ws.subprotocol == "chatsrv"


async def test_slow_consumer_is_evicted_with_1013_and_publisher_keeps_going(
        server: Server) -> None:
    from dataclasses import replace

    from tests.conftest import start_server

    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, replace(server.settings, outbox_size=8))
        client = srv.client()
        a, b, cid = await pair(client)
        async with client.ws(a) as wa:
            url = f"{srv.ws_url}?token={b.token}"
            async with open_websocket_url(url, message_queue_size=1) as slow:
                # b never reads: its socket buffers fill, then its outbox, then it is cut
                for i in range(400):
                    await wa.send("chat_message", {"conversation_id": cid,
                                                   "content": f"{i} " + "y" * 2000})
                for _ in range(400):
                    await wa.expect("message_ack", wait=20)
                with trio.fail_after(10):
                    try:
                        while True:
                            await slow.get_message()
                    except ConnectionClosed as exc:
                        assert exc.reason.code == 1013
        await client.aclose()
        srv.shutdown.set()


async def test_graceful_shutdown_closes_sockets_with_1001(server: Server) -> None:
    from tests.conftest import start_server

    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, server.settings)
        client = srv.client()
        a = await client.register()
        async with client.ws(a) as wa:
            srv.shutdown.set()
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as exc:
                while True:
                    await wa.conn.get_message()
            assert exc.value.reason.code == 1001
        await client.aclose()


async def test_connect_disconnect_cycles_leave_no_tasks_or_router_entries(
        server: Server, client: Client) -> None:
    a, b, cid = await pair(client)

    def task_names() -> list[str]:
        root = trio.lowlevel.current_root_task()
        stack, names = [root], []
        while stack:
            t = stack.pop()
            names.append(t.name)
            for nursery in t.child_nurseries:
                stack.extend(nursery.child_tasks)
        return names

    def task_count() -> int:
        """Tasks but trio-asyncio's one per asyncio socket: those are the PostgreSQL pool's
        connections, which it opens on demand up to DB_POOL_SIZE (a pool that grew during
        the cycles is not a leak; counted apart below)."""
        return sum(not name.endswith("._io_task") for name in task_names())

    def io_tasks() -> int:
        return sum(name.endswith("._io_task") for name in task_names())

    async with client.ws(b) as wb:
        await wb.request("ping", {}, "pong")
        baseline, baseline_io = task_count(), io_tasks()
        for i in range(200):
            conn = await trio.open_tcp_stream("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            if i % 2:
                # abrupt: a handshake, then the TCP connection simply dies
                key = "dGhlIHNhbXBsZSBub25jZQ=="
                await conn.send_all((
                    f"GET /api/ws?token={a.token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
                with trio.fail_after(5):
                    await conn.receive_some(4096)
                await conn.aclose()
            else:
                await conn.aclose()
                async with client.ws(a) as wa:
                    await wa.send("typing", {"conversation_id": cid, "is_typing": True})
        router = server_router(server)
        with trio.move_on_after(10):
            # polling is the point: nothing signals "all tasks are gone"
            while not (task_count() <= baseline and router.connection_count() == 1):  # noqa: ASYNC110
                await trio.sleep(0.2)
        assert (task_count(), router.connection_count()) == (baseline, 1), \
            collections.Counter(task_names())
        assert io_tasks() <= baseline_io + server.settings.db_pool_size
        assert router.local(a.id) == ()


def server_router(server: Server):  # type: ignore[no-untyped-def]
    return server.services.router


async def test_message_survives_a_restart(server: Server) -> None:
    from tests.conftest import start_server

    settings = server.settings
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, settings)
        client = srv.client()
        a, b, cid = await pair(client)
        async with client.ws(a) as wa:
            ack = await wa.request("chat_message", {"conversation_id": cid, "content": "durable",
                                                    "client_msg_id": str(uuid.uuid4())},
                                   "message_ack")
        srv.shutdown.set()
        await client.aclose()
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, settings)
        client = srv.client()
        async with client.ws(b) as wb:
            res = await wb.request("sync", {"conversations": {cid: 0}}, "sync_result")
            assert [m["id"] for m in res["payload"]["messages"]] == [ack["payload"]["id"]]
        await client.aclose()
        srv.shutdown.set()


async def test_live_messages_arrive_in_seq_order_with_concurrent_senders(
        client: Client) -> None:
    senders = [await client.register() for _ in range(4)]
    reader = await client.register()
    cid = await client.conversation(senders[0], *senders[1:], reader, name="busy")
    per_sender = 25
    async with client.ws(reader) as wr:
        async with trio.open_nursery() as nursery:
            async def blast(who: Account) -> None:
                async with client.ws(who) as ws:
                    for i in range(per_sender):
                        await ws.send("chat_message", {"conversation_id": cid,
                                                       "content": f"{who.username} {i}"})
                    for _ in range(per_sender):
                        await ws.expect("message_ack")

            for who in senders:
                nursery.start_soon(blast, who)
            seqs = [(await wr.expect("new_message"))["payload"]["seq"]
                    for _ in range(per_sender * len(senders))]
    assert seqs == sorted(seqs) == list(range(1, per_sender * len(senders) + 1))


async def test_pipelined_messages_are_acked_in_send_order_and_other_frames_wait(
        client: Client) -> None:
    """A connection's chat_messages commit without waiting for each other, but their acks
    (and errors) come back in the order sent, and a later frame of another type is answered
    after all of them."""
    a, b = await client.register(), await client.register()
    c = await client.register()
    cids = [await client.conversation(a, b), await client.conversation(a, c)]
    async with client.ws(a) as wa:
        for i in range(40):
            content = "" if i == 17 else f"m{i}"  # one refused in the middle
            await wa.send("chat_message", {"conversation_id": cids[i % 2], "content": content},
                          ref=f"r{i}")
        await wa.send("ping", {}, ref="last")
        answers = []
        while True:
            frame = await wa.recv()
            if frame["type"] in ("message_ack", "error", "pong"):
                answers.append(frame)
                if frame["type"] == "pong":
                    break
    assert [f["ref"] for f in answers] == [f"r{i}" for i in range(40)] + ["last"]
    assert answers[17]["type"] == "error" and answers[17]["payload"]["code"] == "invalid_request"
    for cid in cids:  # seq follows send order within each conversation
        seqs = [f["payload"]["seq"] for f in answers
                if f["type"] == "message_ack" and f["payload"]["conversation_id"] == cid]
        assert seqs == list(range(1, len(seqs) + 1))


async def _send_metrics(client: Client) -> dict[str, float]:
    """chatsrv_send_stage_seconds and chatsrv_send_to_ack_seconds, as sample -> value."""
    text = (await client.http.get("/metrics")).text
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text)
            if family.name in ("chatsrv_send_stage_seconds", "chatsrv_send_to_ack_seconds")
            for s in family.samples if not s.name.endswith("_bucket")}


async def test_metrics_break_each_send_into_stages_that_add_up(client: Client) -> None:
    a, b, cid = await pair(client)
    before = await _send_metrics(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        for i in range(3):
            await wa.request("chat_message", {"conversation_id": cid, "content": f"m{i}",
                                              "client_msg_id": "same" if i else "first"},
                             "message_ack")  # the third is a resend: stored before, acked
        await wb.expect("new_message", content="m1")
    after = await _send_metrics(client)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    stages = ("accept", "queue", "commit", "fanout", "ack")
    for stage in stages:
        assert delta[f"chatsrv_send_stage_seconds_count[('stage', '{stage}')]"] == 3
        assert delta[f"chatsrv_send_stage_seconds_sum[('stage', '{stage}')]"] >= 0
    assert delta["chatsrv_send_stage_seconds_sum[('stage', 'commit')]"] > 0
    # the stages are consecutive: together they are the whole send -> ack
    total = sum(delta[f"chatsrv_send_stage_seconds_sum[('stage', '{s}')]"] for s in stages)
    assert total == pytest.approx(delta["chatsrv_send_to_ack_seconds_sum[]"], rel=1e-6)
