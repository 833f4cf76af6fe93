"""Cluster routing, client side: deliver to users connected to other nodes over grpclib.

`ClusterRouter` satisfies the Router port. Local users go through the LocalRouter; for users
on other nodes it looks their nodes up in an in-memory view (kept current by the Redis
directory, adapters/redis.py) and queues the event on that node's `PeerLink` (peer_link.py)
without blocking. Each link is one task draining its bounded queue in batches over one
long-lived grpclib channel (unary `Deliver` calls, one per batch, in order).

Delivery between nodes is best effort: every message is committed before it is published,
so a client that misses a live event gets it with `sync`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import trio

from chatsrv._pb.chatsrv.node.v1 import node_pb2
from chatsrv.adapters.cluster.peer_link import PeerLink
from chatsrv.adapters.memory import LocalRouter
from chatsrv.config import Settings
from chatsrv.domain.model import CallSignal
from chatsrv.domain.ports import Subscriber
from chatsrv.metrics import Metrics
from chatsrv.protocol.frames import Frame
from chatsrv.tasks import open_background, supervised

_encode = msgspec.json.Encoder().encode


def _json(value: object) -> str:
    return "" if value is None else _encode(value).decode()


class ClusterRouter:
    """Router of a cluster member (see the module docstring). Never blocks.

    The view methods (`set_node`, `drop_node`, `users_changed`, `replace_view`) are called
    by the Redis directory only. Also the cluster's CallBus: call signals travel on the
    same ordered link as the frames (`signal`).
    """

    def __init__(self, local: LocalRouter, *, instance: str, settings: Settings,
                 failures: Counter[str]) -> None:
        self.local_router = local
        self._failures = failures
        self.instance = instance
        self.counters: Counter[str] = Counter()
        self._settings = settings
        # links made by set_node (called from the directory's tasks), waiting for `run` to
        # start them: at most one per known node
        self._to_start: list[PeerLink] = []
        self._wakeup = trio.lowlevel.ParkingLot()
        self._view_changed = trio.lowlevel.ParkingLot()
        self._links: dict[str, PeerLink] = {}
        self._users_of: dict[str, set[str]] = {}  # remote instance -> its users
        self._where: dict[str, set[str]] = {}  # remote user -> instances
        self._node_lost: list[Callable[[str], None]] = []

    # ---------------------------------------------------------------- Router port

    def attach(self, sub: Subscriber) -> None:
        self.local_router.attach(sub)

    def detach(self, sub: Subscriber) -> None:
        self.local_router.detach(sub)

    def local(self, user_id: str) -> Sequence[Subscriber]:
        return self.local_router.local(user_id)

    def publish(self, user_ids: Iterable[str], event: Frame, *,
                exclude: str | None = None) -> None:
        ids = user_ids if isinstance(user_ids, (list, tuple)) else list(user_ids)
        self.local_router.publish(ids, event, exclude=exclude)
        targets: dict[str, list[str]] = {}
        for uid in ids:
            for instance in self._where.get(uid, ()):
                targets.setdefault(instance, []).append(uid)
        for instance, uids in targets.items():
            self._links[instance].send_nowait(node_pb2.Envelope(
                user_ids=uids, type=event.type, text=event.text, droppable=event.droppable,
                exclude_connection_id=exclude or ""))

    def send_to(self, user_id: str, connection_id: str, event: Frame, *,
                node: str = "") -> None:
        if not node or node == self.instance:
            self.local_router.send_to(user_id, connection_id, event)
            return
        link = self._links.get(node)
        if link is None:
            self.counters["peer_events_dropped"] += 1  # that node is gone
            return
        link.send_nowait(node_pb2.Envelope(user_ids=[user_id], type=event.type,
                                           text=event.text, connection_id=connection_id))

    def reach(self, user_id: str) -> int:
        return len(self.local_router.local(user_id)) + len(self._where.get(user_id, ()))

    def on_node_lost(self, callback: Callable[[str], None]) -> None:
        self._node_lost.append(callback)

    # ---------------------------------------------------------------- CallBus port

    def signal(self, instance: str, signal: CallSignal) -> None:
        """Queue a call signal for another node (never blocks; dropped if that node is
        gone or its queue is full: calls then end by their ring timeout or NODE_TTL)."""
        link = self._links.get(instance)
        if link is None:
            self.counters["peer_signals_dropped"] += 1
            return
        d = signal.device
        link.send_nowait(node_pb2.Envelope(user_ids=[d.user_id], signal=node_pb2.CallSignal(
            call_id=signal.call_id, action=signal.action, user_id=d.user_id,
            connection_id=d.connection_id, node=d.node or self.instance,
            payload_json=_json(signal.payload), ref_json=_json(signal.ref))))

    def connection_count(self) -> int:
        return self.local_router.connection_count()

    def user_count(self) -> int:
        return self.local_router.user_count()

    # ---------------------------------------------------------------- the view

    def nodes(self) -> set[str]:
        return set(self._links)

    def nodes_of(self, user_id: str) -> frozenset[str]:
        """Other nodes where the user has connections, as far as this node knows."""
        return frozenset(self._where.get(user_id, ()))

    def remote_online(self, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if u in self._where}

    def set_node(self, instance: str, address: str, users: Iterable[str] | None = None) -> None:
        """Know a live node (start its link); with `users`, replace its users."""
        if instance == self.instance:
            return
        link = self._links.get(instance)
        if link is not None and link.address != address:
            self.drop_node(instance)
            link = None
        if link is None:
            link = self._links[instance] = PeerLink(
                instance, address, origin=self.instance, settings=self._settings,
                counters=self.counters)
            self._users_of[instance] = set()
            self._to_start.append(link)
            self._wakeup.unpark()  # `run` starts it; events queue in the link meanwhile
        if users is not None:
            old = self._users_of[instance]
            new = set(users)
            self._forget(instance, old - new)
            self._remember(instance, new - old)

    def drop_node(self, instance: str) -> None:
        """A node left or stopped heartbeating: forget its users, cancel its link, tell the
        listeners (calls owned there end)."""
        link = self._links.pop(instance, None)
        if link is None:
            return
        link.cancel()
        self._forget(instance, self._users_of.pop(instance, set()))
        for callback in self._node_lost:
            callback(instance)

    def users_changed(self, instance: str, user_ids: Iterable[str], *, online: bool) -> None:
        if instance not in self._links:
            return
        if online:
            self._remember(instance, set(user_ids))
        else:
            self._forget(instance, set(user_ids))

    def replace_view(self, nodes: Mapping[str, tuple[str, Iterable[str]]]) -> None:
        """The whole view at once: instance -> (address, users) of every live node."""
        for instance in self.nodes() - nodes.keys():
            self.drop_node(instance)
        for instance, (address, users) in nodes.items():
            self.set_node(instance, address, users)

    async def wait_view(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds, re-checked whenever the view changes (e.g. a user
        becomes routable). The caller bounds it."""
        while not predicate():
            await self._view_changed.park()

    def _remember(self, instance: str, user_ids: set[str]) -> None:
        self._users_of[instance] |= user_ids
        for uid in user_ids:
            self._where.setdefault(uid, set()).add(instance)
        self._view_changed.unpark_all()

    def _forget(self, instance: str, user_ids: set[str]) -> None:
        if instance in self._users_of:
            self._users_of[instance] -= user_ids
        for uid in user_ids:
            where = self._where.get(uid)
            if where is not None:
                where.discard(instance)
                if not where:
                    del self._where[uid]
        self._view_changed.unpark_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: own the peer links — start each new one (supervised) in this task's
        nursery. A dropped link stops by itself (PeerLink.cancel)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                while not self._to_start:
                    await self._wakeup.park()
                links, self._to_start = self._to_start, []
                for link in links:
                    nursery.start_soon(partial(
                        supervised, f"peer-link-{link.instance}", link.run,
                        failures=self._failures, first_delay=self._settings.task_restart_delay))

    def register_metrics(self, metrics: Metrics) -> None:
        self.local_router.register_metrics(metrics)
        for name in ("peer_events_sent", "peer_batches_sent", "peer_events_dropped",
                     "peer_droppable_dropped", "peer_rpc_failures"):
            metrics.counter(name, f"node-to-node: {name.replace('_', ' ')}",
                            partial(self.counters.__getitem__, name))

    async def aclose(self) -> None:
        """Stop taking events and wait until every link has sent what it holds."""
        links = list(self._links.values())
        for link in links:
            link.close()
        for link in links:
            await link.done.wait()


def new_instance_id(node_id: str) -> str:
    """This run of the node: node id plus a random suffix, so a restarted node is never
    mistaken for its previous run (whose users the others turn offline)."""
    return f"{node_id}.{secrets.token_hex(4)}"


@asynccontextmanager
async def open_cluster_router(settings: Settings, local: LocalRouter, *,
                              failures: Counter[str]) -> AsyncIterator[ClusterRouter]:
    """Own the peer links for the block. On exit, queued events are flushed (shielded,
    within CLEANUP_DEADLINE: presence's last offline announcements go out this way), then
    links close."""
    router = ClusterRouter(local, instance=new_instance_id(settings.node_id),
                           settings=settings, failures=failures)
    async with open_background() as nursery:
        await nursery.start(router.run)
        try:
            yield router
        finally:
            with trio.move_on_after(settings.cleanup_deadline, shield=True):
                await router.aclose()

