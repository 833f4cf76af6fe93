"""One backend's run: the context scenarios share, the progress line, settling between
scenarios, and running each scenario under its hard time cap."""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from bench import proc
from bench.client import QUEUE, Rest, User, Ws, connect, connect_many
from bench.profile import recording
from bench.profile import summarize as summarize_profile
from bench.server import NodeRef, ServerInfo


@dataclass(frozen=True)
class Scale:
    """Every count, rate and duration of the scenarios. The defaults are the full bench;
    QUICK is the CI smoke. `--set name=value` overrides one field."""

    content_chars: int = 64  # chat message size (characters, timestamp included)
    warmup: float = 1.0  # seconds of load before a measurement window opens
    # latency_1to1
    latency_pairs: int = 10
    latency_rate: float = 20.0  # messages per second, all pairs together
    latency_duration: float = 30.0
    # throughput_1to1: closed-loop senders, each with `window` un-acked messages in flight
    throughput_stages: tuple[int, ...] = (1, 4, 16, 48, 128, 256)  # concurrent senders
    throughput_window: int = 4
    throughput_stage_duration: float = 5.0
    # group_fanout
    fanout_sizes: tuple[int, ...] = (50, 1000)
    fanout_messages: int = 500  # per size, unless fanout_duration runs out first
    fanout_duration: float = 10.0
    # broadcast_throughput
    broadcast_members: int = 50
    broadcast_senders: int = 4
    broadcast_window: int = 16  # messages per sender not yet received by every member
    broadcast_duration: float = 15.0
    # idle_connections
    idle_counts: tuple[int, ...] = (2000, 10000)
    idle_users_max: int = 5000  # accounts behind the sockets; beyond it users have 2+ devices
    idle_hold: float = 30.0
    # idle_multi_device (held idle_hold too)
    multi_counts: tuple[int, ...] = (2000, 10000)
    multi_per_user: int = 40  # sockets (devices, tabs) per user
    multi_conversations: int = 50  # groups of 10 each user is in
    # connect_storm
    storm_count: int = 5000
    # reconnect_storm_loss
    reconnect_members: int = 50
    reconnect_senders: int = 2
    reconnect_rate: float = 200.0  # messages per second, all senders together
    reconnect_duration: float = 15.0
    reconnect_outages: tuple[float, ...] = (0.3, 1.0, 2.5)  # one cut per entry: seconds down


QUICK = Scale(
    warmup=0.3,
    latency_pairs=2, latency_rate=10.0, latency_duration=2.0,
    throughput_stages=(1, 2), throughput_stage_duration=1.5,
    fanout_sizes=(3,), fanout_messages=20, fanout_duration=2.0,
    broadcast_members=3, broadcast_senders=2, broadcast_duration=2.0,
    idle_counts=(20,), idle_hold=1.0,
    multi_counts=(20,), multi_per_user=4, multi_conversations=5,
    storm_count=20,
    reconnect_members=3, reconnect_senders=1, reconnect_rate=50.0, reconnect_duration=3.0,
    reconnect_outages=(0.3,),
)


def override(scale: Scale, assignments: list[str]) -> Scale:
    """Apply `name=value` overrides (tuples as comma lists). Raises ValueError."""
    fields = {f.name: f for f in dataclasses.fields(scale)}
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(fields)}")
        current = getattr(scale, name)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else float
            changes[name] = tuple(kind(x) for x in raw.split(",") if x)
        else:
            changes[name] = type(current)(raw)
    return dataclasses.replace(scale, **changes)


class Progress:
    """The one status line on stderr: redrawn in place on a terminal, a line every 5 s
    otherwise (CI logs)."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self.label = label
        self.scenario = ""
        self.text: str | Callable[[], str] = ""
        self._out = out
        self._tty = out.isatty()
        self._started = time.monotonic()
        self._last_line = 0.0

    def set(self, text: str | Callable[[], str]) -> None:
        """What the scenario is doing: a string, or a function called at each redraw."""
        self.text = text

    def draw(self, server: str) -> None:
        if not self.scenario:
            return
        elapsed = time.monotonic() - self._started
        text = self.text() if callable(self.text) else self.text
        line = (f"[{self.label} {int(elapsed) // 60}:{int(elapsed) % 60:02d}] {self.scenario}: "
                f"{text} | {server}")
        if self._tty:
            self._out.write("\r\x1b[2K" + line[:200])
            self._out.flush()
        elif time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            print(line, file=self._out, flush=True)

    def log(self, message: str) -> None:
        """A permanent line (the progress line is redrawn under it)."""
        if self._tty:
            self._out.write("\r\x1b[2K")
        print(f"[{self.label}] {message}", file=self._out, flush=True)


class Ctx:
    """What scenarios share for one server: where it is, REST set-up, the scale, the
    measurement helpers and the progress line."""

    def __init__(self, server: ServerInfo, scale: Scale, rest: Rest, progress: Progress,
                 quick: bool) -> None:
        self.server = server
        self.host = server.host
        self.port = server.port
        self.scale = scale
        self.rest = rest
        self.progress = progress
        self.quick = quick
        self._lonely: list[User] = []
        self._grace_due = False
        # the bench's own round-robin: one entry for a single server
        self.nodes = server.nodes or (NodeRef(server.backend, server.host, server.port,
                                              server.pid),)
        self.placed: dict[str, int] = {}  # user id -> index in nodes of its latest socket
        self._next_node = 0
        self._last_cpu: dict[int, float] = {}  # pid -> last reading (a killed node keeps it)
        # server samples every MONITOR_S: (monotonic, cpu seconds, rss bytes); ~1 h kept
        self.samples: collections.deque[tuple[float, float | None, int | None]] = \
            collections.deque(maxlen=7200)

    # ---- set-up

    async def register(self, n: int, what: str = "users") -> list[User]:
        start = self.rest.registered
        with self.status_during(lambda: f"registering {what} "
                                f"{self.rest.registered - start}/{n}"):
            return await self.rest.register_many(n)

    async def lonely_users(self, n: int) -> list[User]:
        """n accounts that share no conversation with anyone (so connecting them announces
        presence to nobody), registered once per run and reused."""
        if len(self._lonely) < n:
            self._lonely += await self.register(n - len(self._lonely), "idle users")
        return self._lonely[:n]

    # ---- sockets, spread over the nodes

    async def connect_many(self, nursery: trio.Nursery, users: Sequence[User], *,
                           concurrency: int = 200, queue: int = QUEUE, kind: str | None = None,
                           failures: dict[str, int] | None = None) -> list[Ws]:
        """client.connect_many over the nodes (same order and failure handling):
        users[i] goes to node (i // 2 + i % 2) mod N, so the two users of a pair (2k,
        2k + 1) are on nodes k and k + 1: always different nodes, and the pairs' first
        users (the senders of the 1:1 scenarios) on every node in turn."""
        n = len(self.nodes)
        if n == 1:
            return await connect_many(nursery, self.host, self.port, users,
                                      concurrency=concurrency, queue=queue, kind=kind,
                                      failures=failures)
        where = [(i // 2 + i % 2) % n for i in range(len(users))]
        parts: list[list[Ws]] = [[] for _ in range(n)]

        async def part(k: int) -> None:
            node = self.nodes[k]
            mine = [u for u, at in zip(users, where, strict=True) if at == k]
            parts[k] = await connect_many(nursery, node.host, node.port, mine,
                                          concurrency=max(1, concurrency // n), queue=queue,
                                          kind=kind, failures=failures)

        async with trio.open_nursery() as inner:
            for k in range(n):
                inner.start_soon(part, k)
        for u, at in zip(users, where, strict=True):
            self.placed[u.id] = at
        if failures is not None:  # some may be missing: order is lost anyway
            return [w for p in parts for w in p]
        cursors = [iter(p) for p in parts]
        return [next(cursors[at]) for at in where]

    async def connect(self, nursery: trio.Nursery, user: User, *, queue: int = QUEUE,
                      kind: str | None = None) -> Ws:
        """One socket for `user`: on the node it was placed on (else the next in turn); a
        node that refuses the TCP connection (killed) is skipped for the next one, as a
        balancer with health checks would. Raises what client.connect raises."""
        n = len(self.nodes)
        first = self.placed.get(user.id)
        if first is None:
            first, self._next_node = self._next_node, (self._next_node + 1) % n
        for step in range(n):
            k = (first + step) % n
            try:
                ws = await connect(nursery, self.nodes[k].host, self.nodes[k].port, user,
                                   queue=queue, kind=kind)
            except OSError:
                if step == n - 1:
                    raise
                continue
            self.placed[user.id] = k
            return ws
        raise AssertionError("unreachable")

    def node_of(self, user: User) -> int:
        """Index in `nodes` of the user's latest socket (0 if never connected here)."""
        return self.placed.get(user.id, 0)

    # ---- measurement

    def _cpu(self, pid: int | None) -> float | None:
        if not pid:
            return None
        now = proc.cpu_seconds(pid)
        if now is None:
            return self._last_cpu.get(pid)
        self._last_cpu[pid] = now
        return now

    def server_cpu(self) -> float | None:
        """utime+stime of the server, every node summed; None without pids."""
        each = [self._cpu(n.pid) for n in self.nodes]
        return None if None in each else sum(x or 0.0 for x in each)

    def begin(self) -> proc.Snapshot:
        node_cpu = tuple(self._cpu(n.pid) for n in self.nodes)
        rss = [proc.rss_bytes(n.pid) if n.pid else None for n in self.nodes]
        return proc.Snapshot(
            at=time.monotonic(),
            server_cpu=None if None in node_cpu else sum(x or 0.0 for x in node_cpu),
            server_rss=None if all(r is None for r in rss) else sum(r or 0 for r in rss),
            db_cpu=(proc.postgres_cpu_seconds(self.server.database) if self.server.database
                    else None),
            generator_cpu=proc.self_cpu_seconds(),
            machine_cpu=proc.machine_cpu_seconds(),
            node_cpu=node_cpu if len(node_cpu) > 1 else ())

    def end(self, start: proc.Snapshot) -> dict[str, Any]:
        """CPU and RSS between `start` and now (peak RSS from the monitor's samples)."""
        now = self.begin()
        peak = max((rss for at, _, rss in self.samples if at >= start.at and rss is not None),
                   default=None)
        return proc.usage(start, now, peak_rss=peak)

    def rss(self) -> int | None:
        """The server's RSS (every node's summed in a cluster)."""
        return self.begin().server_rss

    def status(self, text: str) -> None:
        self.progress.set(text)

    def status_during(self, fn: Callable[[], str]) -> _Live:
        return _Live(self, fn)

    def closed_many(self) -> None:
        """Many users just lost their last socket: the next settle waits out the grace."""
        self._grace_due = True

    async def settle(self, *, idle_pct: float = 5.0, deadline: float = 30.0) -> None:
        """Wait until the server is idle, so one scenario's aftermath does not land in the
        next one's numbers. Users whose last socket closed go offline after the server's
        presence grace (PRESENCE_GRACE, 2 s by default), which then persists last_seen and
        tells their contacts: after a scenario that closed many sockets (closed_many) this
        waits that out first; then for CPU under idle_pct for 1 s (0.5 s for --quick).
        The PostgreSQL processes of the run's database count as well. Without a pid to
        watch, it waits 3 s."""
        if self.server_cpu() is None:
            await trio.sleep(3)
            return
        self.status("waiting for the server (and its PostgreSQL) to go idle")
        if self._grace_due:
            self._grace_due = False
            await trio.sleep(2.5)
        end = trio.current_time() + deadline
        needed = 2 if self.quick else 4
        quiet = 0
        database = self.server.database

        def busy() -> tuple[float | None, float]:
            # PostgreSQL too: autovacuum and checkpoints after a scenario that wrote 100k
            # rows would otherwise run during the next one
            return (self.server_cpu(),
                    proc.postgres_cpu_seconds(database) if database else 0.0)

        last = busy()
        while trio.current_time() < end and quiet < needed:
            await trio.sleep(0.25)
            now = busy()
            if now[0] is None or last[0] is None:
                return
            idle = all((b - a) / 0.25 * 100 < idle_pct
                       for a, b in ((last[0], now[0]), (last[1], now[1])))
            quiet = quiet + 1 if idle else 0
            last = now

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        """Forever: sample the server every 0.5 s and redraw the progress line."""
        task_status.started()
        last: tuple[float, float | None] | None = None
        while True:
            at = time.monotonic()
            cpu = self.server_cpu()
            rss = self.rss()
            self.samples.append((at, cpu, rss))
            text = "server: not measured (no pid)"
            if cpu is not None and last is not None and last[1] is not None:
                pct = 100 * (cpu - last[1]) / max(at - last[0], 1e-6)
                text = f"server {pct:3.0f}% cpu {(rss or 0) / 2**20:6.1f} MiB"
            last = (at, cpu)
            self.progress.draw(text)
            await trio.sleep(0.5)


class _Live:
    """Keeps the status line showing fn() while a block runs (redrawn by the monitor)."""

    def __init__(self, ctx: Ctx, fn: Callable[[], str]) -> None:
        self._ctx = ctx
        self._fn = fn

    def __enter__(self) -> _Live:
        self._ctx.progress.set(self._fn)
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.progress.set("")


async def wait_until(predicate: Callable[[], bool], deadline: float) -> bool:
    """Poll `predicate` every 20 ms until true (True) or `deadline` seconds pass (False).
    Polling: the counters it reads are bumped by hundreds of reader tasks, and an Event per
    target would cost more than this does."""
    with trio.move_on_after(deadline):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return True
    return predicate()


Scenario = Callable[[Ctx], Awaitable[dict[str, Any]]]


async def run_scenarios(server: ServerInfo, scale: Scale, names: list[str],
                        registry: dict[str, tuple[Scenario, Callable[[Scale], float]]],
                        *, quick: bool, progress: Progress, out: Path,
                        profile: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Run `names` one after another against `server`; each under its hard cap. A scenario
    that fails or runs out of time is reported as such and the next one still runs.
    Scenarios in `profile` run under py-spy (out/profile-<backend>-<name>.{folded,txt})."""
    results: list[dict[str, Any]] = []
    rest = Rest(server.base_url)
    try:
        async with trio.open_nursery() as nursery:
            ctx = Ctx(server, scale, rest, progress, quick)
            await nursery.start(ctx.monitor)
            for name in names:
                fn, cap_of = registry[name]
                cap = cap_of(scale)
                progress.scenario = name
                await ctx.settle()
                started = time.monotonic()
                result: dict[str, Any] = {"name": name, "ok": False, "error": None}
                try:
                    with trio.fail_after(cap):
                        if name in profile and server.pid:
                            stem = out / f"profile-{server.backend}-{name}"
                            async with recording(server.pid, stem.with_suffix(".folded"),
                                                 cap=cap):
                                result.update(await fn(ctx))
                            stem.with_suffix(".txt").write_text(
                                summarize_profile(stem.with_suffix(".folded")))
                            result["profile"] = str(stem.with_suffix(".txt"))
                        else:
                            result.update(await fn(ctx))
                    result["ok"] = True
                except trio.TooSlowError:
                    result["error"] = f"hit its hard cap of {cap:.0f}s"
                except Exception as exc:  # reported; the next scenario still runs
                    result["error"] = "".join(traceback.format_exception_only(exc)).strip()
                    result["traceback"] = traceback.format_exc()
                result["elapsed_s"] = round(time.monotonic() - started, 1)
                results.append(result)
                outcome = "done" if result["ok"] else f"FAILED: {result['error']}"
                progress.log(f"{name}: {outcome} in {result['elapsed_s']}s"
                             + _headline(result))
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            await rest.aclose()
    return results


def _headline(result: dict[str, Any]) -> str:
    parts = []
    for row in result.get("rows", []):
        target = row.get("target") or {}
        if target:
            mark = "ok" if target.get("ok") else "MISSED"
            parts.append(f"{row['case']}: {target.get('measured')} ({target['text']}: {mark})")
    return ("\n    " + "\n    ".join(parts)) if parts else ""
