"""Test clients that speak to a real server over real sockets."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

TIMEOUT = 10


@dataclass
class Account:
    id: str
    username: str
    email: str
    password: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Ws:
    """A WebSocket client that keeps frames it was not waiting for."""

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.backlog: list[dict[str, Any]] = []

    async def send(self, type: str, payload: dict[str, Any] | None = None,
                   ref: str | None = None) -> None:
        frame: dict[str, Any] = {"type": type, "payload": payload or {}}
        if ref is not None:
            frame["ref"] = ref
        await self.conn.send_message(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send_message(data)

    async def recv(self, wait: float = TIMEOUT) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        with trio.fail_after(wait):
            return json.loads(await self.conn.get_message())  # type: ignore[no-any-return]

    async def expect(self, type: str, *, wait: float = TIMEOUT, **match: Any) -> dict[str, Any]:
        """The next frame of `type` whose payload has the `match` values; others are kept."""
        for i, frame in enumerate(self.backlog):
            if frame["type"] == type and _matches(frame, match):
                return self.backlog.pop(i)
        with trio.fail_after(wait):
            while True:
                frame = json.loads(await self.conn.get_message())
                if frame["type"] == type and _matches(frame, match):
                    return frame  # type: ignore[no-any-return]
                self.backlog.append(frame)

    async def settle(self) -> None:
        """A barrier: everything the server queued for this socket before it handled this
        ping is in the backlog once the pong is here (one socket's frames leave in order,
        and a node publishes an event to every socket before it answers the frame that
        caused it)."""
        await self.request("ping", {}, "pong")

    async def none(self, type: str, **match: Any) -> None:
        """Assert no frame of `type` (matching) was queued for this socket before now."""
        await self.settle()
        for frame in self.backlog:
            assert not (frame["type"] == type and _matches(frame, match)), frame

    async def request(self, type: str, payload: dict[str, Any], reply: str) -> dict[str, Any]:
        ref = uuid.uuid4().hex
        await self.send(type, payload, ref=ref)
        with trio.fail_after(TIMEOUT):
            while True:
                frame = await self.expect_ref(ref)
                if frame["type"] in (reply, "error"):
                    return frame

    async def expect_ref(self, ref: str) -> dict[str, Any]:
        for i, frame in enumerate(self.backlog):
            if frame.get("ref") == ref:
                return self.backlog.pop(i)
        while True:
            frame = json.loads(await self.conn.get_message())
            if frame.get("ref") == ref:
                return frame  # type: ignore[no-any-return]
            self.backlog.append(frame)

    @property
    def closed(self) -> bool:
        return self.conn.closed is not None


def _matches(frame: dict[str, Any], match: dict[str, Any]) -> bool:
    payload = frame.get("payload") or {}
    return all(payload.get(k) == v for k, v in match.items())


class Client:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.http = httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT)

    async def register(self, name: str | None = None) -> Account:
        name = name or f"u{uuid.uuid4().hex[:10]}"
        body = {"username": name, "email": f"{name}@example.com", "password": "password123",
                "display_name": name.title()}
        r = await self.http.post("/api/auth/register", json=body)
        assert r.status_code == 201, r.text
        data = r.json()
        return Account(id=data["user"]["id"], username=name, email=body["email"],
                       password=body["password"], token=data["token"],
                       refresh_token=data["refresh_token"])

    async def conversation(self, owner: Account, *others: Account, name: str | None = None) -> str:
        if name is None and len(others) == 1:
            body: dict[str, Any] = {"type": "one_to_one", "member_ids": [others[0].id]}
        else:
            body = {"type": "group", "name": name or "group", "member_ids": [o.id for o in others]}
        r = await self.http.post("/api/conversations", json=body, headers=owner.headers)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    @asynccontextmanager
    async def ws(self, account: Account, *, query: str = "") -> AsyncIterator[Ws]:
        url = f"{self.server.ws_url}?token={account.token}{query}"
        async with open_websocket_url(url) as conn:
            ws = Ws(conn)
            ready = await ws.recv()
            assert ready["type"] == "ready", ready
            ws.ready = ready  # type: ignore[attr-defined]
            try:
                yield ws
            except ConnectionClosed:
                raise

    async def aclose(self) -> None:
        await self.http.aclose()


async def pair(client: Client) -> tuple[Account, Account, str]:
    """Two new users and their one_to_one conversation."""
    a, b = await client.register(), await client.register()
    return a, b, await client.conversation(a, b)
