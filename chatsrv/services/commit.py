"""Group commit: concurrent sends share one transaction, and each is acked after it.

Senders hand a draft to `append` and wait; writer tasks take whatever is queued (up to
`max_batch`), commit it in one transaction and wake each sender with its own outcome. With
one sender the batch is one message and nothing waits for company: latency is one commit.
Under load, N senders cost one commit instead of N (one Trio↔database crossing, one fsync).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from chatsrv.domain.errors import ChatError, NotFound
from chatsrv.domain.model import Message
from chatsrv.domain.ports import Store


@dataclass(eq=False, slots=True)
class _Pending:
    draft: Message
    done: trio.Event = field(default_factory=trio.Event)
    outcome: tuple[Message, bool] | ChatError | None = None


class GroupCommitter:
    def __init__(self, store: Store, *, max_batch: int = 128, queue_size: int = 4096) -> None:
        self._store = store
        self._max_batch = max_batch
        # Bounded: when full, senders wait here (backpressure on the sending connections).
        self._send, self._recv = trio.open_memory_channel[_Pending](queue_size)

    async def append(self, draft: Message) -> tuple[Message, bool]:
        """Commit one message; returns (message, created). Raises what the store raised
        for it (NotFound for an outsider, Unavailable...). If the caller is cancelled
        while waiting, the message may still be committed: a resend with the same
        client_msg_id finds it."""
        pending = _Pending(draft)
        await self._send.send(pending)
        await pending.done.wait()
        outcome = pending.outcome
        if isinstance(outcome, ChatError):
            raise outcome
        assert outcome is not None
        return outcome

    async def run(self, *, writers: int = 1,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: `writers` tasks commit batches. Owned by the services nursery."""
        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(self._writer, self._recv.clone())
            task_status.started()

    async def _writer(self, recv: trio.MemoryReceiveChannel[_Pending]) -> None:
        async with recv:
            async for first in recv:
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                # One lock order for every batch (conversation id), so concurrent writers
                # cannot deadlock; the sort is stable, so one conversation keeps its order.
                batch.sort(key=lambda p: p.draft.conversation_id)
                outcomes: list[tuple[Message, bool] | NotFound] | None = None
                try:
                    outcomes = await self._store.append_messages([p.draft for p in batch])
                except ChatError as exc:
                    for p in batch:
                        p.outcome = exc
                else:
                    for p, outcome in zip(batch, outcomes, strict=True):
                        p.outcome = outcome
                finally:
                    for p in batch:
                        if p.outcome is None:  # a bug below us: fail the senders, not hang
                            p.outcome = ChatError("could not store the message", code="internal")
                        p.done.set()
