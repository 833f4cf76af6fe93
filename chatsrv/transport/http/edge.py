"""What every HTTP request passes through, once: who is calling (client address through
trusted proxies, the bearer token's principal), the abuse limits, errors mapped to JSON,
CORS, security headers and the access log."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from chatsrv.config import Settings
from chatsrv.domain.errors import ChatError, RateLimited
from chatsrv.domain.model import Principal, new_id
from chatsrv.protocol.errors import error_body, error_of, http_status
from chatsrv.services.auth import AuthService
from chatsrv.services.limits import RateLimits
from chatsrv.transport.addresses import client_address, networks
from chatsrv.transport.http.api import bearer, has_body, json_response

log = logging.getLogger("chatsrv.http")
access_log = logging.getLogger("chatsrv.access")

# operators' probes: never rate limited, not in the access log
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# pages served with the CSP below: the web client and the served docs (docs.py)
WEB_PAGES = frozenset({"/", "/index.html", "/api/docs", "/api/docs/protocol"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The web client: scripts and styles from this origin only (no inline script), media and
# images from blob:/data: (call video, avatars), WebSocket to this origin, never framed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'; object-src 'none'")
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"


def page_csp(settings: Settings) -> str:
    """CSP for the web pages: with object storage that answers downloads by redirecting to
    presigned URLs (S3_ENDPOINT + S3_REDIRECT), images, media and fetches of attachments
    come from that origin too."""
    if not (settings.s3_endpoint and settings.s3_redirect):
        return CSP
    parts = urlsplit(settings.s3_endpoint)
    origin = f"{parts.scheme}://{parts.netloc}"
    csp = CSP
    for directive in ("img-src", "media-src", "connect-src"):
        csp = csp.replace(f"{directive} 'self'", f"{directive} 'self' {origin}", 1)
    return csp


def origin_allowed(origin: str, own: str, allowed: Sequence[str]) -> bool:
    """A browser's Origin is this server itself, or listed in CORS_ORIGINS (`*`: any)."""
    return origin == own or "*" in allowed or origin in allowed


def cors_headers(resp: Response, origin: str | None, own: str, allowed: Sequence[str], *,
                 preflight: bool) -> None:
    """CORS headers only for an allowed cross-origin caller; others get none (the browser
    then refuses to hand them the response)."""
    if not origin or origin == own or not origin_allowed(origin, own, allowed):
        return
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Vary"] = "Origin"
    resp.headers["Access-Control-Expose-Headers"] = ("Retry-After, X-Request-Id, "
                                                     "Content-Disposition, Content-Range, ETag")
    if preflight:
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        resp.headers["Access-Control-Allow-Headers"] = ("Authorization, Content-Type, Range, "
                                                        "If-None-Match")
        resp.headers["Access-Control-Max-Age"] = "600"


class Edge:
    """Installed on the app; route modules ask it who is calling."""

    def __init__(self, app: QuartTrio, settings: Settings, *, auth: AuthService,
                 limits: RateLimits) -> None:
        self._settings = settings
        self._csp = page_csp(settings)
        self._auth = auth
        self.limits = limits
        self._trusted = networks(settings.trusted_proxies)
        app.errorhandler(ChatError)(self._chat_error)
        app.errorhandler(HTTPException)(self._http_error)
        app.errorhandler(Exception)(self._unexpected)
        app.before_request(self._before)
        app.after_request(self._after)

    def address(self) -> str:
        peer = request.scope.get("client")
        return client_address(peer[0] if peer else None,
                              request.headers.get("X-Forwarded-For"), self._trusted)

    async def principal(self) -> Principal:
        """The caller (401 otherwise), within their per-user REST budget (429)."""
        found = g.get("principal")
        if found is None:
            found = g.principal = await self._auth.authenticate(bearer())
            g.user_id = found.user_id
            await self.limits.take(self.limits.user, found.user_id)
        return found  # type: ignore[no-any-return]

    async def user_id(self) -> str:
        return (await self.principal()).user_id

    # ------------------------------------------------------------------ hooks

    async def _chat_error(self, err: ChatError) -> Response:
        resp = json_response(error_of(err), http_status(err))
        if isinstance(err, RateLimited):
            resp.headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
        return resp

    async def _http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(status, "http_error")
        message = {413: f"request body over {self._settings.max_body_bytes} bytes",
                   404: f"no such endpoint: {request.method} {request.path}"[:200]}.get(
            status, err.description or err.name)
        resp = json_response(error_body(code, message), status)
        valid = getattr(err, "valid_methods", None)
        if status == 405 and valid:
            resp.headers["Allow"] = ", ".join(sorted(valid))
        return resp

    async def _unexpected(self, err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path,
                      extra={"request_id": g.get("request_id")})
        return json_response(error_body("internal", "internal server error"), 500)

    async def _before(self) -> None:
        g.started = time.perf_counter()
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or new_id()[:18]
        if request.path not in UNLIMITED_PATHS:
            await self.limits.take(self.limits.address, self.address())

    async def _after(self, resp: Response) -> Response:
        cors_headers(resp, request.headers.get("Origin"), request.host_url.rstrip("/"),
                     self._settings.cors_origins, preflight=request.method == "OPTIONS")
        resp.headers.update(SECURITY_HEADERS)
        if request.path in WEB_PAGES or request.path.startswith("/web/"):
            resp.headers["Content-Security-Policy"] = self._csp
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        if resp.status_code >= 400 and has_body(request):
            # Answered (401, 404, 405, 413...) maybe before the body was read: what is left
            # of it must not be taken for the next request on a kept-alive connection.
            resp.headers["Connection"] = "close"
        if request.path not in UNLIMITED_PATHS:
            principal = g.get("principal")
            access_log.info("%s %s %d %.1fms", request.method, request.path, resp.status_code,
                            (time.perf_counter() - g.get("started", time.perf_counter())) * 1e3,
                            extra={"request_id": g.get("request_id"),
                                   "user_id": g.get("user_id"),
                                   "session_id": principal.session_id if principal else None,
                                   "client": self.address(), "status": resp.status_code})
        return resp
