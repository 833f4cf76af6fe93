"""/api/users: my profile, someone's profile, search."""

from __future__ import annotations

from quart import Response

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import parse_id
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_user
from chatsrv.services.auth import AuthService
from chatsrv.services.presence import PresenceService
from chatsrv.transport.http.api import Api, json_response, limit_arg, text_arg
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, auth: AuthService, presence: PresenceService) -> None:
    @api.route("GET", "/api/users/me", summary="My profile", response=rest.UserOut)
    async def users_me() -> Response:
        user = await auth.get_user(await edge.user_id())
        status = (await presence.statuses([user]))[user.id]
        return json_response(render_user(user, status=status, private=True))

    @api.route("GET", "/api/users/<user_id>", summary="A user's profile; status and last_seen "
               "only for users who share a conversation with me (and show their presence, "
               "with no block between us)", response=rest.UserOut)
    async def users_get(user_id: str) -> Response:
        viewer = await edge.user_id()
        user = await auth.get_user(parse_id(user_id, "user_id"))
        shown, st = await presence.seen([user], viewer=viewer)
        return json_response(render_user(shown[user.id], status=st[user.id]))

    @api.route("GET", "/api/users", summary="Search active users by username or display name",
               response=rest.UsersOut, query=("q", "limit"))
    async def users_search() -> Response:
        viewer = await edge.user_id()
        await edge.limits.take(edge.limits.expensive, viewer)
        q = text_arg("q", max_chars=100)
        if not q:
            raise Invalid("q is required", field="q")
        users = await auth.search(q, limit=limit_arg(20, 100))
        shown, st = await presence.seen(users, viewer=viewer)
        return json_response(rest.UsersOut(users=[render_user(shown[u.id], status=st[u.id])
                                                  for u in users]))
