"""A local Web Push service (and push webhook) for the tests: a real HTTP server on a free
port that checks what a browser's push service checks.

Every request to `/push/<name>` must carry a VAPID `Authorization: vapid t=<JWT>, k=<key>`
whose key is the server's (`expect_key`) and whose ES256 JWT verifies against it, with
`aud` = this service's origin, `exp` within 24 h and a `sub`; the body must be RFC 8291
`aes128gcm`, and is decrypted with the subscription's private key (made here, like a
browser makes it). Answers are scripted per subscription (`script`), default 201; a
subscription can be made to hang (`hang`). Every request lands in `received` (a Trio
channel) with what was decrypted and the status it was answered, so tests wait on events,
not on time. `/webhook` takes the JSON webhook the same way.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from chatsrv.adapters.push.webpush import b64url, b64url_decode, decrypt, load_point, public_point


@dataclass
class Browser:
    """One subscription as a browser holds it."""

    name: str
    endpoint: str
    private: ec.EllipticCurvePrivateKey
    auth: bytes

    def json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64url(public_point(self.private.public_key())),
                         "auth": b64url(self.auth)}}


@dataclass
class Received:
    name: str  # the subscription's, or "webhook"
    status: int
    payload: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class PushService:
    url: str = ""
    expect_key: str = ""  # the chatsrv node's VAPID public key
    browsers: dict[str, Browser] = field(default_factory=dict)
    script: dict[str, deque[int | tuple[int, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(deque))
    hang: set[str] = field(default_factory=set)
    release: trio.Event = field(default_factory=trio.Event)
    errors: list[str] = field(default_factory=list)
    # unbounded in practice: a test produces a handful
    channel: tuple[trio.MemorySendChannel[Received], trio.MemoryReceiveChannel[Received]] = \
        field(default_factory=lambda: trio.open_memory_channel[Received](1000))

    def browser(self, name: str) -> Browser:
        b = Browser(name, f"{self.url}/push/{name}", ec.generate_private_key(ec.SECP256R1()),
                    os.urandom(16))
        self.browsers[name] = b
        return b

    async def next(self, wait: float = 10.0) -> Received:
        with trio.fail_after(wait):
            return await self.channel[1].receive()

    def nothing_pending(self) -> bool:
        return self.channel[1].statistics().current_buffer_used == 0

    def _verify_vapid(self, header: str) -> str | None:
        """None if the VAPID header is right, else what is wrong."""
        scheme, _, rest = header.partition(" ")
        if scheme != "vapid":
            return f"Authorization scheme {scheme!r}"
        params = dict(p.strip().split("=", 1) for p in rest.split(","))
        if params.get("k") != self.expect_key:
            return "k is not the server's VAPID key"
        key = load_point(b64url_decode(params["k"]))
        try:
            claims = jwt.decode(params["t"], key, algorithms=["ES256"], audience=self.url,
                                options={"require": ["aud", "exp", "sub"]})
        except jwt.InvalidTokenError as exc:
            return f"JWT: {exc}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "exp more than 24 h ahead"
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return "sub is not mailto:/https:"
        return None

    def app(self) -> QuartTrio:
        app = QuartTrio("push-service")

        @app.post("/push/<name>")
        async def push(name: str) -> Response:
            body = await request.get_data(as_text=False)
            headers = {k.lower(): v for k, v in request.headers.items()}
            browser = self.browsers.get(name)
            if browser is None:
                return Response("", status=404)
            problem = self._verify_vapid(request.headers.get("Authorization", ""))
            if problem is None and request.headers.get("Content-Encoding") != "aes128gcm":
                problem = "Content-Encoding is not aes128gcm"
            if problem is None and "TTL" not in request.headers:
                problem = "no TTL header"
            topic = request.headers.get("Topic", "")
            if problem is None and (len(topic) > 32 or not topic.isalnum()):
                problem = f"Topic {topic!r} is not ≤ 32 base64url characters"
            if problem is not None:
                self.errors.append(problem)
                await self.channel[0].send(Received(name, 400, None, headers))
                return Response(problem, status=400)
            try:
                payload = json.loads(decrypt(body, ua_private=browser.private,
                                             auth_secret=browser.auth))
            except Exception as exc:
                self.errors.append(f"decrypt: {exc!r}")
                return Response("bad body", status=400)
            if name in self.hang:
                await self.channel[0].send(Received(name, 0, payload, headers))
                await self.release.wait()
                return Response("", status=201)
            answer = self.script[name].popleft() if self.script[name] else 201
            status, extra = answer if isinstance(answer, tuple) else (answer, {})
            await self.channel[0].send(Received(name, status, payload, headers))
            return Response("", status=status, headers=extra)

        @app.post("/webhook")
        async def webhook() -> Response:
            payload = await request.get_json()
            headers = {k.lower(): v for k, v in request.headers.items()}
            await self.channel[0].send(Received("webhook", 200, payload, headers))
            return Response("{}", status=200, content_type="application/json")

        return app

    async def run(self, *, task_status: trio.TaskStatus[PushService] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None

        class _Started:
            def started(inner, binds: list[str]) -> None:
                self.url = binds[0]
                task_status.started(self)

        await serve(self.app(), config, task_status=_Started())  # type: ignore[arg-type]
