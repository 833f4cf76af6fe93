"""Calls over REST: history and ICE servers (signalling itself is on the WebSocket)."""

from __future__ import annotations

from datetime import UTC, datetime

from quart import Response, request

from chatsrv.domain.errors import Invalid
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_call
from chatsrv.protocol.text import check_text
from chatsrv.services.calls import CallService
from chatsrv.transport.http.api import Api, int_arg, json_response
from chatsrv.transport.http.edge import Edge


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        check_text(raw, name)
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, Invalid):
        raise Invalid(f"{name} must be an ISO 8601 time", field=name) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def register(api: Api, edge: Edge, *, calls: CallService) -> None:
    @api.route("GET", "/api/calls", summary="My call history, newest first",
               response=rest.CallsOut, query=("limit", "before"))
    async def calls_list() -> Response:
        uid = await edge.user_id()
        found = await calls.history(uid, limit=int_arg("limit", 50) or 0,
                                    before=_time_arg("before"))
        return json_response(rest.CallsOut(calls=[render_call(c, uid) for c in found]))

    @api.route("GET", "/api/ice-servers", summary="STUN/TURN servers for RTCPeerConnection "
               "(TURN REST API credentials when a TURN secret is set)",
               response=rest.IceServersOut)
    async def ice_servers() -> Response:
        return json_response(calls.ice_servers(await edge.user_id()))
