"""Operations and static files: health, readiness, metrics, the OpenAPI document, the web
client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from quart import Response, send_from_directory

from chatsrv.config import Settings
from chatsrv.domain.errors import ChatError
from chatsrv.protocol.errors import error_body
from chatsrv.transport.http.api import Api, json_response

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


def register(api: Api, *, settings: Settings, ready: Callable[[], Awaitable[None]],
             metrics: Callable[[], tuple[bytes, str]]) -> None:
    app = api.app

    @app.route("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.route("/readyz")
    async def readyz() -> Response:
        try:
            with trio.fail_after(settings.db_timeout):
                await ready()
        except (trio.TooSlowError, ChatError, OSError) as exc:
            return json_response(error_body("unavailable", f"storage unreachable: {exc!r}"), 503)
        return json_response({"status": "ready", "node_id": settings.node_id})

    @app.route("/metrics")
    async def metrics_text() -> Response:
        data, content_type = metrics()
        return Response(data, content_type=content_type)

    @app.route("/api/openapi.json")
    async def openapi() -> Response:
        return json_response(api.openapi())

    @app.route("/")
    async def index() -> Response:
        return await send_from_directory(WEB_DIR, "index.html")

    @app.route("/sw.js")
    async def service_worker() -> Response:
        """The push service worker at the root, so its scope may be the whole origin."""
        resp = await send_from_directory(WEB_DIR, "sw.js")
        resp.headers["Service-Worker-Allowed"] = "/"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @app.route("/web/<path:name>")
    async def web(name: str) -> Response:
        return await send_from_directory(WEB_DIR, name)
