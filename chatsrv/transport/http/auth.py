"""/api/auth: register, login, refresh, logout, password change."""

from __future__ import annotations

from quart import Response

from chatsrv.domain.errors import Invalid
from chatsrv.protocol import rest
from chatsrv.protocol.render import auth_out
from chatsrv.services.auth import AuthService, Session
from chatsrv.services.presence import PresenceService
from chatsrv.transport.http.api import Api, body, json_response, no_content, optional_body
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, auth: AuthService, presence: PresenceService) -> None:
    async def signed_in(s: Session, status: int = 200) -> Response:
        online = await presence.statuses([s.user])
        return json_response(auth_out(s, status=online[s.user.id] or "offline"), status)

    @api.route("POST", "/api/auth/register", summary="Create an account (403 "
               "registration_closed when ALLOW_REGISTRATION is false)", auth=False,
               body=rest.RegisterIn, response=rest.AuthOut, status=201)
    async def auth_register() -> Response:
        b = await body(rest.RegisterIn)
        s = await auth.register(username=b.username, email=b.email, password=b.password,
                                display_name=b.display_name, address=edge.address())
        return await signed_in(s, 201)

    @api.route("POST", "/api/auth/login", summary="Sign in by email or username (429 after "
               "too many failures for the account or the address)", auth=False,
               body=rest.LoginIn, response=rest.AuthOut)
    async def auth_login() -> Response:
        b = await body(rest.LoginIn)
        login = b.email or b.username
        if not login:
            raise Invalid("give email or username", field="email")
        return await signed_in(await auth.login(login=login, password=b.password,
                                                address=edge.address()))

    @api.route("POST", "/api/auth/refresh", summary="Rotate a refresh token (a spent one "
               "revokes its session)", auth=False, body=rest.RefreshIn, response=rest.AuthOut)
    async def auth_refresh() -> Response:
        b = await body(rest.RefreshIn)
        return await signed_in(await auth.refresh(b.refresh_token, address=edge.address()))

    @api.route("POST", "/api/auth/logout", summary="End a session: the refresh token's, or the "
               "bearer token's", auth=False, body=rest.LogoutIn, status=204)
    async def auth_logout() -> Response:
        b = await optional_body(rest.LogoutIn)
        if b.refresh_token:
            await auth.logout(refresh_token=b.refresh_token)
        else:
            await auth.logout(principal=await edge.principal())
        return no_content()

    @api.route("POST", "/api/auth/password", summary="Change my password; every other session "
               "ends", body=rest.PasswordIn, status=204)
    async def auth_password() -> Response:
        who = await edge.principal()
        b = await body(rest.PasswordIn)
        await auth.change_password(who, old_password=b.old_password,
                                   new_password=b.new_password)
        return no_content()
