"""REST under /api, health, metrics, OpenAPI and the web client, on Quart-Trio.

Handlers parse, call one service method and render. Every route is declared through `Api`,
which also records its request/response schemas: /api/openapi.json is generated from them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio
from quart import Response, g, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from chatsrv import __version__
from chatsrv.domain.errors import ChatError, Invalid, NotFound, RateLimited, Unauthorized
from chatsrv.domain.model import Conversation, Principal, User, new_id, parse_id
from chatsrv.domain.receipts import status_for
from chatsrv.services.container import Services
from chatsrv.transport import wire
from chatsrv.transport.addresses import client_address, networks
from chatsrv.transport.errors import error_body, error_of, http_status
from chatsrv.transport.render import (
    auth_out,
    render_admin_user,
    render_call,
    render_conversation,
    render_message,
    render_user,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("chatsrv.access")

# operators' probes: never rate limited, not in the access log
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
WEB_PAGES = frozenset({"/", "/index.html"})
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
    resp.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"
    if preflight:
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        resp.headers["Access-Control-Max-Age"] = "600"

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


# ---------------------------------------------------------------------------- routing


class Api:
    """Registers routes on the app and keeps their schemas for the OpenAPI document."""

    def __init__(self, app: QuartTrio) -> None:
        self.app = app
        self.paths: dict[str, dict[str, Any]] = {}
        self.types: set[type[Any]] = {wire.ErrorOut}

    def route(self, method: str, path: str, *, summary: str, body: type[Any] | None = None,
              response: type[Any] | None = None, status: int = 200, auth: bool = True,
              query: tuple[str, ...] = (), also: dict[int, str] | None = None,
              ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """`also`: other success statuses with the same response body (status -> what it
        means), e.g. 200 for a resend that returns the stored message."""
        def register(handler: Callable[..., Awaitable[Any]]) -> Any:
            self.app.add_url_rule(path, endpoint=f"{method}:{path}", view_func=handler,
                                  methods=[method])
            op: dict[str, Any] = {
                "summary": summary, "operationId": handler.__name__,
                "responses": {
                    str(status): _schema_ref(response, "OK") if response else {"description": "OK"},
                    "4XX": _schema_ref(wire.ErrorOut, "error"),
                    "5XX": _schema_ref(wire.ErrorOut, "server or dependency failure"),
                },
            }
            for extra, meaning in (also or {}).items():
                op["responses"][str(extra)] = (_schema_ref(response, meaning) if response
                                               else {"description": meaning})
            if auth:
                op["security"] = [{"bearer": []}]
            params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                      for p in _path_params(path)]
            params += [{"name": q, "in": "query", "required": False,
                        "schema": {"type": "string"}} for q in query]
            if params:
                op["parameters"] = params
            if body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
                }}
                self.types.add(body)
            if response is not None:
                self.types.add(response)
            self.paths.setdefault(_openapi_path(path), {})[method.lower()] = op
            return handler
        return register

    def openapi(self) -> dict[str, Any]:
        _, components = msgspec.json.schema_components(
            sorted(self.types, key=lambda t: t.__name__),
            ref_template="#/components/schemas/{name}",
        )
        return {
            "openapi": "3.1.0",
            "info": {"title": "chatsrv", "version": __version__,
                     "description": "REST API of chatsrv. The WebSocket protocol at /api/ws "
                                    "is described in docs/protocol.md."},
            "paths": self.paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
            },
        }


def _schema_ref(cls: type[Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{cls.__name__}"}}}}


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[-1] for part in path.split("/") if part.startswith("<")]


def _openapi_path(path: str) -> str:
    return "/".join(
        "{" + part[1:-1].split(":")[-1] + "}" if part.startswith("<") else part
        for part in path.split("/")
    )


# ---------------------------------------------------------------------------- request helpers


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token", code="missing_token")
    return token.strip()


async def _body(cls: type[Any]) -> Any:
    data = await request.get_data(cache=False, as_text=False)
    return wire.decode_body(data, cls)  # type: ignore[arg-type]


def _int_arg(name: str, default: int | None = None, *, cap: int | None = None) -> int | None:
    """A non-negative integer query parameter that fits 64 bits (what the databases store);
    `default` when absent or empty; a page size over `cap` is `cap`. Raises Invalid with
    the field."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if cap is not None and raw.isdigit() and (len(raw) > 20 or int(raw) > cap):
        return cap
    try:
        if len(raw) > 20:
            raise ValueError
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer", field=name) from None
    if not 0 <= value <= wire.INT64_MAX:
        raise Invalid(f"{name} must be between 0 and {wire.INT64_MAX}", field=name)
    return value


def _text_arg(name: str, *, max_chars: int) -> str:
    """A query parameter as text (stripped), checked like body text. Raises Invalid."""
    value = (request.args.get(name) or "").strip()
    if len(value) > max_chars:
        raise Invalid(f"{name} is longer than {max_chars} characters", field=name)
    wire.check_text(value, name)
    return value


def _has_body(req: Any) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "")


# ---------------------------------------------------------------------------- the app


def create_app(svc: Services) -> QuartTrio:
    """The Quart app for everything but the WebSocket (see transport/ws.py)."""
    settings = svc.settings
    app = QuartTrio("chatsrv", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    api = Api(app)

    trusted = networks(settings.trusted_proxies)
    limits = svc.limits

    def address() -> str:
        peer = request.scope.get("client")
        return client_address(peer[0] if peer else None,
                              request.headers.get("X-Forwarded-For"), trusted)

    async def principal() -> Principal:
        """The caller (401 otherwise), within their per-user REST budget (429)."""
        found = g.get("principal")
        if found is None:
            found = g.principal = await svc.auth.authenticate(_bearer())
            g.user_id = found.user_id
            await limits.take(limits.user, found.user_id)
        return found  # type: ignore[no-any-return]

    async def me() -> str:
        return (await principal()).user_id

    async def _statuses(users: list[User], *, viewer: str | None = None) -> dict[str, str | None]:
        """Presence of `users`; with `viewer`, only of those who share a conversation with
        them (and themselves): status and last_seen are not for strangers."""
        return await svc.presence.statuses(users, viewer=viewer)

    # errors, at the edge, once
    @app.errorhandler(ChatError)
    async def _chat_error(err: ChatError) -> Response:
        resp = json_response(error_of(err), http_status(err))
        if isinstance(err, RateLimited):
            resp.headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
        return resp

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(status, "http_error")
        message = {413: f"request body over {settings.max_body_bytes} bytes",
                   404: f"no such endpoint: {request.method} {request.path}"[:200]}.get(
            status, err.description or err.name)
        resp = json_response(error_body(code, message), status)
        valid = getattr(err, "valid_methods", None)
        if status == 405 and valid:
            resp.headers["Allow"] = ", ".join(sorted(valid))
        return resp

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(error_body("internal", "internal server error"), 500)

    @app.before_request
    async def _per_address_limit() -> None:
        g.started = time.perf_counter()
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or new_id()[:18]
        if request.path not in UNLIMITED_PATHS:
            await limits.take(limits.address, address())

    @app.after_request
    async def _edge_headers(resp: Response) -> Response:
        cors_headers(resp, request.headers.get("Origin"), request.host_url.rstrip("/"),
                     settings.cors_origins, preflight=request.method == "OPTIONS")
        resp.headers.update(SECURITY_HEADERS)
        if request.path in WEB_PAGES or request.path.startswith("/web/"):
            resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        if resp.status_code >= 400 and _has_body(request):
            # Answered (401, 404, 405, 413...) maybe before the body was read: what is left
            # of it must not be taken for the next request on a kept-alive connection.
            resp.headers["Connection"] = "close"
        if request.path not in UNLIMITED_PATHS:
            access_log.info("%s %s %d %.1fms", request.method, request.path, resp.status_code,
                            (time.perf_counter() - g.get("started", time.perf_counter())) * 1e3,
                            extra={"request_id": g.get("request_id"),
                                   "user_id": g.get("user_id"),
                                   "session_id": getattr(g.get("principal"), "session_id", None),
                                   "client": address(), "status": resp.status_code})
        return resp

    # ---- auth

    @api.route("POST", "/api/auth/register", summary="Create an account (403 "
               "registration_closed when ALLOW_REGISTRATION is false)", auth=False,
               body=wire.RegisterIn, response=wire.AuthOut, status=201)
    async def register() -> Response:
        b = await _body(wire.RegisterIn)
        s = await svc.auth.register(username=b.username, email=b.email, password=b.password,
                                    display_name=b.display_name, address=address())
        return json_response(auth_out(s, status=await _own_status(s.user)), 201)

    @api.route("POST", "/api/auth/login", summary="Sign in by email or username (429 after "
               "too many failures for the account or the address)", auth=False,
               body=wire.LoginIn, response=wire.AuthOut)
    async def login() -> Response:
        b = await _body(wire.LoginIn)
        login = b.email or b.username
        if not login:
            raise Invalid("give email or username", field="email")
        s = await svc.auth.login(login=login, password=b.password, address=address())
        return json_response(auth_out(s, status=await _own_status(s.user)))

    @api.route("POST", "/api/auth/refresh", summary="Rotate a refresh token (a spent one "
               "revokes its session)", auth=False, body=wire.RefreshIn, response=wire.AuthOut)
    async def refresh() -> Response:
        b = await _body(wire.RefreshIn)
        s = await svc.auth.refresh(b.refresh_token, address=address())
        return json_response(auth_out(s, status=await _own_status(s.user)))

    @api.route("POST", "/api/auth/logout", summary="End a session: the refresh token's, or the "
               "bearer token's", auth=False, body=wire.LogoutIn, status=204)
    async def logout() -> Response:
        data: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
        b = wire.decode_body(data, wire.LogoutIn) if data else wire.LogoutIn()
        if b.refresh_token:
            await svc.auth.logout(refresh_token=b.refresh_token)
        else:
            await svc.auth.logout(principal=await principal())
        return Response(b"", status=204)

    @api.route("POST", "/api/auth/password", summary="Change my password; every other session "
               "ends", body=wire.PasswordIn, status=204)
    async def change_password() -> Response:
        who = await principal()
        b = await _body(wire.PasswordIn)
        await svc.auth.change_password(who, old_password=b.old_password,
                                       new_password=b.new_password)
        return Response(b"", status=204)

    async def _own_status(user: User) -> str:
        return (await _statuses([user]))[user.id] or "offline"

    # ---- users

    @api.route("GET", "/api/users/me", summary="My profile", response=wire.UserOut)
    async def users_me() -> Response:
        user = await svc.auth.get_user(await me())
        return json_response(render_user(user, status=await _own_status(user), private=True))

    @api.route("GET", "/api/users/<user_id>", summary="A user's profile; status and last_seen "
               "only for users who share a conversation with me", response=wire.UserOut)
    async def users_get(user_id: str) -> Response:
        viewer = await me()
        user = await svc.auth.get_user(parse_id(user_id, "user_id"))
        st = await _statuses([user], viewer=viewer)
        return json_response(render_user(user, status=st[user.id]))

    @api.route("GET", "/api/users", summary="Search active users by username or display name",
               response=wire.UsersOut, query=("q", "limit"))
    async def users_search() -> Response:
        viewer = await me()
        await limits.take(limits.expensive, viewer)
        q = _text_arg("q", max_chars=100)
        if not q:
            raise Invalid("q is required", field="q")
        limit = _int_arg("limit", 20) or 0
        if not 1 <= limit <= 100:
            raise Invalid("limit must be 1-100", field="limit")
        users = await svc.auth.search(q, limit=limit)
        st = await _statuses(users, viewer=viewer)
        return json_response(wire.UsersOut(users=[render_user(u, status=st[u.id])
                                                  for u in users]))

    # ---- admin

    async def _admin() -> Principal:
        who = await principal()
        await svc.auth.require_admin(who)
        return who

    @api.route("GET", "/api/admin/users", summary="Every account, deactivated ones included "
               "(admins)", response=wire.AdminUsersOut, query=("q", "limit"))
    async def admin_users() -> Response:
        await _admin()
        limit = _int_arg("limit", 50) or 0
        if not 1 <= limit <= 500:
            raise Invalid("limit must be 1-500", field="limit")
        users = await svc.admin.users(_text_arg("q", max_chars=100), limit=limit)
        return json_response(wire.AdminUsersOut(users=[render_admin_user(u) for u in users]))

    @api.route("POST", "/api/admin/users/<user_id>/deactivate", summary="Refuse the account's "
               "logins and end its sessions (admins)", response=wire.AdminUserOut)
    async def admin_deactivate(user_id: str) -> Response:
        who = await _admin()
        target = parse_id(user_id, "user_id")
        if target == who.user_id:
            raise Invalid("you cannot deactivate yourself", field="user_id")
        user, _ = await svc.admin.deactivate(target)
        return json_response(render_admin_user(user))

    @api.route("POST", "/api/admin/users/<user_id>/reactivate", summary="Let a deactivated "
               "account sign in again (admins)", response=wire.AdminUserOut)
    async def admin_reactivate(user_id: str) -> Response:
        await _admin()
        user = await svc.admin.reactivate(parse_id(user_id, "user_id"))
        return json_response(render_admin_user(user))

    # ---- conversations

    @api.route("POST", "/api/conversations", summary="Create a one_to_one (idempotent per "
               "pair) or group conversation", body=wire.CreateConversationIn,
               response=wire.ConversationOut, status=201,
               also={200: "the existing one_to_one of this pair"})
    async def conversations_create() -> Response:
        uid = await me()
        b = await _body(wire.CreateConversationIn)
        conv, created = await svc.conversations.create(
            uid, type=b.type, member_ids=b.member_ids, name=b.name, admin_ids=b.admin_ids)
        return json_response(await _conversation_out(conv), 201 if created else 200)

    @api.route("GET", "/api/conversations", summary="My conversations with last message and "
               "unread count", response=wire.ConversationListOut)
    async def conversations_list() -> Response:
        uid = await me()
        summaries = await svc.conversations.list_for(uid)
        ids = list({m.user_id for s in summaries for m in s.conversation.members})
        users = await svc.store.get_users(ids)
        statuses = await _statuses(users)
        by_id = {u.id: u for u in users}
        return json_response(wire.ConversationListOut(conversations=[
            render_conversation(s.conversation, users=by_id, statuses=statuses, summary=s)
            for s in summaries
        ]))

    @api.route("GET", "/api/conversations/<conversation_id>", summary="A conversation with "
               "members and their watermarks", response=wire.ConversationOut)
    async def conversations_get(conversation_id: str) -> Response:
        conv = await svc.conversations.get(await me(), conversation_id)
        return json_response(await _conversation_out(conv))

    @api.route("POST", "/api/conversations/<conversation_id>/members", summary="Add group "
               "members (admins)", body=wire.MembersIn, response=wire.ConversationOut)
    async def members_add(conversation_id: str) -> Response:
        uid = await me()
        b = await _body(wire.MembersIn)
        conv = await svc.conversations.add_members(uid, conversation_id, b.member_ids)
        return json_response(await _conversation_out(conv))

    @api.route("DELETE", "/api/conversations/<conversation_id>/members/<user_id>",
               summary="Remove a group member (admins) or leave", status=204)
    async def members_remove(conversation_id: str, user_id: str) -> Response:
        await svc.conversations.remove_member(await me(), conversation_id, user_id)
        return Response(b"", status=204)

    @api.route("DELETE", "/api/conversations/<conversation_id>/members", summary="Remove "
               "group members given in the body (admins)", body=wire.MembersIn, status=204)
    async def members_remove_many(conversation_id: str) -> Response:
        uid = await me()
        b = await _body(wire.MembersIn)
        for member_id in b.member_ids:
            await svc.conversations.remove_member(uid, conversation_id, member_id)
        return Response(b"", status=204)

    async def _conversation_out(conv: Conversation) -> wire.ConversationOut:
        users = await svc.store.get_users([m.user_id for m in conv.members])
        statuses = await _statuses(users)
        return render_conversation(conv, users={u.id: u for u in users}, statuses=statuses)

    # ---- messages

    @api.route("GET", "/api/conversations/<conversation_id>/messages", summary="History in "
               "seq order: limit/offset from the newest, or before_seq/after_seq cursors",
               response=wire.MessagesOut, query=("limit", "offset", "before_seq", "after_seq"))
    async def messages_list(conversation_id: str) -> Response:
        page, has_more = await svc.messaging.history(
            await me(), conversation_id, limit=_int_arg("limit", cap=settings.history_max_limit),
            offset=_int_arg("offset", 0) or 0,
            before_seq=_int_arg("before_seq"), after_seq=_int_arg("after_seq"),
        )
        return json_response(wire.MessagesOut(messages=[render_message(m) for m in page],
                                              has_more=has_more))

    @api.route("POST", "/api/conversations/<conversation_id>/messages", summary="Send a "
               "message (same path as the WebSocket chat_message)", body=wire.SendMessageIn,
               response=wire.MessageOut, status=201,
               also={200: "a resend of a client_msg_id: the stored message"})
    async def messages_send(conversation_id: str) -> Response:
        uid = await me()
        b = await _body(wire.SendMessageIn)
        msg, created = await svc.messaging.send(
            uid, conversation_id=conversation_id, content=b.content,
            message_type=b.message_type, client_msg_id=b.client_msg_id)
        return json_response(render_message(msg), 201 if created else 200)

    @api.route("GET", "/api/messages/<message_id>/status", summary="Per-member status of a "
               "message (sent/delivered/read), from watermarks", response=wire.MessageStatusOut)
    async def message_status(message_id: str) -> Response:
        uid = await me()
        msg = await svc.store.get_message(parse_id(message_id, "message_id"))
        if msg is None:
            raise NotFound("message not found")
        conv = await svc.conversations.get(uid, msg.conversation_id)
        marks = await svc.store.watermarks(conv.id)
        return json_response(wire.MessageStatusOut(
            message_id=msg.id, seq=msg.seq,
            statuses={u: status_for(msg.seq, w) for u, w in marks.items() if u != msg.sender_id},
        ))

    @api.route("POST", "/api/conversations/<conversation_id>/read", summary="Mark read (or "
               "delivered) up to a seq", body=wire.ReceiptBodyIn, status=204)
    async def mark_read(conversation_id: str) -> Response:
        uid = await me()
        b = await _body(wire.ReceiptBodyIn)
        await svc.messaging.receipt(uid, status=b.status, conversation_id=conversation_id,
                                    up_to_seq=b.up_to_seq)
        return Response(b"", status=204)

    # ---- calls

    @api.route("GET", "/api/calls", summary="My call history, newest first",
               response=wire.CallsOut, query=("limit", "before"))
    async def calls_list() -> Response:
        uid = await me()
        before_raw = request.args.get("before")
        before = None
        if before_raw:
            try:
                wire.check_text(before_raw, "before")
                before = datetime.fromisoformat(before_raw.replace("Z", "+00:00"))
            except (ValueError, OverflowError, Invalid):
                raise Invalid("before must be an ISO 8601 time", field="before") from None
            if before.tzinfo is None:
                before = before.replace(tzinfo=UTC)
        calls = await svc.calls.history(uid, limit=_int_arg("limit", 50) or 0, before=before)
        return json_response({"calls": [render_call(c, uid) for c in calls]})

    @api.route("GET", "/api/ice-servers", summary="STUN/TURN servers for RTCPeerConnection "
               "(TURN REST API credentials when a TURN secret is set)",
               response=wire.IceServersOut)
    async def ice_servers() -> Response:
        return json_response(svc.calls.ice_servers(await me()))

    # ---- ops

    @app.route("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.route("/readyz")
    async def readyz() -> Response:
        try:
            with trio.fail_after(settings.db_timeout):
                await svc.store.ping()
        except (trio.TooSlowError, ChatError, OSError) as exc:
            return json_response(error_body("unavailable", f"storage unreachable: {exc!r}"), 503)
        return json_response({"status": "ready", "node_id": settings.node_id})

    @app.route("/metrics")
    async def metrics() -> Response:
        return Response(svc.metrics.render(svc), content_type="text/plain; version=0.0.4")

    @app.route("/api/openapi.json")
    async def openapi() -> Response:
        return json_response(api.openapi())

    @app.route("/")
    async def index() -> Response:
        return await send_from_directory(WEB_DIR, "index.html")

    @app.route("/web/<path:name>")
    async def web(name: str) -> Response:
        return await send_from_directory(WEB_DIR, name)

    app.extensions["chatsrv_api"] = api
    return app
