"""Cluster routing, client side: deliver to users connected to other nodes over grpclib.

`ClusterRouter` satisfies the Router port. Local users go through the LocalRouter; for users
on other nodes it looks their nodes up in an in-memory view (kept current by the Redis
directory, adapters/redis.py) and queues the event on that node's `PeerLink` without
blocking. Each link is one task draining its bounded queue in batches over one long-lived
grpclib channel (unary `Deliver` calls, one per batch, in order).

Delivery between nodes is best effort: every message is committed before it is published,
so a client that misses a live event gets it with `sync`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

import grpclib.exceptions
import msgspec
import trio
from grpclib.client import Channel
from trio_asyncio import aio_as_trio

from chatsrv._pb.chatsrv.node.v1 import node_grpc, node_pb2
from chatsrv.adapters.aio import raised_inside
from chatsrv.adapters.memory import LocalRouter
from chatsrv.config import Settings
from chatsrv.domain.model import CallSignal
from chatsrv.domain.ports import Subscriber
from chatsrv.metrics import Metrics
from chatsrv.protocol.frames import Frame
from chatsrv.tasks import open_background, supervised

log = logging.getLogger(__name__)

# What a failed node-to-node call can raise; the batch is dropped (clients heal by sync).
_RPC_FAILED = (OSError, grpclib.exceptions.GRPCError, grpclib.exceptions.StreamTerminatedError,
               grpclib.exceptions.ProtocolError, trio.TooSlowError)


def _rpc_failed(exc: BaseException) -> bool:
    """A failed call (see _RPC_FAILED), or grpclib's AttributeError on a connection it
    lost meanwhile (grpclib#110, #185) — raised inside grpclib or h2, not by our code."""
    return isinstance(exc, _RPC_FAILED) or (isinstance(exc, AttributeError)
                                            and raised_inside(exc, "grpclib", "h2"))

# What a link carries: envelopes, built once when queued (a frame for some users, a frame for
# one connection, or a call signal)
Item = node_pb2.Envelope

NODE_KEY_HEADER = "x-chatsrv-node-key"


def node_key(settings: Settings) -> str:
    """What a node shows its peers: derived from JWT_SECRET, which every node of a cluster
    shares (and whose holder could forge any token anyway). Keeps strangers who reach the
    gRPC port from writing frames to users."""
    return hmac.new(settings.jwt_secret.encode(), b"chatsrv node-to-node v1",
                    hashlib.sha256).hexdigest()


async def resolve_host(host: str) -> str:
    """One address of `host`, looked up on a worker thread (cancellable: the caller's
    deadline applies). An IP literal is returned as is."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    return str(infos[0][4][0])


_encode = msgspec.json.Encoder().encode


def _json(value: object) -> str:
    return "" if value is None else _encode(value).decode()


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _open_channel(host: str, port: int) -> Channel:
    # grpclib binds its channel to the running asyncio loop: create it on the asyncio side.
    return Channel(host, port)


async def _close_channel(channel: Channel) -> None:
    channel.close()


class PeerLink:
    """The way to one remote node: a bounded queue and the task that drains it.

    Overflow policy (the publisher never blocks): droppable events (typing) are refused
    once the queue is half full, so they never take room that messages need; when the queue
    is full, the event is dropped and counted. Either way the client heals with `sync`.
    """

    def __init__(self, instance: str, address: str, *, origin: str, settings: Settings,
                 counters: Counter[str]) -> None:
        self.instance = instance
        self.address = address
        self._origin = origin
        self._size = settings.peer_queue_size
        self._batch_size = settings.peer_batch_size
        self._linger = settings.peer_batch_linger
        self._rpc_timeout = settings.peer_rpc_timeout
        self._counters = counters
        self._metadata = {NODE_KEY_HEADER: node_key(settings)}
        self._send, self._recv = trio.open_memory_channel[Item](self._size)
        self._scope = trio.CancelScope()  # of the current run (a restart makes a new one)
        self._cancelled = False
        self.done = trio.Event()
        self._failures = 0

    def send_nowait(self, item: Item) -> None:
        if item.droppable and self._send.statistics().current_buffer_used >= self._size // 2:
            self._counters["peer_droppable_dropped"] += 1
            return
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._counters["peer_events_dropped"] += 1
            if self._counters["peer_events_dropped"] % 1000 == 1:
                log.warning("queue to node %s full (%d): dropping events (%d so far)",
                            self.instance, self._size, self._counters["peer_events_dropped"])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._counters["peer_events_dropped"] += 1

    def close(self) -> None:
        """No more events: run() sends what is queued, then returns."""
        self._send.close()

    def cancel(self) -> None:
        """Stop at once (the node is gone), dropping what is queued."""
        self._cancelled = True
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue into `Deliver` calls until closed (after flushing) or cancelled
        (`scope`); then `done` is set. A failed call drops its batch, closes the channel (a
        new one connects for the next batch) and backs off; never raises it. Anything
        unforeseen raises (the supervisor starts the link again, its queue intact)."""
        task_status.started()
        host, port = split_address(self.address)
        channel: Channel | None = None
        self._scope = trio.CancelScope()
        if self._cancelled:
            self._scope.cancel()
        try:
            with self._scope:
                while batch := await self._next_batch():
                    while channel is None:
                        # The peer's name is resolved here, bounded by PEER_RPC_TIMEOUT and
                        # again after every failure (a container's name may resolve late);
                        # meanwhile the batch waits and new events queue (bounded).
                        ip = await self._resolve(host)
                        if ip is not None:
                            channel = await aio_as_trio(_open_channel)(ip, port)
                    if await self._deliver(node_grpc.NodeStub(channel), batch):
                        continue
                    # grpclib keeps using a channel whose connection was lost (and fails
                    # with AttributeError, grpclib#110): start over with a new one.
                    with trio.move_on_after(self._rpc_timeout, shield=True):
                        await aio_as_trio(_close_channel)(channel)
                    channel = None
                    # 0.1 s doubling to 2 s: events queued meanwhile go in the next batch
                    # (or overflow); the directory drops the link if the node is dead.
                    await trio.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0))
        except Exception:
            raise  # restarted by its supervisor: not done
        except BaseException:
            self.done.set()
            raise
        else:
            self.done.set()
        finally:
            if channel is not None:
                with trio.move_on_after(self._rpc_timeout, shield=True):
                    await aio_as_trio(_close_channel)(channel)

    async def _resolve(self, host: str) -> str | None:
        """The peer's address; None after a failed or slow lookup (logged once, backed
        off)."""
        try:
            with trio.fail_after(self._rpc_timeout):
                ip = await resolve_host(host)
        except (OSError, trio.TooSlowError) as exc:
            self._counters["peer_resolve_failures"] += 1
            self._failures += 1
            if self._failures == 1:
                log.warning("node %s: cannot resolve %s yet (%s); events wait in its queue",
                            self.instance, host, exc or type(exc).__name__)
            await trio.sleep(min(0.1 * 2 ** (self._failures - 1), 2.0))
            return None
        return ip

    async def _next_batch(self) -> list[Item]:
        """Up to batch_size events: what is queued now, then what comes within `linger`.
        Waits for the first one; [] once the queue is closed and empty."""
        try:
            batch = [await self._recv.receive()]
        except trio.EndOfChannel:
            return []
        try:
            while len(batch) < self._batch_size:
                batch.append(self._recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        if len(batch) < self._batch_size and self._linger > 0:
            with trio.move_on_after(self._linger):
                try:
                    while len(batch) < self._batch_size:
                        batch.append(await self._recv.receive())
                except trio.EndOfChannel:
                    pass
        return batch

    async def _deliver(self, stub: node_grpc.NodeStub, batch: list[Item]) -> bool:
        """One `Deliver` call; False (batch dropped and counted) if it failed."""
        request = node_pb2.DeliverRequest(from_instance=self._origin, events=batch)
        try:
            # One asyncio task per call: cancelling it (timeout, shutdown) resets the
            # HTTP/2 stream, so nothing is left running on the other node.
            with trio.fail_after(self._rpc_timeout):
                await aio_as_trio(stub.Deliver)(request, metadata=self._metadata)
        except Exception as exc:
            if not _rpc_failed(exc):
                raise
            self._counters["peer_events_dropped"] += len(batch)
            self._counters["peer_rpc_failures"] += 1
            self._failures += 1
            if self._failures == 1:
                log.warning("node %s (%s) unreachable: %r; dropping events until it answers",
                            self.instance, self.address, exc)
            return False
        if self._failures:
            log.info("node %s reachable again", self.instance)
            self._failures = 0
        self._counters["peer_events_sent"] += len(batch)
        self._counters["peer_batches_sent"] += 1
        return True


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

