"""Single-node adapters: the in-process router and presence directory.

Real implementations of the Router and Directory ports; the embedded mode runs on them and
the cluster adapters build on the router for their local deliveries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import trio

from chatsrv.domain.model import CallSignal
from chatsrv.domain.ports import Subscriber
from chatsrv.metrics import Metrics
from chatsrv.protocol.frames import Frame

log = logging.getLogger(__name__)


class LocalRouter:
    """user id -> this node's live connections of that user."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscriber]] = {}

    def attach(self, sub: Subscriber) -> None:
        self._subs.setdefault(sub.user_id, []).append(sub)

    def detach(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is None:
            return
        try:
            subs.remove(sub)
        except ValueError:
            return
        if not subs:
            del self._subs[sub.user_id]

    def publish(self, user_ids: Iterable[str], event: Frame, *,
                exclude: str | None = None) -> None:
        # The frame is encoded once (Frame.text is cached) for every connection it reaches.
        for uid in user_ids:
            for sub in self._subs.get(uid, ()):
                if sub.connection_id != exclude:
                    sub.send_nowait(event)

    def send_to(self, user_id: str, connection_id: str, event: Frame, *,
                node: str = "") -> None:
        for sub in self._subs.get(user_id, ()):
            if sub.connection_id == connection_id:
                sub.send_nowait(event)

    def reach(self, user_id: str) -> int:
        return len(self._subs.get(user_id, ()))

    def nodes_of(self, user_id: str) -> frozenset[str]:
        return frozenset()  # no other node

    def on_node_lost(self, callback: Callable[[str], None]) -> None:
        pass  # no other node to lose

    def local(self, user_id: str) -> Sequence[Subscriber]:
        return tuple(self._subs.get(user_id, ()))

    def connection_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def register_metrics(self, metrics: Metrics) -> None:
        metrics.gauge("connections", "WebSocket connections on this node",
                      self.connection_count)
        metrics.gauge("users_connected", "users with a connection on this node",
                      self.user_count)

    def user_count(self) -> int:
        return len(self._subs)


LOCAL_INSTANCE = "local"  # the one node of a single-node deployment


class NoBus:
    """The CallBus of a single node: every call is owned here, nothing goes elsewhere."""

    def signal(self, instance: str, signal: CallSignal) -> None:
        log.warning("call signal for unknown node %s dropped", instance)


class LocalDirectory:
    """Who is online on this (the only) node."""

    def __init__(self) -> None:
        self._online: set[str] = set()

    async def set_online(self, user_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        was_offline = user_id not in self._online
        self._online.add(user_id)
        return was_offline

    async def set_offline(self, user_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        was_online = user_id in self._online
        self._online.discard(user_id)
        return was_online

    async def online(self, user_ids: Sequence[str]) -> set[str]:
        await trio.lowlevel.checkpoint()
        return self._online.intersection(user_ids)

    async def instance_alive(self, instance: str) -> bool:
        await trio.lowlevel.checkpoint()
        return instance == LOCAL_INSTANCE  # the only node: any other owner is from before

    async def members_changed(self, conversation_id: str) -> None:
        await trio.lowlevel.checkpoint()  # no other node to tell

    def on_members_changed(self, callback: Callable[[str | None], None]) -> None:
        pass  # no other node to hear from

    @property
    def confirmed(self) -> bool:
        return True  # nothing to miss

    async def sessions_revoked(self, session_ids: list[str]) -> None:
        await trio.lowlevel.checkpoint()

    def on_sessions_revoked(self, callback: Callable[[list[str]], None]) -> None:
        pass

    async def privacy_changed(self, user_ids: list[str]) -> None:
        await trio.lowlevel.checkpoint()  # no other node to tell

    def on_privacy_changed(self, callback: Callable[[list[str] | None], None]) -> None:
        pass  # no other node to hear from
