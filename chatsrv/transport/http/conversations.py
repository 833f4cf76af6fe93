"""/api/conversations: create, list, read, membership."""

from __future__ import annotations

from quart import Response

from chatsrv.protocol import rest
from chatsrv.protocol.render import render_view
from chatsrv.services.conversations import ConversationService
from chatsrv.transport.http.api import Api, body, json_response, no_content
from chatsrv.transport.http.edge import Edge


def register(api: Api, edge: Edge, *, conversations: ConversationService) -> None:
    @api.route("POST", "/api/conversations", summary="Create a one_to_one (idempotent per "
               "pair) or group conversation", body=rest.CreateConversationIn,
               response=rest.ConversationOut, status=201,
               also={200: "the existing one_to_one of this pair"})
    async def conversations_create() -> Response:
        uid = await edge.user_id()
        b = await body(rest.CreateConversationIn)
        view, created = await conversations.create(
            uid, type=b.type, member_ids=b.member_ids, name=b.name, admin_ids=b.admin_ids)
        return json_response(render_view(view), 201 if created else 200)

    @api.route("GET", "/api/conversations", summary="My conversations with last message and "
               "unread count", response=rest.ConversationListOut)
    async def conversations_list() -> Response:
        views = await conversations.overview(await edge.user_id())
        return json_response(rest.ConversationListOut(
            conversations=[render_view(v) for v in views]))

    @api.route("GET", "/api/conversations/<conversation_id>", summary="A conversation with "
               "members and their watermarks", response=rest.ConversationOut)
    async def conversations_get(conversation_id: str) -> Response:
        return json_response(render_view(
            await conversations.view(await edge.user_id(), conversation_id)))

    @api.route("PATCH", "/api/conversations/<conversation_id>", summary="Rename a group "
               "(admins): conversation_updated to every member",
               body=rest.RenameConversationIn, response=rest.ConversationOut)
    async def conversations_rename(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.RenameConversationIn)
        return json_response(render_view(
            await conversations.rename(uid, conversation_id, b.name)))

    @api.route("POST", "/api/conversations/<conversation_id>/members", summary="Add group "
               "members (admins)", body=rest.MembersIn, response=rest.ConversationOut)
    async def members_add(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.MembersIn)
        return json_response(render_view(
            await conversations.add_members(uid, conversation_id, b.member_ids)))

    @api.route("DELETE", "/api/conversations/<conversation_id>/members/<user_id>",
               summary="Remove a group member (admins) or leave", status=204)
    async def members_remove(conversation_id: str, user_id: str) -> Response:
        await conversations.remove_member(await edge.user_id(), conversation_id, user_id)
        return no_content()

    @api.route("DELETE", "/api/conversations/<conversation_id>/members", summary="Remove "
               "group members given in the body (admins)", body=rest.MembersIn, status=204)
    async def members_remove_many(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await body(rest.MembersIn)
        await conversations.remove_members(uid, conversation_id, b.member_ids)
        return no_content()
