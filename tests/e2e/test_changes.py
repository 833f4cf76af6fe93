"""Message changes end to end (issue 14): edit, delete, reactions, replies, mentions and
catching up on changes after being offline — real server, real sockets, both backends."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from urllib.parse import quote

import trio

from chatsrv.config import Settings
from tests.conftest import Server, start_server
from tests.helpers import Account, Client, Ws, pair


async def say(ws: Ws, conversation_id: str, content: str, **extra: Any) -> dict[str, Any]:
    ack = await ws.request("chat_message", {"conversation_id": conversation_id,
                                            "content": content, **extra}, "message_ack")
    assert ack["type"] == "message_ack", ack
    return ack["payload"]  # type: ignore[no-any-return]


async def history(client: Client, who: Account, conversation_id: str) -> list[dict[str, Any]]:
    r = await client.http.get(f"/api/conversations/{conversation_id}/messages",
                              headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()["messages"]  # type: ignore[no-any-return]


def error_code(frame: dict[str, Any]) -> str:
    assert frame["type"] == "error", frame
    return frame["payload"]["code"]  # type: ignore[no-any-return]


async def group(client: Client, owner: Account, *others: Account) -> str:
    return await client.conversation(owner, *others, name="team")


async def test_an_edit_reaches_every_device_and_shows_in_history(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(a) as wa2, client.ws(b) as wb:
        sent = await say(wa, cid, "helo")
        await wb.expect("new_message", id=sent["id"])
        reply = await wa.request("edit_message", {"message_id": sent["id"],
                                                  "content": "hello"}, "message_edited")
        assert reply["type"] == "message_edited"  # the acting device: the frame, its ref
        edited = reply["payload"]
        assert edited == edited | {"message_id": sent["id"], "conversation_id": cid,
                                   "seq": sent["seq"], "content": "hello", "mentions": []}
        assert edited["edited_at"]
        assert (await wb.expect("message_edited", message_id=sent["id"]))["payload"] == edited
        assert (await wa2.expect("message_edited"))["payload"] == edited
        await wa.none("message_edited")  # once, with the ref, not also as a fan-out copy
        await wb.none("new_message")  # a change is not a new message
    [m] = await history(client, b, cid)
    assert m == m | {"content": "hello", "edited_at": edited["edited_at"], "deleted": False,
                     "seq": 1, "reply_to": None, "mentions": [], "reactions": {}}
    r = await client.http.get(f"/api/conversations/{cid}", headers=b.headers)
    assert (r.json()["last_seq"], r.json()["unread"]) == (1, 1)  # seq and unread unchanged


async def test_edit_refusals(client: Client) -> None:
    a, b, cid = await pair(client)
    outsider = await client.register()
    async with client.ws(a) as wa, client.ws(b) as wb, client.ws(outsider) as wo:
        sent = await say(wa, cid, "mine")
        mid = sent["id"]
        edit = {"message_id": mid, "content": "theirs now"}
        assert error_code(await wb.request("edit_message", edit, "message_edited")) == "forbidden"
        assert error_code(await wo.request("edit_message", edit, "message_edited")) == "not_found"
        for type_, payload in (("delete_message", {"message_id": mid}),
                               ("reaction", {"message_id": mid, "emoji": "👍"})):
            assert error_code(await wo.request(type_, payload, "x")) == "not_found"
        for content, code in (("   ", "invalid_request"), ("x" * 4001, "content_too_long")):
            frame = await wa.request("edit_message", {"message_id": mid, "content": content},
                                     "message_edited")
            assert error_code(frame) == code
        assert error_code(await wa.request("edit_message", {"message_id": "nope",
                                                            "content": "x"}, "x")) \
            == "invalid_request"
        assert error_code(await wa.request("edit_message", {"message_id": str(uuid.uuid4()),
                                                            "content": "x"}, "x")) == "not_found"
        await wa.request("delete_message", {"message_id": mid}, "message_deleted")
        assert error_code(await wa.request("edit_message", edit, "message_edited")) \
            == "already_deleted"
        await wb.none("message_edited")
        await wo.none("message_deleted")  # outsiders hear nothing
        assert (await wa.request("ping", {}, "pong"))["type"] == "pong"  # socket still fine
    [m] = await history(client, a, cid)
    assert (m["content"], m["deleted"], m["edited_at"]) == ("", True, None)


async def test_rest_paths_and_outsiders_refused_everywhere(client: Client) -> None:
    a, b, cid = await pair(client)
    outsider = await client.register()
    async with client.ws(b) as wb:
        r = await client.http.post(f"/api/conversations/{cid}/messages",
                                   json={"content": "typo"}, headers=a.headers)
        mid = r.json()["id"]
        base = f"/api/messages/{mid}"
        thumbs = f"{base}/reactions/{quote('👍')}"
        for method, path, body in (("PATCH", base, {"content": "x"}), ("DELETE", base, None),
                                   ("PUT", thumbs, None), ("DELETE", thumbs, None)):
            r = await client.http.request(method, path, json=body, headers=outsider.headers)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
        r = await client.http.patch(base, json={"content": "x"}, headers=b.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await client.http.delete(base, headers=b.headers)  # 1:1: not the sender's
        assert r.status_code == 403
        r = await client.http.patch(base, json={"content": ""}, headers=a.headers)
        assert r.status_code == 400

        r = await client.http.patch(base, json={"content": "fixed"}, headers=a.headers)
        assert r.status_code == 200 and r.json()["content"] == "fixed" and r.json()["edited_at"]
        assert (await wb.expect("message_edited"))["payload"]["content"] == "fixed"

        r = await client.http.put(thumbs, headers=b.headers)
        assert r.status_code == 200
        assert r.json() == r.json() | {"message_id": mid, "user_id": b.id, "emoji": "👍",
                                       "add": True, "counts": {"👍": 1}}
        assert (await wb.expect("reaction_update"))["payload"] == r.json()
        assert (await client.http.put(thumbs, headers=b.headers)).json()["counts"] == {"👍": 1}
        [m] = await history(client, b, cid)
        assert m["reactions"] == {"👍": {"count": 1, "me": True}}
        [m] = await history(client, a, cid)
        assert m["reactions"] == {"👍": {"count": 1, "me": False}}
        r = await client.http.get("/api/conversations", headers=b.headers)
        [conv] = r.json()["conversations"]
        assert conv["last_message"]["reactions"] == {"👍": {"count": 1, "me": True}}
        r = await client.http.get(f"/api/conversations/{cid}", headers=a.headers)
        assert r.json()["last_message"]["reactions"] == {"👍": {"count": 1, "me": False}}
        r = await client.http.delete(thumbs, headers=b.headers)
        assert r.status_code == 200 and r.json()["counts"] == {} and r.json()["add"] is False
        r = await client.http.put(f"{base}/reactions/{quote('not one')}", headers=b.headers)
        assert (r.status_code, r.json()["error"]["field"]) == (400, "emoji")

        r = await client.http.delete(base, headers=a.headers)
        assert r.status_code == 200
        assert r.json() | {"content": "", "deleted": True, "reactions": {}} == r.json()
        deleted = (await wb.expect("message_deleted"))["payload"]
        assert deleted == deleted | {"message_id": mid, "conversation_id": cid, "seq": 1,
                                     "deleted_by": a.id}
        assert (await client.http.delete(base, headers=a.headers)).status_code == 200
        await wb.none("message_deleted")  # deleting again changes nothing
        r = await client.http.put(thumbs, headers=b.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "already_deleted")
        r = await client.http.patch(base, json={"content": "back"}, headers=a.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "already_deleted")
    r = await client.http.get("/api/openapi.json")
    paths = r.json()["paths"]
    assert {"patch", "delete"} <= set(paths["/api/messages/{message_id}"])
    assert {"put", "delete"} <= set(paths["/api/messages/{message_id}/reactions/{emoji}"])


async def test_group_admins_delete_anyones_members_only_their_own(client: Client) -> None:
    admin, b, c = await client.register(), await client.register(), await client.register()
    cid = await group(client, admin, b, c)
    async with client.ws(admin) as wadmin, client.ws(b) as wb, client.ws(c) as wc:
        by_b = await say(wb, cid, "from b")
        by_admin = await say(wadmin, cid, "from admin")
        frame = await wc.request("delete_message", {"message_id": by_b["id"]},
                                 "message_deleted")
        assert error_code(frame) == "forbidden"
        frame = await wb.request("delete_message", {"message_id": by_admin["id"]},
                                 "message_deleted")
        assert error_code(frame) == "forbidden"
        frame = await wadmin.request("delete_message", {"message_id": by_b["id"]},
                                     "message_deleted")
        assert frame["type"] == "message_deleted"
        assert frame["payload"]["deleted_by"] == admin.id
        for ws in (wb, wc):
            got = await ws.expect("message_deleted", message_id=by_b["id"])
            assert got["payload"] == frame["payload"]
        # an edit by the sender of a message an admin deleted: refused
        frame = await wb.request("edit_message", {"message_id": by_b["id"], "content": "x"},
                                 "message_edited")
        assert error_code(frame) == "already_deleted"
    messages = await history(client, c, cid)
    assert [(m["seq"], m["deleted"], m["content"]) for m in messages] == [
        (1, True, ""), (2, False, "from admin")]


async def test_reactions_over_the_socket_are_idempotent_toggles(client: Client) -> None:
    a, b, cid = await pair(client)
    async with client.ws(a) as wa, client.ws(b) as wb:
        sent = await say(wa, cid, "vote")
        mid = sent["id"]
        for emoji in ("👍", "👍", "👍🏽", "🇫🇷", "👩‍💻", ":+1:"):
            frame = await wb.request("reaction", {"message_id": mid, "emoji": emoji},
                                     "reaction_update")
            assert frame["type"] == "reaction_update", frame
        assert frame["payload"]["counts"] == {"👍": 1, "👍🏽": 1, "🇫🇷": 1, "👩‍💻": 1, ":+1:": 1}
        ups = [await wa.expect("reaction_update") for _ in range(5)]
        assert [u["payload"]["emoji"] for u in ups] == ["👍", "👍🏽", "🇫🇷", "👩‍💻", ":+1:"]
        await wa.none("reaction_update")  # the repeated 👍 changed nothing: not fanned out
        frame = await wa.request("reaction", {"message_id": mid, "emoji": "👍"},
                                 "reaction_update")
        assert frame["payload"]["counts"]["👍"] == 2
        frame = await wb.request("reaction", {"message_id": mid, "emoji": "👍", "add": False},
                                 "reaction_update")
        assert frame["payload"] | {"add": False, "user_id": b.id} == frame["payload"]
        assert frame["payload"]["counts"]["👍"] == 1
        for bad in ("", "ab", "👍👍", ":Nope:", ":" + "a" * 31 + ":", "\u0301", "e" * 40):
            frame = await wb.request("reaction", {"message_id": mid, "emoji": bad},
                                     "reaction_update")
            assert error_code(frame) == "invalid_request", bad
            assert frame["payload"]["field"] == "emoji"
        outsider = await client.register()
        async with client.ws(outsider) as wo:
            frame = await wo.request("reaction", {"message_id": mid, "emoji": "👍"},
                                     "reaction_update")
            assert error_code(frame) == "not_found"
        sync = await wb.request("sync", {"conversations": {cid: 0}}, "sync_result")
        [m] = sync["payload"]["messages"]
        assert m["reactions"]["👍"] == {"count": 1, "me": False}
        assert m["reactions"][":+1:"] == {"count": 1, "me": True}


async def test_replies_name_a_message_of_the_same_conversation(client: Client) -> None:
    a, b, cid = await pair(client)
    c = await client.register()
    other = await client.conversation(a, c)
    async with client.ws(a) as wa, client.ws(b) as wb:
        first = await say(wa, cid, "question?")
        elsewhere = await say(wa, other, "unrelated")
        for target in (elsewhere["id"], str(uuid.uuid4()), "not-a-uuid"):
            frame = await wb.request("chat_message", {"conversation_id": cid, "content": "x",
                                                      "reply_to": target}, "message_ack")
            assert error_code(frame) == "invalid_request", target
            assert frame["payload"]["field"] == "reply_to"
        answer = await say(wb, cid, "answer", reply_to=first["id"])
        live = await wa.expect("new_message", id=answer["id"])
        assert live["payload"]["reply_to"] == first["id"]
        r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                                   json={"content": "via rest", "reply_to": answer["id"]})
        assert r.status_code == 201 and r.json()["reply_to"] == answer["id"]
        r = await client.http.post(f"/api/conversations/{cid}/messages", headers=a.headers,
                                   json={"content": "bad", "reply_to": elsewhere["id"]})
        assert r.status_code == 400 and r.json()["error"]["field"] == "reply_to"
    assert [m["reply_to"] for m in await history(client, b, cid)] == [
        None, first["id"], answer["id"]]


async def test_mentions_of_members_and_unread_mentions_in_ready(client: Client) -> None:
    a, b, c = await client.register(), await client.register(), await client.register()
    outsider = await client.register()
    cid = await group(client, a, b, c)
    async with client.ws(a) as wa, client.ws(b) as wb:
        text = (f"@{b.username.upper()} and @{c.username}, not @{outsider.username} "
                f"nor mail@{b.username} — @{b.username} again.")
        sent = await say(wa, cid, text)
        live = await wb.expect("new_message", id=sent["id"])
        assert live["payload"]["mentions"] == [b.id, c.id]
        await say(wa, cid, "no mentions here")
        await say(wa, cid, f"@{c.username} only")
        later = await say(wa, cid, f"hey @{b.username}")
    async with client.ws(b) as wb:
        assert wb.ready["payload"]["conversations"][cid]["mentions_unread"] == 2  # type: ignore[attr-defined]
        await wb.send("read_receipt", {"conversation_id": cid, "up_to_seq": 2})
        await wb.settle()
    async with client.ws(b) as wb, client.ws(a) as wa:
        assert wb.ready["payload"]["conversations"][cid]["mentions_unread"] == 1  # type: ignore[attr-defined]
        assert wa.ready["payload"]["conversations"][cid]["mentions_unread"] == 0  # type: ignore[attr-defined]
        frame = await wa.request("edit_message", {"message_id": later["id"],
                                                  "content": f"hey @{c.username}"},
                                 "message_edited")
        assert frame["payload"]["mentions"] == [c.id]
        assert (await wb.expect("message_edited"))["payload"]["mentions"] == [c.id]
    async with client.ws(b) as wb:
        assert wb.ready["payload"]["conversations"][cid]["mentions_unread"] == 0  # type: ignore[attr-defined]
    assert [m["mentions"] for m in await history(client, c, cid)] == [
        [b.id, c.id], [], [c.id], [c.id]]


async def test_the_edit_window_refuses_late_edits_but_not_deletes(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, dataclasses.replace(server.settings,
                                                              edit_window=0.2))
        client = srv.client()
        a, b, cid = await pair(client)
        async with client.ws(a) as wa:
            sent = await say(wa, cid, "quick")
            frame = await wa.request("edit_message", {"message_id": sent["id"],
                                                      "content": "in time"}, "message_edited")
            assert frame["type"] == "message_edited"
            await trio.sleep(0.3)  # the window is a span of wall-clock time
            frame = await wa.request("edit_message", {"message_id": sent["id"],
                                                      "content": "too late"}, "message_edited")
            assert error_code(frame) == "edit_window_closed"
            frame = await wa.request("delete_message", {"message_id": sent["id"]},
                                     "message_deleted")
            assert frame["type"] == "message_deleted"
        await client.aclose()
        srv.shutdown.set()


async def catch_up(ws: Ws, cursor: str) -> tuple[list[dict[str, Any]], str]:
    """Every change since `cursor`, paging while changes_has_more."""
    out: list[dict[str, Any]] = []
    while True:
        frame = await ws.request("sync", {"changes_since": cursor}, "sync_result")
        assert frame["type"] == "sync_result", frame
        p = frame["payload"]
        out += p["changes"]
        cursor = p["changes_cursor"]
        if not p["changes_has_more"]:
            return out, cursor


async def test_an_offline_device_catches_up_on_changes_after_a_restart(
        settings: Settings, aio_loop: None) -> None:
    settings = dataclasses.replace(settings, sync_page_size=2)  # paging, too
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, settings)
        client = srv.client()
        a, b, cid = await pair(client)
        c = await client.register()
        elsewhere = await client.conversation(a, c)
        async with client.ws(a) as wa, client.ws(b) as wb:
            typo = await say(wa, cid, "teh typo")
            gone = await say(wa, cid, "oops, wrong chat")
            liked = await say(wa, cid, "lunch?")
            await say(wa, elsewhere, "not b's")
            cursor = wb.ready["payload"]["changes_cursor"]  # type: ignore[attr-defined]
            assert isinstance(cursor, str) and cursor
        # b is offline now
        async with client.ws(a) as wa:
            await wa.request("edit_message", {"message_id": typo["id"], "content": "the typo"},
                             "message_edited")
            await wa.request("edit_message", {"message_id": typo["id"],
                                              "content": "the typo, fixed"}, "message_edited")
            await wa.request("delete_message", {"message_id": gone["id"]}, "message_deleted")
            await wa.request("reaction", {"message_id": liked["id"], "emoji": "🍕"},
                             "reaction_update")
            await wa.request("reaction", {"message_id": liked["id"], "emoji": "👍"},
                             "reaction_update")
        async with client.ws(c) as wc:
            await wc.request("reaction", {"message_id": (await history(client, c, elsewhere))
                                          [0]["id"], "emoji": "👀"}, "reaction_update")
        await client.aclose()
        srv.shutdown.set()
    async with trio.open_nursery() as nursery:  # the same database, a new process state
        srv = await start_server(nursery, settings)
        client = srv.client()
        async with client.ws(b) as wb:
            changes, new_cursor = await catch_up(wb, cursor)
            assert [(ch["type"], ch["payload"]["message_id"]) for ch in changes] == [
                ("message_edited", typo["id"]),  # only the latest edit
                ("message_deleted", gone["id"]),
                ("reaction_update", liked["id"]), ("reaction_update", liked["id"])]
            assert changes[0]["payload"]["content"] == "the typo, fixed"
            assert changes[-1]["payload"]["counts"] == {"🍕": 1, "👍": 1}
            again, _ = await catch_up(wb, new_cursor)
            assert again == []
            assert new_cursor == wb.ready["payload"]["changes_cursor"]  # type: ignore[attr-defined]
            frame = await wb.request("sync", {"changes_since": "bogus"}, "sync_result")
            assert error_code(frame) == "invalid_request"
            assert frame["payload"]["field"] == "changes_since"
            plain = await wb.request("sync", {}, "sync_result")
            assert "changes" not in plain["payload"]  # only when asked for
        await client.aclose()
        srv.shutdown.set()
