"""A connection's outgoing frames: its bounded `Outbox`, and the one `Flusher` task of the
node (run by the listener, beside the heartbeat) that writes every outbox that got frames,
one write per socket.

The flusher writes through the socket's `write_now` (`WsSocket`, websocket.py, which also
frames the batch: `_frames`); what the kernel does not take, and every batch of an ASGI
socket, goes to the connection's writer (session.py), which drains the outbox with `take`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from chatsrv.protocol.frames import Frame
from chatsrv.transport.websocket import _frames

log = logging.getLogger(__name__)


class Flusher:
    """One task that writes every outbox that got frames since it last ran: one write per
    socket however many frames a socket got meanwhile (a commit batch fanned out to a
    group is one write per member, not one per message), and no writer task woken while
    the kernel takes the data. What a socket does not take goes to its writer."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._lot = trio.lowlevel.ParkingLot()
        self.running = False

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if self._lot:
            self._lot.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                if self._dirty:
                    await trio.lowlevel.checkpoint()  # marked while flushing: let others run
                while not self._dirty:
                    await self._lot.park()
                dirty, self._dirty = self._dirty, []
                for outbox in dirty:
                    try:
                        outbox.flush()
                    except Exception:  # one socket's failure: its writer takes over
                        log.exception("flushing a socket failed")
                        outbox.wake_writer()
        finally:
            self.running = False
            for outbox in self._dirty:  # back to their writers
                outbox.flush()


class Outbox:
    """A connection's bounded queue of frames; the writer takes everything at once.

    Cheaper than a memory channel for this one-consumer case: a put is an append (and a wake
    only if the writer is parked); a take hands over the whole backlog for one send_all.
    With a running `flusher` and `write_now` (a socket that can write without blocking), a
    put that finds the writer parked leaves the frames to the flusher instead: written once
    the burst of puts is over, with no task switch to the writer.
    """

    __slots__ = ("_closed", "_items", "_lot", "_marked", "capacity", "flusher", "write_now")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.write_now: Callable[[bytes], int] | None = None
        self.flusher: Flusher | None = None
        self._items: list[Frame | bytes] = []  # an empty deque is 600 bytes, a list 56
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._marked = False

    def put(self, item: Frame | bytes) -> bool:
        """Queue `item` for sending; False when full (the caller decides: drop or evict)."""
        if self._closed:
            return True
        if len(self._items) >= self.capacity:
            return False
        self._items.append(item)
        if self._lot and not self._marked:  # the writer is parked: wake someone to send
            flusher = self.flusher
            if flusher is not None and flusher.running and self.write_now is not None:
                self._marked = True
                flusher.mark(self)
            else:
                self._lot.unpark()
        return True

    def flush(self) -> None:
        """The flusher's turn: write what is queued if the writer is idle and the kernel
        takes it; otherwise (or for the rest) wake the writer."""
        self._marked = False
        if not self._items or not self._lot or self.write_now is None:
            return  # sent already, or the writer has it in hand
        data = _frames(self._items)
        self._items.clear()
        written = self.write_now(data)
        if written == len(data):
            return
        self._items.append(data[written:] if written > 0 else data)
        self._lot.unpark()

    def wake_writer(self) -> None:
        """The flusher could not write this outbox: its writer sends what is queued."""
        self._marked = False
        self._lot.unpark()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    async def take(self) -> list[Frame | bytes]:
        """Everything queued (waits for at least one); [] once closed."""
        while not self._items:
            if self._closed:
                return []
            await self._lot.park()
        items, self._items = self._items, []
        return items
