"""One node-to-node link, client side: `PeerLink`, the bounded queue to one other node and
the task that drains it in batches of `Deliver` calls over one long-lived grpclib channel;
with what a link needs to reach its peer (the node key, resolving and splitting the peer's
address) and what counts as a failed call. ClusterRouter (peers.py) owns the links.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections import Counter

import grpclib.exceptions
import trio
from grpclib.client import Channel
from trio_asyncio import aio_as_trio

from chatsrv._pb.chatsrv.node.v1 import node_grpc, node_pb2
from chatsrv.adapters.aio import raised_inside
from chatsrv.config import Settings

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
