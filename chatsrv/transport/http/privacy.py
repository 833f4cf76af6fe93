"""Blocking and privacy over REST: block/unblock a user, my blocks, my profile settings."""

from __future__ import annotations

from quart import Response

from chatsrv.domain.model import iso
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_user
from chatsrv.services.presence import PresenceService
from chatsrv.services.privacy import PrivacyService
from chatsrv.transport.http.api import Api, body, json_response, no_content
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, privacy: PrivacyService,
             presence: PresenceService) -> None:
    @api.route("PATCH", "/api/users/me", summary="Change my display name and privacy "
               "settings (presence_visible, read_receipts_visible)", body=rest.ProfileIn,
               response=rest.UserOut)
    async def users_me_update() -> Response:
        uid = await edge.user_id()
        b = await body(rest.ProfileIn)
        user = await privacy.update_profile(
            uid, display_name=b.display_name, presence_visible=b.presence_visible,
            read_receipts_visible=b.read_receipts_visible)
        status = (await presence.statuses([user]))[user.id]
        return json_response(render_user(user, status=status, private=True))

    @api.route("PUT", "/api/users/<user_id>/block", summary="Block a user (idempotent): no "
               "new one_to_one, messages, calls, presence, typing or receipts between us",
               status=204)
    async def users_block(user_id: str) -> Response:
        await privacy.block(await edge.user_id(), user_id)
        return no_content()

    @api.route("DELETE", "/api/users/<user_id>/block", summary="Unblock a user (idempotent)",
               status=204)
    async def users_unblock(user_id: str) -> Response:
        await privacy.unblock(await edge.user_id(), user_id)
        return no_content()

    @api.route("GET", "/api/blocks", summary="The users I blocked, newest first",
               response=rest.BlocksOut)
    async def blocks_list() -> Response:
        blocks = await privacy.blocks(await edge.user_id())
        return json_response(rest.BlocksOut(blocks=[
            rest.BlockOut(user=render_user(b.user), created_at=iso(b.created_at) or "")
            for b in blocks]))
