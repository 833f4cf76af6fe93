"""REST under /api, health, metrics, OpenAPI and the web client, on Quart-Trio.

One module per aggregate (auth, users, admin, conversations, messages, search, calls, ops), and docs
(the served documentation); each handler parses, calls one service method and renders.
`edge.py` is what every request passes through; `api.py` declares routes and builds the
OpenAPI document from their types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart_trio import QuartTrio

from chatsrv.config import Settings
from chatsrv.services.auth import AdminService, AuthService
from chatsrv.services.calls import CallService
from chatsrv.services.changes import ChangeService
from chatsrv.services.conversations import ConversationService
from chatsrv.services.limits import RateLimits
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService
from chatsrv.services.privacy import PrivacyService
from chatsrv.services.push import PushService
from chatsrv.services.search import SearchService
from chatsrv.services.uploads import UploadService
from chatsrv.transport.http import (
    admin,
    auth,
    calls,
    changes,
    conversations,
    docs,
    messages,
    ops,
    users,
)
from chatsrv.transport.http import privacy as privacy_routes
from chatsrv.transport.http import push as push_routes
from chatsrv.transport.http import search as search_routes
from chatsrv.transport.http import uploads as uploads_routes
from chatsrv.transport.http.api import Api
from chatsrv.transport.http.edge import Edge


def create_app(settings: Settings, *, auth_service: AuthService, admin_service: AdminService,
               presence: PresenceService, conversation_service: ConversationService,
               messaging: MessagingService, call_service: CallService, limits: RateLimits,
               ready: Callable[[], Awaitable[None]],
               metrics: Callable[[], tuple[bytes, str]],
               change_service: ChangeService, search_service: SearchService,
               privacy: PrivacyService | None = None,
               uploads: UploadService | None = None,
               push_service: PushService | None = None) -> QuartTrio:
    """The Quart app for everything but the WebSocket (see transport/ws.py)."""
    app = QuartTrio("chatsrv", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    api = Api(app)
    edge = Edge(app, settings, auth=auth_service, limits=limits)
    auth.register(api, edge, auth=auth_service, presence=presence)
    users.register(api, edge, auth=auth_service, presence=presence)
    admin.register(api, edge, auth=auth_service, admin=admin_service)
    conversations.register(api, edge, conversations=conversation_service)
    messages.register(api, edge, messaging=messaging, settings=settings, privacy=privacy)
    changes.register(api, edge, changes=change_service)
    calls.register(api, edge, calls=call_service)
    if privacy is not None:
        privacy_routes.register(api, edge, privacy=privacy, presence=presence)
    if uploads is not None:
        uploads_routes.register(api, edge, uploads=uploads)
    if push_service is not None:
        push_routes.register(api, edge, push=push_service)
    search_routes.register(api, edge, search=search_service, settings=settings)
    ops.register(api, settings=settings, ready=ready, metrics=metrics)
    docs.register(api)
    app.extensions["chatsrv_api"] = api
    return app
