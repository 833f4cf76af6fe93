"""Composition root, serving half: main() serves the node that wiring.open_services(settings)
builds (hypercorn_config, build_asgi, serve_node)."""

from __future__ import annotations

import gc
import logging
import resource
import signal
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig

from chatsrv.adapters.heap import tune_malloc
from chatsrv.config import ConfigError, Settings
from chatsrv.services.container import Services
from chatsrv.tasks import StartupError, as_startup_error, leaves
from chatsrv.wiring import open_services

log = logging.getLogger("chatsrv")


def hypercorn_config(settings: Settings, *, bind: str | None = None) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind or f"{settings.http_host}:{settings.http_port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # WebSockets are served beside Hypercorn (transport/listener.py) with their own heartbeat;
    # these apply to the rare upgrade Hypercorn serves (one on a kept-alive HTTP connection):
    # a ping every heartbeat_interval, a peer silent for heartbeat_timeout is dropped.
    config.websocket_ping_interval = settings.heartbeat_interval
    config.read_timeout = int(settings.heartbeat_timeout)
    # Frames over max_frame_bytes get an error frame; only far larger ones (16x) close with 1009.
    config.websocket_max_message_size = settings.max_frame_bytes * 16
    config.graceful_timeout = min(settings.drain_timeout, settings.shutdown_deadline)
    config.backlog = 4096
    return config


def build_asgi(svc: Services) -> tuple[Any, Any]:
    """One ASGI app: WebSockets go to the WebSocket endpoint, everything else to Quart.
    Returns (app, ws endpoint). The transports get the services they call, nothing else."""
    from chatsrv.transport.http import create_app
    from chatsrv.transport.http.uploads import streamed_uploads
    from chatsrv.transport.session_deps import FrameRates, SessionDeps
    from chatsrv.transport.ws import WebSocketEndpoint

    settings = svc.settings
    quart_app = create_app(
        settings, auth_service=svc.auth, admin_service=svc.admin, presence=svc.presence,
        conversation_service=svc.conversations, messaging=svc.messaging,
        call_service=svc.calls, limits=svc.limits, ready=svc.store.ping,
        privacy=svc.privacy, uploads=svc.uploads, search_service=svc.search,
        metrics=svc.metrics.render, change_service=svc.changes, push_service=svc.push)
    endpoint: WebSocketEndpoint

    def bind(session: Any, principal: Any) -> None:
        endpoint.bind(session, principal)

    deps = SessionDeps(settings=settings, metrics=svc.metrics, auth=svc.auth,
                       messaging=svc.messaging, presence=svc.presence, calls=svc.calls,
                       privacy=svc.privacy,
                       rates=FrameRates(rate=settings.rate_per_second,
                                        burst=settings.rate_burst), bind=bind,
                       changes=svc.changes)
    ws = endpoint = WebSocketEndpoint(settings, svc.metrics, auth=svc.auth,
                                      sessions=svc.sessions, arrivals=svc.arrivals, deps=deps)

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await ws(scope, receive, send)
        else:
            await http_app(scope, receive, send)

    http_app = streamed_uploads(quart_app)  # type: ignore[arg-type]
    return asgi, ws


@dataclass(frozen=True, slots=True)
class Node:
    """What a started node reports: where it listens and its services."""

    addresses: list[str]
    services: Services


class _Started:
    """Turns Hypercorn's started(addresses) into started(Node)."""

    def __init__(self, task_status: trio.TaskStatus[Node], svc: Services) -> None:
        self._task_status = task_status
        self._svc = svc

    def started(self, addresses: list[str]) -> None:
        self._task_status.started(Node(addresses, self._svc))


async def serve_node(settings: Settings, *, bind: str | None = None,
                     shutdown: trio.Event | None = None,
                     task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown` is set (or cancelled); task_status gets the Node.

    Needs a trio-asyncio loop when settings point at PostgreSQL or Redis.
    """
    if shutdown is None:
        shutdown = trio.Event()
    async with open_services(settings) as svc:
        asgi, ws = build_asgi(svc)
        config = hypercorn_config(settings, bind=bind)

        async def trigger() -> None:
            await shutdown.wait()
            # close open WebSockets now with 1001 so clients reconnect elsewhere at once
            # (rather than at the end of graceful_timeout)
            ws.close_all()

        from chatsrv.transport.listener import serve

        await serve(asgi, ws, config, shutdown_trigger=trigger,
                    task_status=_Started(task_status, svc))  # type: ignore[arg-type]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(settings: Settings) -> None:
    shutdown = trio.Event()

    async def watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s: shutting down within %.0fs",
                         signal.Signals(signum).name, settings.shutdown_deadline)
                shutdown.set()
                return

    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(watch_signals)
            node = await nursery.start(partial(serve_node, settings, shutdown=shutdown))
            log.info("chatsrv %s serving on %s (%s)", settings.node_id,
                     ", ".join(node.addresses),
                     "PostgreSQL" if settings.database_url else f"SQLite {settings.sqlite_path}")
            await shutdown.wait()
            # Hypercorn closes sockets and drains within graceful_timeout; bound the rest.
            nursery.cancel_scope.deadline = trio.current_time() + settings.shutdown_deadline + 2
    except* (StartupError, ConfigError) as group:
        # the owner of the top nursery turns its start-up failures into one typed error
        config = [e for e in leaves(group) if isinstance(e, ConfigError)]
        if config:
            raise ConfigError("; ".join(str(e) for e in config)) from group
        raise as_startup_error(group) from group


def _tune_gc() -> None:
    """Fewer, cheaper cyclic collections: objects alive at start-up (modules, the app) are
    frozen out of them, and the youngest generation collects every 50,000 allocations
    instead of 700. A full collection walks every live object (per connection: socket,
    outbox, tasks), so at thousands of sockets the default cadence stalls delivery by tens
    of milliseconds. Refcounting frees everything else as usual."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(settings: Settings) -> None:
    """Run one node until SIGINT/SIGTERM."""
    _raise_fd_limit()
    _tune_gc()
    tune_malloc()
    trio.run(_main, settings)
