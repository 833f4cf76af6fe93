"""Node-to-node gRPC (grpclib): other nodes deliver events to this node's connections.

The servicer runs on the trio-asyncio loop; what it calls (LocalRouter.publish, and through
it the connections' send_nowait) is synchronous and never blocks, so it is safe from there.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections import Counter
from typing import Any

import msgspec
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from trio_asyncio import aio_as_trio

from chatsrv._pb.chatsrv.node.v1 import node_grpc, node_pb2
from chatsrv.adapters.cluster.peer_link import NODE_KEY_HEADER, node_key
from chatsrv.adapters.memory import LocalRouter
from chatsrv.config import Settings
from chatsrv.domain.model import CallSignal, Device
from chatsrv.protocol.frames import Frame
from chatsrv.tasks import StartupError

log = logging.getLogger(__name__)

_WILDCARDS = ("", "0.0.0.0", "::")


class NodeServicer(node_grpc.NodeBase):
    """Hands each delivered event, encoded once on the sending node, to local connections
    (all of some users', one connection's, or all but one), and each call signal to the
    call service's inbox (`signals`: bounded; full, the signal is dropped and counted — the
    call then ends by its timeouts). Callers must show the cluster's node key (else
    UNAUTHENTICATED)."""

    def __init__(self, local: LocalRouter, signals: trio.MemorySendChannel[CallSignal], *,
                 key: str, counters: Counter[str]) -> None:
        self._local = local
        self._signals = signals
        self._counters = counters
        self._key = key.encode()

    async def Deliver(self, stream: Stream[node_pb2.DeliverRequest, node_pb2.DeliverReply]) -> None:
        metadata = stream.metadata
        shown = str(metadata.get(NODE_KEY_HEADER, "")) if metadata is not None else ""
        if not hmac.compare_digest(shown.encode(), self._key):
            raise GRPCError(Status.UNAUTHENTICATED, "not a node of this cluster")
        request = await stream.recv_message()
        if request is None:
            return
        for envelope in request.events:
            if envelope.HasField("signal"):
                self._signal(envelope.signal)
                continue
            event = Frame.from_text(envelope.type, envelope.text, droppable=envelope.droppable)
            if envelope.connection_id:
                self._local.send_to(envelope.user_ids[0], envelope.connection_id, event)
            else:
                self._local.publish(envelope.user_ids, event,
                                    exclude=envelope.exclude_connection_id or None)
        await stream.send_message(node_pb2.DeliverReply(accepted=len(request.events)))


    def _signal(self, s: node_pb2.CallSignal) -> None:
        try:
            signal = CallSignal(
                call_id=s.call_id, action=s.action,
                device=Device(s.user_id, s.connection_id, s.node),
                payload=_decode(s.payload_json), ref=_decode(s.ref_json))
            self._signals.send_nowait(signal)
        except (trio.WouldBlock, msgspec.DecodeError):
            self._counters["peer_signals_dropped"] += 1


def _decode(text: str) -> Any:
    return msgspec.json.decode(text) if text else None


def _bind(host: str, port: int) -> socket.socket:
    if ":" in host:
        return socket.create_server((host, port), family=socket.AF_INET6, backlog=128,
                                    dualstack_ipv6=host == "::")
    return socket.create_server((host or "0.0.0.0", port), backlog=128)


def advertised_address(settings: Settings, port: int) -> str:
    """How peers reach this node: NODE_ADDRESS, else GRPC_HOST and the bound port (the host
    name when GRPC_HOST is a wildcard)."""
    if settings.node_address:
        return settings.node_address
    host = settings.grpc_host
    if host in _WILDCARDS:
        host = socket.gethostname()
        log.warning("GRPC_HOST %r is a wildcard: advertising %s:%d to peers; set NODE_ADDRESS "
                    "if they cannot resolve it", settings.grpc_host, host, port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _start(server: Server, sock: socket.socket) -> None:
    await server.start(sock=sock)


async def _stop(server: Server) -> None:
    server.close()
    await server.wait_closed()


async def serve_node_rpc(local: LocalRouter, signals: trio.MemorySendChannel[CallSignal],
                         settings: Settings, *, counters: Counter[str],
                         task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the node-to-node API on grpc_host:grpc_port (0: any free port) until cancelled.
    task_status gets the address peers use. Raises StartupError if the port cannot be bound."""
    try:
        sock = _bind(settings.grpc_host, settings.grpc_port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {settings.grpc_host}:{settings.grpc_port} for "
                           f"node-to-node gRPC: {exc.strerror or exc} (GRPC_HOST, GRPC_PORT)"
                           ) from exc
    server = Server([NodeServicer(local, signals, key=node_key(settings), counters=counters)])
    try:
        await aio_as_trio(_start)(server, sock)
    except BaseException:
        sock.close()
        raise
    try:
        port = sock.getsockname()[1]
        log.info("node-to-node gRPC on %s:%d", settings.grpc_host, port)
        task_status.started(advertised_address(settings, port))
        await trio.sleep_forever()
    finally:
        # closes the listening socket and cancels running handlers
        with trio.move_on_after(settings.cleanup_deadline, shield=True):
            await aio_as_trio(_stop)(server)
