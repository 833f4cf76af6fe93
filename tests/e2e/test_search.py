"""GET /api/search against a real server, on SQLite and PostgreSQL: messages sent over REST
and the WebSocket are found by their words, only by members, page by page."""

from __future__ import annotations

import pytest

from tests.helpers import Account, Client, pair


async def say(client: Client, who: Account, conv: str, content: str) -> dict:
    r = await client.http.post(f"/api/conversations/{conv}/messages", headers=who.headers,
                               json={"content": content})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def search(client: Client, who: Account, **params: str | int) -> dict:
    r = await client.http.get("/api/search", headers=who.headers, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_sent_message_is_found_with_a_marked_snippet(client: Client) -> None:
    a, b, conv = await pair(client)
    sent = await say(client, a, conv, "Shall we meet at the <Café> at 5?")
    async with client.ws(b) as ws:
        await ws.send("chat_message", {"conversation_id": conv, "content": "cafe sounds good"},
                      ref="c1")
        await ws.expect("message_ack")
    body = await search(client, b, q="cafe")
    assert body["has_more"] is False and body["next_before"] is None
    assert [r["message"]["content"] for r in body["results"]] == [
        "cafe sounds good", "Shall we meet at the <Café> at 5?"]
    oldest = body["results"][1]
    assert oldest["message"] == sent  # the message payload as in history
    assert oldest["snippet"] == "Shall we meet at the &lt;<mark>Café</mark>&gt; at 5?"


async def test_outsiders_and_leavers_find_nothing(client: Client) -> None:
    a, b, c = await client.register(), await client.register(), await client.register()
    group = await client.conversation(a, b, c, name="team")
    await say(client, a, group, "quarterly numbers attached")
    stranger = await client.register()
    assert (await search(client, stranger, q="quarterly"))["results"] == []
    r = await client.http.get("/api/search", headers=stranger.headers,
                              params={"q": "quarterly", "conversation_id": group})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert len((await search(client, c, q="quarterly", conversation_id=group))["results"]) == 1
    r = await client.http.delete(f"/api/conversations/{group}/members/{c.id}",
                                 headers=c.headers)
    assert r.status_code in (200, 204), r.text
    assert (await search(client, c, q="quarterly"))["results"] == []
    assert len((await search(client, b, q="quarterly"))["results"]) == 1


async def test_pages_newest_first_by_next_before(client: Client) -> None:
    a, _, conv = await pair(client)
    for i in range(5):
        await say(client, a, conv, f"report number {i}")
    seen: list[str] = []
    params: dict[str, str | int] = {"q": "report", "limit": 2}
    for _ in range(5):
        body = await search(client, a, **params)
        seen += [r["message"]["content"] for r in body["results"]]
        if not body["has_more"]:
            break
        params["before"] = body["next_before"]
    assert seen == [f"report number {i}" for i in (4, 3, 2, 1, 0)]
    capped = await search(client, a, q="report", limit=10**9)
    assert len(capped["results"]) == 5


@pytest.mark.parametrize("params,field", [
    ({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "x" * 2000}, "q"),
    ({"q": '"'}, "q"), ({"q": "*"}, "q"), ({"q": "& | !"}, "q"),
    ({"q": "hi", "limit": 0}, "limit"), ({"q": "hi", "limit": "many"}, "limit"),
    ({"q": "hi", "before": "not-a-cursor"}, "before"),
    ({"q": "hi", "conversation_id": "nope"}, "conversation_id"),
])
async def test_bad_queries_are_400(client: Client, params: dict, field: str) -> None:
    a = await client.register()
    r = await client.http.get("/api/search", headers=a.headers, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["field"] == field


@pytest.mark.parametrize("q", ["a & | !", "NEAR(", "x:*", "' OR 1=1 --", "a\\", "(a", "a* *"])
async def test_hostile_queries_are_searched_as_text(client: Client, q: str) -> None:
    a, _, conv = await pair(client)
    await say(client, a, conv, "a x NEAR or 1 1")
    body = await search(client, a, q=q)
    assert isinstance(body["results"], list)


async def test_search_needs_a_token(client: Client) -> None:
    r = await client.http.get("/api/search", params={"q": "hi"})
    assert r.status_code == 401


async def test_a_result_carries_its_reactions_as_the_caller_sees_them(client: Client) -> None:
    a, b, conv = await pair(client)
    sent = await say(client, a, conv, "reactable zeppelin")
    r = await client.http.put(f"/api/messages/{sent['id']}/reactions/%F0%9F%91%8D",
                              headers=b.headers)
    assert r.status_code in (200, 204), r.text
    for who, me in ((b, True), (a, False)):
        [hit] = (await search(client, who, q="zeppelin"))["results"]
        assert hit["message"]["reactions"] == {"\N{THUMBS UP SIGN}": {"count": 1, "me": me}}
