"""/api/admin: operators' view of accounts (admins only, 403 for others)."""

from __future__ import annotations

from quart import Response

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Principal, parse_id
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_admin_user
from chatsrv.services.auth import AdminService, AuthService
from chatsrv.transport.http.api import Api, json_response, limit_arg, text_arg
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, auth: AuthService, admin: AdminService) -> None:
    async def as_admin() -> Principal:
        who = await edge.principal()
        await auth.require_admin(who)
        return who

    @api.route("GET", "/api/admin/users", summary="Every account, deactivated ones included "
               "(admins)", response=rest.AdminUsersOut, query=("q", "limit"))
    async def admin_users() -> Response:
        await as_admin()
        users = await admin.users(text_arg("q", max_chars=100), limit=limit_arg(50, 500))
        return json_response(rest.AdminUsersOut(users=[render_admin_user(u) for u in users]))

    @api.route("POST", "/api/admin/users/<user_id>/deactivate", summary="Refuse the account's "
               "logins and end its sessions (admins)", response=rest.AdminUserOut)
    async def admin_deactivate(user_id: str) -> Response:
        who = await as_admin()
        target = parse_id(user_id, "user_id")
        if target == who.user_id:
            raise Invalid("you cannot deactivate yourself", field="user_id")
        user, _ = await admin.deactivate(target)
        return json_response(render_admin_user(user))

    @api.route("POST", "/api/admin/users/<user_id>/reactivate", summary="Let a deactivated "
               "account sign in again (admins)", response=rest.AdminUserOut)
    async def admin_reactivate(user_id: str) -> Response:
        await as_admin()
        return json_response(render_admin_user(
            await admin.reactivate(parse_id(user_id, "user_id"))))
