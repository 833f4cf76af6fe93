"""The services of one running node, built by app.open_services and handed to transports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chatsrv.config import Settings
from chatsrv.domain.model import Arrival
from chatsrv.domain.ports import Router, Store
from chatsrv.services.auth import AdminService, AuthService
from chatsrv.services.batching import Coalescer
from chatsrv.services.calls import CallService
from chatsrv.services.commit import GroupCommitter
from chatsrv.services.conversations import ConversationService
from chatsrv.services.limits import RateLimits
from chatsrv.services.membership import MembershipCache
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService
from chatsrv.services.sessions import SessionRegistry


@dataclass(slots=True)
class Metrics:
    """Counters for /metrics (Prometheus text format)."""

    connections_opened: int = 0
    connections_closed: int = 0
    connections_evicted: int = 0
    connections_timed_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors_sent: int = 0
    messages_sent: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    # background task -> failures it was restarted after (tasks.supervised)
    task_failures: Counter[str] = field(default_factory=Counter)
    # more labelled counters, by metric name (e.g. ws_refused by reason)
    sources: dict[str, Counter[str]] = field(default_factory=dict)

    def render(self, svc: Any) -> str:
        lines = []
        for name in ("connections_opened", "connections_closed", "connections_evicted",
                     "connections_timed_out", "frames_in", "frames_out", "errors_sent", "messages_sent"):
            lines.append(f"# TYPE chatsrv_{name}_total counter")
            lines.append(f"chatsrv_{name}_total {getattr(self, name)}")
        router = svc.router
        if hasattr(router, "connection_count"):
            lines.append("# TYPE chatsrv_connections gauge")
            lines.append(f"chatsrv_connections {router.connection_count()}")
            lines.append("# TYPE chatsrv_users_connected gauge")
            lines.append(f"chatsrv_users_connected {router.user_count()}")
        for name, value in sorted(getattr(router, "counters", {}).items()):
            # cluster links: events sent to, or dropped for, other nodes
            lines.append(f"# TYPE chatsrv_{name}_total counter")
            lines.append(f"chatsrv_{name}_total {value}")
        commits = svc.commits
        for name, value in (("commit_batches", commits.batches),
                            ("commit_messages", commits.batched),
                            ("commit_store_seconds", round(commits.store_seconds, 6)),
                            ("commit_failed_batches", commits.failed_batches)):
            lines.append(f"# TYPE chatsrv_{name}_total counter")
            lines.append(f"chatsrv_{name}_total {value}")
        lines.append("# HELP chatsrv_task_failures_total background task failures (restarted)")
        lines.append("# TYPE chatsrv_task_failures_total counter")
        for task, count in sorted(self.task_failures.items()):
            lines.append(f'chatsrv_task_failures_total{{task="{task}"}} {count}')
        for metric, counts in sorted(self.sources.items()):
            lines.append(f"# TYPE chatsrv_{metric}_total counter")
            for label, count in sorted(counts.items()):
                lines.append(f'chatsrv_{metric}_total{{reason="{label}"}} {count}')
        calls = svc.calls
        lines.append("# TYPE chatsrv_calls_active gauge")
        lines.append(f"chatsrv_calls_active {calls.active_calls()}")
        return "\n".join(lines) + "\n"


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
    commits: GroupCommitter
    # what a connecting user needs (positions for `ready`, contacts for presence), fetched
    # for concurrent connects together
    arrivals: Coalescer[str, Arrival]
    metrics: Metrics = field(default_factory=Metrics)
