"""/api/push (Web Push key and subscriptions) and /api/conversations/{id}/mute."""

from __future__ import annotations

from datetime import UTC, datetime

from quart import Response

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import iso
from chatsrv.domain.push import PushSubscription
from chatsrv.protocol import push as rest
from chatsrv.services.push import PushService
from chatsrv.transport.http.api import Api, body, json_response, no_content, optional_body
from chatsrv.transport.http.edge import Edge


def _time(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # in UTC here: a time that has no UTC form (year 9999 west of Greenwich) is refused
        # now, not by the database driver
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise Invalid("until must be an ISO 8601 time", field="until") from None


def _subscription(s: PushSubscription) -> rest.SubscriptionOut:
    return rest.SubscriptionOut(id=s.id, endpoint=s.endpoint, created_at=iso(s.created_at) or "")


def register(api: Api, edge: Edge, *, push: PushService) -> None:
    @api.route("GET", "/api/push/vapid-public-key", summary="The VAPID public key to pass "
               "to PushManager.subscribe as applicationServerKey", response=rest.VapidKeyOut)
    async def push_vapid_key() -> Response:
        await edge.user_id()
        return json_response(rest.VapidKeyOut(key=push.public_key))

    @api.route("POST", "/api/push/subscriptions", summary="Register this device's Web Push "
               "subscription (the same endpoint again updates it)", body=rest.SubscriptionIn,
               response=rest.SubscriptionOut, status=201,
               also={200: "the endpoint was subscribed already: updated"})
    async def push_subscribe() -> Response:
        who = await edge.principal()
        b = await body(rest.SubscriptionIn)
        sub, created = await push.subscribe(who.user_id, endpoint=b.endpoint,
                                            p256dh=b.keys.p256dh, auth=b.keys.auth,
                                            session_id=who.session_id)
        return json_response(_subscription(sub), 201 if created else 200)

    @api.route("GET", "/api/push/subscriptions", summary="My push subscriptions",
               response=rest.SubscriptionsOut)
    async def push_subscriptions() -> Response:
        found = await push.subscriptions(await edge.user_id())
        return json_response(rest.SubscriptionsOut([_subscription(s) for s in found]))

    @api.route("DELETE", "/api/push/subscriptions/<subscription_id>", summary="Delete one of "
               "my push subscriptions", status=204)
    async def push_unsubscribe(subscription_id: str) -> Response:
        await push.unsubscribe(await edge.user_id(), subscription_id)
        return no_content()

    @api.route("PUT", "/api/conversations/<conversation_id>/mute", summary="Mute a "
               "conversation's pushes (mentions still push) until a time, or until unmuted",
               body=rest.MuteIn, response=rest.MuteOut)
    async def conversation_mute(conversation_id: str) -> Response:
        uid = await edge.user_id()
        b = await optional_body(rest.MuteIn)
        cid, until = await push.mute(uid, conversation_id, _time(b.until))
        return json_response(rest.MuteOut(conversation_id=cid, muted=True, until=iso(until)))

    @api.route("DELETE", "/api/conversations/<conversation_id>/mute", summary="Unmute a "
               "conversation", status=204)
    async def conversation_unmute(conversation_id: str) -> Response:
        await push.unmute(await edge.user_id(), conversation_id)
        return no_content()

    @api.route("GET", "/api/push/mutes", summary="My muted conversations",
               response=rest.MutesOut)
    async def push_mutes() -> Response:
        found = await push.mutes(await edge.user_id())
        return json_response(rest.MutesOut([
            rest.MuteOut(conversation_id=c, muted=True, until=iso(u)) for c, u in found.items()]))
