"""The inventory of one running node, built by wiring.open_services. The composition root
hands each transport the services it calls (app.build_asgi); tests reach in here."""

from __future__ import annotations

from dataclasses import dataclass

from chatsrv.config import Settings
from chatsrv.domain.model import Arrival
from chatsrv.domain.ports import Router, Store
from chatsrv.metrics import Metrics
from chatsrv.services.auth import AdminService, AuthService
from chatsrv.services.batching import Coalescer
from chatsrv.services.calls import CallService
from chatsrv.services.changes import ChangeService
from chatsrv.services.commit import GroupCommitter
from chatsrv.services.conversations import ConversationService
from chatsrv.services.limits import RateLimits
from chatsrv.services.membership import MembershipCache
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService
from chatsrv.services.privacy import PrivacyCache, PrivacyService
from chatsrv.services.push import PushService
from chatsrv.services.search import SearchService
from chatsrv.services.sessions import SessionRegistry
from chatsrv.services.uploads import UploadService


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    router: Router
    members: MembershipCache
    auth: AuthService
    sessions: SessionRegistry
    admin: AdminService
    limits: RateLimits
    conversations: ConversationService
    messaging: MessagingService
    presence: PresenceService
    calls: CallService
    changes: ChangeService
    commits: GroupCommitter
    # what a connecting user needs (positions for `ready`, contacts for presence), fetched
    # for concurrent connects together
    arrivals: Coalescer[str, Arrival]
    metrics: Metrics
    search: SearchService
    # blocks and privacy settings (services/privacy.py)
    privacy: PrivacyService
    privacy_cache: PrivacyCache
    uploads: UploadService
    # offline push and conversation mutes (services/push.py)
    push: PushService | None = None
