"""The node's TCP front: one port, WebSocket upgrades to our endpoint, the rest to Hypercorn.

The head of a connection's first request is read here. A WebSocket upgrade is served on the
raw stream by the endpoint (transport/websocket.py: no ASGI layer, no per-socket ping task);
anything else goes to Hypercorn's own connection server, the bytes already read put back in
front of the stream, so REST, the web client and HTTP keep-alive behave exactly as under
`hypercorn.trio.serve`. An upgrade that arrives later on a kept-alive connection reaches the
endpoint through ASGI.

This mirrors `hypercorn.trio.run.worker_serve` (lifespan, listeners, graceful shutdown) with
the connection handler swapped; plain TCP only (TLS is terminated in front of chatsrv).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from chatsrv.tasks import StartupError, supervised
from chatsrv.transport.ws import WebSocketEndpoint

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # bytes of request head looked at; Hypercorn judges longer ones
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
                  b"application/json\r\nconnection: close\r\ncontent-length: 72\r\n\r\n"
                  b'{"error":{"code":"too_large","message":"request head over 16384 bytes"}}')


class _Replayed(trio.abc.HalfCloseableStream):
    """`stream` with `head` put back in front: what Hypercorn reads first."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    # Hypercorn closes a `Connection: close` connection from inside the request's task,
    # which Quart-Trio cancels as soon as the request body has been read: an early error
    # answered before its body arrived left the close half done and the connection hanging
    # (the next request on it was never answered). Both calls are quick: shielded.
    async def send_eof(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


def is_websocket_upgrade(head: bytes) -> bool:
    """A GET whose Upgrade header names websocket (RFC 6455 §4.1)."""
    if not head.startswith(b"GET "):
        return False
    for line in head.split(b"\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade":
            return b"websocket" in value.lower()
    return False


async def _read_head(stream: trio.SocketStream) -> bytes:
    """The request head (or the first HEAD_LIMIT bytes of it); b"" if the peer went away.
    The caller bounds it (HEAD_TIMEOUT)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
        data = await stream.receive_some(HEAD_LIMIT)
        if not data:
            return b""
        head += data
    return head


async def _connection(http: Callable[[trio.abc.Stream], Awaitable[None]],
                      endpoint: WebSocketEndpoint, stream: trio.SocketStream) -> None:
    try:
        head = b""  # also when it did not come within HEAD_TIMEOUT (a slowloris is dropped)
        try:
            with trio.move_on_after(endpoint.settings.head_timeout):
                head = await _read_head(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        if not head:
            await trio.aclose_forcefully(stream)
        elif is_websocket_upgrade(head):
            if b"\r\n\r\n" not in head:  # over HEAD_LIMIT: never a real upgrade
                with trio.move_on_after(endpoint.settings.send_stall):
                    await stream.send_all(HEAD_TOO_LARGE)
                await trio.aclose_forcefully(stream)
                return
            request = bytearray(head)  # emptied once parsed: not kept for the socket's life
            del head
            await endpoint.serve_stream(stream, request)
        else:
            await http(_Replayed(stream, head))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(stream)
    except Exception:
        # the connection's edge: one connection's failure must not stop the listener
        log.exception("connection handler failed")
        await trio.aclose_forcefully(stream)


async def serve(app: Any, endpoint: WebSocketEndpoint, config: Config, *,
                shutdown_trigger: Callable[[], Awaitable[None]],
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until shutdown_trigger returns; then stop accepting, let connections finish
    within config.graceful_timeout, and run the app's lifespan shutdown."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    http = partial(TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy()))

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            try:
                sockets = config.create_sockets()
            except OSError as exc:
                raise StartupError(f"cannot listen on {', '.join(config.bind)}: "
                                   f"{exc.strerror or exc} (HTTP_HOST, HTTP_PORT)") from exc
            if sockets.secure_sockets or sockets.quic_sockets:
                raise ValueError("chatsrv serves plain TCP; terminate TLS in front of it")
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            supervise = partial(supervised, failures=endpoint.metrics.task_failures,
                                first_delay=endpoint.settings.task_restart_delay)
            async with trio.open_nursery() as accepting:
                await accepting.start(supervise, "ws-heartbeat", endpoint.run_heartbeat)
                await accepting.start(supervise, "ws-flusher", endpoint.flusher.run)
                await accepting.start(supervise, "ws-token-expiry", endpoint.run_expiry)
                accepting.start_soon(partial(trio.serve_listeners,
                                             partial(_connection, http, endpoint), listeners,
                                             handler_nursery=connections))
                task_status.started(binds)
                try:
                    await shutdown_trigger()
                finally:
                    accepting.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
