"""One live WebSocket connection: the router's Subscriber, and the state its tasks share.
Owned by the endpoint (transport/ws.py); frames are handled by transport/frames.py."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chatsrv.domain.events import Event
from chatsrv.domain.model import new_id
from chatsrv.domain.typing_state import TypingBook
from chatsrv.services.commit import Pending
from chatsrv.transport.websocket import FrameSocket, Outbox

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401  # session revoked, or token expired without `auth`: sign in again


class WsConnection:
    """One live socket: the router's Subscriber and the state its tasks share."""

    __slots__ = ("_nursery", "_scope", "address", "auth_session", "close_code", "close_reason",
                 "expires_at", "in_flight", "metrics", "outbox", "session_id", "sock", "typing",
                 "typing_running", "user_id")

    def __init__(self, user_id: str, sock: FrameSocket, outbox: Outbox, metrics: Any,
                 typing_ttl: float) -> None:
        self.user_id = user_id
        self.session_id = new_id()  # this connection (`ready.session_id`)
        self.auth_session: str | None = None  # the login its token belongs to
        self.expires_at = 0.0  # Unix time its token expires
        self.address = ""
        self.sock = sock
        self.outbox = outbox
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.metrics = metrics
        self.typing = TypingBook(ttl=typing_ttl)
        self.typing_running = False
        # chat_messages queued for commit and not acked yet, in the order they were read
        self.in_flight: deque[tuple[Pending, Any]] = deque()

    def send_nowait(self, event: Event) -> None:
        if self.outbox.put(event):
            self.metrics.frames_out += 1
        elif not event.droppable:
            # typing goes first under backpressure; a consumer that cannot keep up with
            # anything else is cut: it reconnects and syncs, losing nothing.
            self.metrics.connections_evicted += 1
            self.close(CLOSE_TRY_AGAIN_LATER, "outbox full: reconnect and sync")

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a task owned by this connection (a call leg): cancelled when it closes."""
        if self._nursery is None:
            raise RuntimeError("connection is not running")
        self._nursery.start_soon(fn, *args)

    def close(self, code: int, reason: str) -> None:
        """Ask the connection to end; its nursery is cancelled and the close frame sent."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self._scope is not None:
            self._scope.cancel()
