"""Senders that keep a ledger of every ack, and the checker that holds the server to it.

A fault run: `set_up` accounts and conversations, `open_traffic` starts one sender task per
account, the caller injects faults inside `traffic.fault(name)` blocks, then the block's
end stops the senders (each finishes the message in hand) and `check` compares the ledger
with what the server stored (REST history) and what a fresh client gets by `sync`.

A sender has one `chat_message` in flight at a time, each with a unique `client_msg_id`,
paced at `rate` per second. After an `error` frame, a dropped socket or no reply within
`reply_deadline` it sends the SAME `client_msg_id` again (after reconnecting if needed)
until it is acked: the server must answer a resend of a stored message with that message
(`duplicate: true`), never with a new one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import trio

from bench.client import (
    CONNECT_FAILURES,
    ConnectionClosed,
    Rest,
    User,
    Ws,
    chat_frame,
    connect,
    decode_ack,
    decode_error,
    decode_sync,
    sync_frame,
)
from chatsrv.protocol import frames, rest

REPLY_DEADLINE = 10.0  # one send -> ack or error; the node's DB_TIMEOUT is 3 s in fault runs
RETRY_PAUSE = 0.1  # after an error frame or a dropped socket, before the resend
CONNECT_PAUSE = 0.2  # after a failed connect (node down), before the next try
SYNC_PAGES_MAX = 1000  # a sync that pages more than this is reported, not followed
HISTORY_PAGE = 100  # HISTORY_MAX_LIMIT's default

# What a sender may see while a dependency is down. Anything else is a problem: an error
# code other than `unavailable` (e.g. `internal`), or a send that got neither an ack nor an
# error within REPLY_DEADLINE.
OUTAGE_KINDS = frozenset({"unavailable", "socket_closed", "connect_failed"})


@dataclass(frozen=True, slots=True)
class Ack:
    sender: str
    client_msg_id: str
    conversation_id: str
    id: str
    seq: int
    duplicate: bool
    at: float  # trio.current_time()
    rtt: float = math.nan  # seconds from this attempt's send to its ack


@dataclass
class Fault:
    """One injected fault: from `start` until `end` (the dependency is back: process
    started again, last termination issued), then until every sender is acked again."""

    name: str
    start: float
    end: float = math.nan
    first_ack: float = math.nan  # first ack of any sender at or after `end`
    all_acked: float = math.nan  # every sender acked at or after `end`
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def recover_first_s(self) -> float:
        return self.first_ack - self.end

    @property
    def recover_all_s(self) -> float:
        return self.all_acked - self.end

    @property
    def outage_s(self) -> float:
        return self.end - self.start


@dataclass
class Ledger:
    """Everything the senders saw. Mutated by sender tasks only, read by everyone."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    sent: int = 0  # distinct client_msg_ids put on the wire
    attempts: int = 0  # frames sent, resends included
    acks: dict[str, Ack] = field(default_factory=dict)
    duplicate_acks: int = 0  # resends answered with the stored message (duplicate: true)
    failures: Counter[str] = field(default_factory=Counter)  # by code / kind
    failure_log: list[tuple[float, str, str]] = field(default_factory=list)  # (at, sender, kind)
    conflicts: list[str] = field(default_factory=list)  # an ack that contradicts another
    faults: list[Fault] = field(default_factory=list)
    last_ack: dict[str, float] = field(default_factory=dict)  # sender -> at
    in_hand: dict[str, str] = field(default_factory=dict)  # sender -> client_msg_id not acked yet
    # the longest a sender went without an ack (from the start of sending): what a user
    # would call the outage, whatever caused it (a node that died by itself included)
    max_stall: float = 0.0
    started: float = math.nan
    stopped: float = math.nan
    _changed: trio.Event = field(default_factory=trio.Event)

    def note_ack(self, ack: Ack) -> None:
        prior = self.acks.get(ack.client_msg_id)
        if prior is not None and (prior.id, prior.seq) != (ack.id, ack.seq):
            self.conflicts.append(f"{ack.client_msg_id} acked as {prior.id}/{prior.seq} "
                                  f"and as {ack.id}/{ack.seq}")
        self.acks[ack.client_msg_id] = ack
        self.duplicate_acks += ack.duplicate
        self.max_stall = max(self.max_stall,
                             ack.at - self.last_ack.get(ack.sender, self.started))
        self.last_ack[ack.sender] = ack.at
        if self.in_hand.get(ack.sender) == ack.client_msg_id:
            del self.in_hand[ack.sender]
        for f in self.faults:
            if not math.isnan(f.end) and ack.at >= f.end and math.isnan(f.first_ack):
                f.first_ack = ack.at
        self._wake()

    def note_failure(self, sender: str, kind: str) -> None:
        now = trio.current_time()
        self.failures[kind] += 1
        self.failure_log.append((now, sender, kind))
        for f in self.faults:
            if f.start <= now and (math.isnan(f.all_acked) or now <= f.all_acked):
                f.failures[kind] += 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], deadline: float, what: str) -> None:
        """Until `predicate()` holds, re-checked at every ack or failure; TooSlowError
        (naming `what`) after `deadline` seconds."""
        try:
            with trio.fail_after(deadline):
                while not predicate():
                    await self._changed.wait()
        except trio.TooSlowError:
            raise trio.TooSlowError(f"{what}: not within {deadline:.1f}s; {self.summary()}"
                                    ) from None

    def failures_outside_faults(self) -> Counter[str]:
        """Failures not inside any fault's window (start .. every sender acked again)."""
        out: Counter[str] = Counter()
        for at, _, kind in self.failure_log:
            if not any(f.start <= at <= (f.all_acked if not math.isnan(f.all_acked)
                                         else math.inf) for f in self.faults):
                out[kind] += 1
        return out

    def summary(self) -> str:
        return (f"sent {self.sent}, acked {len(self.acks)}, attempts {self.attempts}, "
                f"failures {dict(self.failures)}")


# ---------------------------------------------------------------------------- set-up


@dataclass
class Workload:
    """Senders' accounts and the conversations they send into: each sender has a
    one_to_one with a silent peer, and all senders share one group (concurrent seq
    allocation in one conversation, across nodes in a cluster). `members` maps every
    conversation to the accounts in it (for the checks)."""

    senders: list[tuple[User, list[str], str]]  # (account, its conversations, its node URL)
    members: dict[str, list[User]]


async def set_up(rest_url: str, n_senders: int, node_urls: Sequence[str]) -> Workload:
    """Register 2 * n_senders accounts through `rest_url`; sender i uses node_urls[i % len]."""
    rest = Rest(rest_url, concurrency=8)
    try:
        users = await rest.register_many(2 * n_senders)
        senders, peers = users[:n_senders], users[n_senders:]
        group = await rest.conversation(senders[0], senders[1:], group=True, name="fault")
        members: dict[str, list[User]] = {group: list(senders)}
        plan = []
        for i, (s, p) in enumerate(zip(senders, peers, strict=True)):
            cid = await rest.conversation(s, [p], group=False)
            members[cid] = [s, p]
            plan.append((s, [cid, group], node_urls[i % len(node_urls)]))
        return Workload(plan, members)
    finally:
        await rest.aclose()


# ---------------------------------------------------------------------------- senders


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


class _Failed(Exception):
    """This attempt failed (error frame, dropped socket, no reply); `kind` says how."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Sender:
    """One account sending into its conversations in turn (see the module doc)."""

    name: str
    user: User
    conversations: list[str]
    url: str
    ledger: Ledger
    rate: float  # messages per second, paced open-ended: one in flight, never a burst
    reply_deadline: float = REPLY_DEADLINE
    # other nodes, tried in turn after a failed connect (a balancer moving the client to a
    # live node); empty: keep trying `url` (the node comes back on the same port)
    failover: tuple[str, ...] = ()
    _n: int = 0

    async def run(self, stop: trio.Event, nursery: trio.Nursery) -> None:
        """Send until `stop` is set, then resend the message in hand until it is acked.
        Cancellable anywhere; the socket is closed on the way out."""
        urls = [self.url, *self.failover]
        host, port = _host_port(self.url)
        pending: tuple[str, str, str] | None = None  # (client_msg_id, conversation, content)
        ws: Ws | None = None
        next_at = trio.current_time()
        try:
            while True:
                if pending is None:
                    if stop.is_set():
                        return
                    # pacing, not waiting for an event: the offered load is `rate` msg/s
                    await trio.sleep_until(next_at)
                    next_at = max(next_at + 1 / self.rate, trio.current_time())
                    self._n += 1
                    cid = self.conversations[self._n % len(self.conversations)]
                    # led by its first send time, as the bench's messages (client.stamp_of)
                    pending = (f"{self.ledger.run_id}-{self.name}-{self._n}", cid,
                               f"{time.perf_counter_ns()} {self.name} #{self._n}")
                    self.ledger.sent += 1
                    self.ledger.in_hand[self.name] = pending[0]
                if ws is None or ws.closed:
                    try:
                        ws = await connect(nursery, host, port, self.user, kind="lean")
                    except CONNECT_FAILURES:
                        self.ledger.note_failure(self.name, "connect_failed")
                        urls.append(urls.pop(0))
                        host, port = _host_port(urls[0])
                        if urls[0] != self.url:
                            continue  # the next node at once; after a full round, a pause
                        await trio.sleep(CONNECT_PAUSE)  # retry pacing while the node is down
                        continue
                try:
                    self.ledger.note_ack(await self._attempt(ws, *pending))
                    pending = None
                except _Failed as failed:
                    self.ledger.note_failure(self.name, failed.kind)
                    if failed.kind in ("socket_closed", "no_reply"):
                        await ws.cut()
                        ws = None
                    await trio.sleep(RETRY_PAUSE)  # retry pacing, then the same id again
        finally:
            if ws is not None:
                with trio.CancelScope(shield=True):
                    await ws.cut()

    async def _attempt(self, ws: Ws, cmid: str, cid: str, content: str) -> Ack:
        ref = f"{self.name}.{self.ledger.attempts}"
        self.ledger.attempts += 1
        sent_at = trio.current_time()
        try:
            with trio.fail_after(self.reply_deadline):
                await ws.send(chat_frame(cid, content, ref=ref, client_msg_id=cmid))
                while True:
                    env, _ = await ws.recv()
                    if env.ref == ref:
                        break
        except ConnectionClosed:
            raise _Failed("socket_closed") from None
        except trio.TooSlowError:
            raise _Failed("no_reply") from None
        if env.type == "error":
            raise _Failed(decode_error(env.payload).code)
        if env.type != "message_ack":
            raise _Failed(f"reply:{env.type}")
        a = decode_ack(env.payload)
        if a.client_msg_id != cmid or a.conversation_id != cid:
            self.ledger.conflicts.append(f"ack for {cmid} in {cid} names "
                                         f"{a.client_msg_id} in {a.conversation_id}")
        now = trio.current_time()
        return Ack(self.name, cmid, a.conversation_id, a.id, a.seq, a.duplicate, now,
                   now - sent_at)


class Traffic:
    """The senders of a running fault run (from `open_traffic`)."""

    def __init__(self, ledger: Ledger, senders: list[Sender]) -> None:
        self.ledger = ledger
        self.senders = senders

    def acked(self) -> int:
        return len(self.ledger.acks)

    async def wait_acks(self, n: int, deadline: float = 15.0) -> None:
        """Until `n` more messages have been acked than now."""
        target = self.acked() + n
        await self.ledger.wait_for(lambda: self.acked() >= target, deadline,
                                   f"{n} more acks")

    async def wait_failures(self, n: int = 1, deadline: float = 10.0) -> None:
        """Until the senders have seen `n` more failures (the fault reached them)."""
        target = sum(self.ledger.failures.values()) + n
        await self.ledger.wait_for(lambda: sum(self.ledger.failures.values()) >= target,
                                   deadline, f"{n} more failures")

    @asynccontextmanager
    async def fault(self, name: str) -> AsyncIterator[Fault]:
        """The block injects a fault and ends when the dependency is back; its window
        closes when every sender has been acked again (`wait_recovered`)."""
        f = Fault(name, trio.current_time())
        self.ledger.faults.append(f)
        yield f
        f.end = trio.current_time()

    async def wait_recovered(self, f: Fault, deadline: float) -> float:
        """Until every sender has an ack at or after the fault's end; the seconds from the
        end to that moment."""
        names = [s.name for s in self.senders]

        def every_sender_acked() -> bool:
            return all(self.ledger.last_ack.get(n, -math.inf) >= f.end for n in names)

        await self.ledger.wait_for(every_sender_acked, deadline,
                                   f"every sender acked again after {f.name}")
        f.all_acked = max(self.ledger.last_ack[n] for n in names)
        return f.recover_all_s


@asynccontextmanager
async def open_traffic(work: Workload, *, rate: float, ledger: Ledger | None = None,
                       watch: Sequence[Callable[[], Awaitable[None]]] = (),
                       drain_deadline: float = 30.0,
                       failover: Sequence[str] = ()) -> AsyncIterator[Traffic]:
    """One sender task per account of `work`, for the block, beside the `watch` tasks
    (e.g. `Child.watch`: a node that dies by itself fails the run at once). Leaving the
    block (normally) stops the senders and waits up to `drain_deadline` for each to get
    its last message acked (TooSlowError otherwise); an exception cancels them all.
    `failover`: every node's URL; a sender that cannot connect to its own tries the others
    in turn (Sender.failover)."""
    ledger = ledger or Ledger()
    senders = [Sender(f"s{i}", user, cids, url, ledger, rate,
                      failover=tuple(u for u in failover if u != url))
               for i, (user, cids, url) in enumerate(work.senders)]
    stop = trio.Event()
    ledger.started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for w in watch:
            nursery.start_soon(w)
        for s in senders:
            nursery.start_soon(s.run, stop, nursery)
        yield Traffic(ledger, senders)
        stop.set()
        await ledger.wait_for(lambda: ledger.sent == len(ledger.acks), drain_deadline,
                              "every sent message acked at the end")
        nursery.cancel_scope.cancel()  # the watchers
    ledger.stopped = trio.current_time()


# ---------------------------------------------------------------------------- checks


@dataclass
class Check:
    """The ledger against the store. Every count but `stored`/`conversations` must be 0."""

    conversations: int = 0
    stored: int = 0
    lost: int = 0  # acked, not stored
    false_acks: int = 0  # acked with an id/seq/conversation the store does not have
    stored_twice: int = 0  # client_msg_ids stored more than once
    stored_unacked: int = 0  # stored by a run client_msg_id that was never acked
    gaps: int = 0  # conversations whose seqs are not 1..n
    sync_missing: int = 0  # stored, not delivered by a fresh client's sync
    sync_duplicated: int = 0  # delivered more than once by one sync
    sync_unknown: int = 0  # delivered by sync, not in the store
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        fields = ("lost", "false_acks", "stored_twice", "stored_unacked", "gaps",
                  "sync_missing", "sync_duplicated", "sync_unknown")
        out = [f"{f} = {getattr(self, f)}" for f in fields if getattr(self, f)]
        return out + self.notes[:20]


async def stored_messages(url: str, cid: str, viewer: User) -> list[frames.MessagePayload]:
    """The whole history of `cid`, oldest first, paged forward by after_seq."""
    out: list[frames.MessagePayload] = []
    decode = msgspec.json.Decoder(rest.MessagesOut).decode
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        after = 0
        while True:
            r = await http.get(f"/api/conversations/{cid}/messages",
                               params={"after_seq": after, "limit": HISTORY_PAGE},
                               headers={"Authorization": f"Bearer {viewer.token}"})
            if r.status_code != 200:
                raise RuntimeError(f"history of {cid}: {r.status_code} {r.text[:200]}")
            page = decode(r.content)
            out.extend(page.messages)
            if not page.has_more or not page.messages:
                return out
            after = page.messages[-1].seq


async def synced_messages(url: str, user: User, cids: Sequence[str],
                          nursery: trio.Nursery) -> tuple[list[frames.MessagePayload], list[str]]:
    """What a fresh client of `user` receives by `sync` from 0 in `cids`, following
    `has_more`; and notes on anything odd (a page that repeats a position)."""
    host, port = _host_port(url)
    ws = await connect(nursery, host, port, user, kind="lean")
    got: list[frames.MessagePayload] = []
    notes: list[str] = []
    try:
        positions = dict.fromkeys(cids, 0)
        for page_no in range(SYNC_PAGES_MAX):
            ref = f"sync{page_no}"
            with trio.fail_after(REPLY_DEADLINE):
                await ws.send(sync_frame(positions, ref=ref))
                while True:
                    env, _ = await ws.recv()
                    if env.ref == ref:
                        break
            if env.type != "sync_result":
                raise RuntimeError(f"sync answered {env.type}: {bytes(env.payload)[:200]!r}")
            page = decode_sync(env.payload)
            for m in page.messages:
                if m.conversation_id in positions and m.seq <= positions[m.conversation_id]:
                    notes.append(f"sync page {page_no} repeats seq {m.seq} of "
                                 f"{m.conversation_id} (asked from {positions[m.conversation_id]})")
                got.append(m)
                if m.conversation_id in positions:
                    positions[m.conversation_id] = max(positions[m.conversation_id], m.seq)
            if not page.has_more:
                return got, notes
            if not page.messages:
                notes.append("sync said has_more with an empty page")
                return got, notes
        notes.append(f"sync still had more after {SYNC_PAGES_MAX} pages")
        return got, notes
    finally:
        with trio.CancelScope(shield=True):
            await ws.cut()


async def check(ledger: Ledger, work: Workload, urls: Sequence[str]) -> Check:
    """Hold the store to the ledger (through urls[0]) and the sync of a fresh client of
    every sender to the store (on every node in `urls`)."""
    c = Check(conversations=len(work.members))
    stored: dict[str, list[frames.MessagePayload]] = {}
    for cid, members in work.members.items():
        stored[cid] = await stored_messages(urls[0], cid, members[0])
    by_id: dict[str, frames.MessagePayload] = {}
    by_cmid: Counter[str] = Counter()
    for cid, messages in stored.items():
        c.stored += len(messages)
        seqs = [m.seq for m in messages]
        if seqs != list(range(1, len(seqs) + 1)):
            c.gaps += 1
            missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
            c.notes.append(f"{cid}: seqs not 1..{len(seqs)} (missing {missing[:10]}, "
                           f"repeated {[s for s, k in Counter(seqs).items() if k > 1][:10]})")
        for m in messages:
            by_id[m.id] = m
            if m.client_msg_id:
                by_cmid[m.client_msg_id] += 1
    stored_by_cmid = {m.client_msg_id: m for m in by_id.values() if m.client_msg_id}
    for cmid, n in by_cmid.items():
        if n > 1:
            c.stored_twice += 1
            c.notes.append(f"{cmid} stored {n} times")
    for cmid, ack in ledger.acks.items():
        got = stored_by_cmid.get(cmid)
        if got is None:
            c.lost += 1
            c.notes.append(f"lost: {cmid} acked as {ack.id} seq {ack.seq}")
        elif (got.id, got.seq, got.conversation_id) != (ack.id, ack.seq, ack.conversation_id):
            c.false_acks += 1
            c.notes.append(f"false ack: {cmid} acked {ack.id}/{ack.seq}, "
                           f"stored {got.id}/{got.seq}")
    # a message still in a sender's hand (a run cut short) may be stored without its ack
    in_hand = set(ledger.in_hand.values())
    c.stored_unacked = sum(1 for cmid in by_cmid if cmid.startswith(ledger.run_id)
                           and cmid not in ledger.acks and cmid not in in_hand)
    c.notes.extend(ledger.conflicts)
    c.false_acks += len(ledger.conflicts)

    async with trio.open_nursery() as nursery:
        for url in urls:
            for user, cids, _ in work.senders:
                expected = {m.id for cid in cids for m in stored[cid]}
                synced, notes = await synced_messages(url, user, cids, nursery)
                c.notes.extend(notes)
                times = Counter(m.id for m in synced)
                c.sync_duplicated += sum(1 for k in times.values() if k > 1)
                c.sync_missing += len(expected - times.keys())
                c.sync_unknown += len(times.keys() - expected)
    return c


# ---------------------------------------------------------------------------- report


def problems(ledger: Ledger, result: Check, *, recover_bound: float) -> list[str]:
    """Everything a fault run must not show: the check's problems, failures of a kind no
    outage excuses, failures outside the fault windows, slow recovery."""
    out = result.problems()
    bad = {k: v for k, v in ledger.failures.items() if k not in OUTAGE_KINDS}
    if bad:
        out.append(f"failures no outage excuses: {bad}")
    stray = ledger.failures_outside_faults()
    if stray:
        out.append(f"failures outside the fault windows: {dict(stray)}")
    for f in ledger.faults:
        if math.isnan(f.all_acked) or f.recover_all_s > recover_bound:
            out.append(f"{f.name}: every sender acked again after {f.recover_all_s:.2f}s "
                       f"(bound {recover_bound:.0f}s)")
    return out


def counts(ledger: Ledger, result: Check) -> dict[str, Any]:
    """The numbers of one run, for tables and failure messages."""
    return {
        "sent": ledger.sent, "acked": len(ledger.acks), "attempts": ledger.attempts,
        "resends_found_stored": ledger.duplicate_acks,
        "max_stall_s": round(ledger.max_stall, 3),
        "failures": dict(ledger.failures),
        "stored": result.stored, "lost": result.lost, "false_acks": result.false_acks,
        "stored_twice": result.stored_twice, "stored_unacked": result.stored_unacked,
        "gaps": result.gaps, "sync_missing": result.sync_missing,
        "sync_duplicated": result.sync_duplicated,
        "faults": [{"name": f.name, "outage_s": round(f.outage_s, 3),
                    "recover_first_s": round(f.recover_first_s, 3),
                    "recover_all_s": round(f.recover_all_s, 3),
                    "failures": dict(f.failures)} for f in ledger.faults],
    }


def wall_clock() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
