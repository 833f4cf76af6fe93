"""Group commit: concurrent sends share one transaction, and each is acked after it.

Senders hand a draft to `append` and wait; a writer task takes whatever is queued in its
lane (up to `max_batch`), commits it in one transaction and wakes each sender with its own
outcome. With one sender the batch is one message and nothing waits for company: latency is
one commit. Under load, N senders cost one commit instead of N (one Trio↔database
crossing, one fsync).

Lanes: a conversation always goes to the same lane (hash of its id), and each lane has one
writer. Writers commit concurrently (PostgreSQL overlaps their transactions), yet the
messages of one conversation are committed by one writer in order, and it announces (fans
out) each batch in commit order before their senders wake: live `new_message` frames of a
conversation leave in seq order. (Publishing from each sender's task after it wakes let
tasks overtake each other: the bench saw 514 of 35,093 live frames out of order.) Writers
never touch the same conversation rows, so they cannot deadlock on them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from chatsrv.domain.errors import ChatError, Internal, Unavailable
from chatsrv.domain.model import Message
from chatsrv.domain.ports import Store
from chatsrv.metrics import Metrics

log = logging.getLogger(__name__)

Announce = Callable[[Message, Any], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Pending:
    """A message handed to the committer. `done` is set once `outcome` is known (whoever
    waits for it — the sender's acker — acks in its own order)."""

    draft: Message
    origin: Any = None  # the connection that sent it: it gets an ack, not new_message
    done: trio.Event = field(default_factory=trio.Event)
    outcome: tuple[Message, bool] | ChatError | None = None
    # trio.current_time() when queued, taken by the lane's writer, stored, fanned out
    # (metrics.SEND_STAGES; 0.0 until then)
    queued_at: float = 0.0
    taken_at: float = 0.0
    stored_at: float = 0.0
    announced_at: float = 0.0

    def result(self) -> tuple[Message, bool]:
        """(message, created) once done; raises what the store raised for it."""
        outcome = self.outcome
        if isinstance(outcome, ChatError):
            raise outcome
        if outcome is None:
            raise RuntimeError("not committed yet")
        return outcome


class GroupCommitter:
    def __init__(self, store: Store, metrics: Metrics, *, max_batch: int, queue_size: int,
                 writers: int = 1) -> None:
        self._store = store
        self._metrics = metrics
        self._max_batch = max_batch
        # Bounded: when full, senders wait here (backpressure on the sending connections).
        self._lanes = [trio.open_memory_channel[Pending](queue_size) for _ in range(writers)]
        # for /metrics: batches committed, messages in them, seconds spent storing them,
        # batches that failed for a reason nobody foresaw (a bug: logged with a traceback)
        self.batches = 0
        self.batched = 0
        self.store_seconds = 0.0
        self.failed_batches = 0

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    async def append(self, draft: Message, *, origin: Any = None) -> tuple[Message, bool]:
        """Commit one message; returns (message, created). Raises what the store raised
        for it (NotFound for an outsider, Unavailable...). If the caller is cancelled
        while waiting, the message may still be committed: a resend with the same
        client_msg_id finds it."""
        pending = await self.submit(draft, origin=origin)
        await pending.done.wait()
        return pending.result()

    async def submit(self, draft: Message, *, origin: Any = None) -> Pending:
        """Queue one message without waiting for its commit (waits only while the lane is
        full). Messages of one conversation submitted one after another commit in that
        order."""
        pending = Pending(draft, origin, queued_at=trio.current_time())
        send, _ = self._lanes[hash(draft.conversation_id) % len(self._lanes)]
        await send.send(pending)
        return pending

    async def run_lane(self, lane: int, announce: Announce, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: commit lane `lane`'s batches and `announce(message, origin)` each new
        message in commit order. Never raises for one batch's failure: its senders get the
        error, nothing of it is acked, the lane goes on. Run supervised by the services
        (wiring.open_services), one task per lane."""
        _, recv = self._lanes[lane]
        task_status.started()
        while True:
            first = await recv.receive()
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            taken = trio.current_time()
            for p in batch:
                p.taken_at = taken
            try:
                await self._commit(batch, announce)
            finally:  # _commit wakes everyone; this only guards against a bug in it
                _wake([p for p in batch if not p.done.is_set()],
                      Internal("could not store the message"))

    async def _commit(self, batch: list[Pending], announce: Announce) -> None:
        """One batch: commit, announce the new messages, wake every sender with its own
        outcome. Whatever happens, every sender of the batch is woken."""
        # One lock order for every batch (conversation id); the sort is stable, so one
        # conversation keeps its order.
        batch.sort(key=lambda p: p.draft.conversation_id)
        self.batches += 1
        self.batched += len(batch)
        started = trio.current_time()
        try:
            outcomes = await self._store.append_messages([p.draft for p in batch])
            stored = trio.current_time()
            self.store_seconds += stored - started
            self._metrics.commit.observe(stored - started)
            for p, outcome in zip(batch, outcomes, strict=True):
                p.outcome = outcome
                p.stored_at = p.announced_at = stored
            for p in batch:
                if isinstance(p.outcome, tuple) and p.outcome[1]:
                    await self._announce(announce, p)
                    p.announced_at = trio.current_time()
            self._metrics.fanout.observe(trio.current_time() - stored)
        except ChatError as exc:
            for p in batch:
                if p.outcome is None:
                    p.outcome = exc
        except Exception:
            # A bug below us: fail this batch's senders (nothing is acked), keep the lane.
            self.failed_batches += 1
            log.exception("commit of a batch of %d messages failed", len(batch))
            for p in batch:
                if p.outcome is None:
                    p.outcome = Internal("could not store the message")
        finally:  # cancelled half-way (shutdown): never leave one hanging
            _wake(batch, Unavailable("server shutting down"))

    async def _announce(self, announce: Announce, p: Pending) -> None:
        assert isinstance(p.outcome, tuple)
        try:
            await announce(p.outcome[0], p.origin)
        except ChatError:
            pass  # members unknown right now (storage down): they get it by sync
        except Exception:
            log.exception("fan-out of message %s failed; members get it by sync",
                          p.outcome[0].id)


def _wake(batch: list[Pending], missing: ChatError) -> None:
    """Set every pending's outcome (`missing` where none is known) and wake its sender."""
    for p in batch:
        if p.outcome is None:
            p.outcome = missing
        p.done.set()
