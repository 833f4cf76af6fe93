"""`python -m bench.cluster`: the bench on a cluster. N chatsrv nodes on one PostgreSQL and
one Redis, behind the bench's own round-robin, run the single-node scenarios with their
clients spread over the nodes, plus two that only a cluster has: the Redis commands,
PostgreSQL statements and node-to-node events each message costs (`load_per_message`), and
a node killed with SIGKILL in the middle of a run (`node_kill`).

Every process is private (bench/faults.py): a PostgreSQL cluster initdb'd for the run
(pg_stat_statements preloaded, so statements can be counted), a redis-server on a free port
(INFO commandstats counts its commands; the machine's shared Redis is never touched) and the
nodes, `python -m chatsrv serve` children with the server's defaults plus the bench's
load-test limits (bench/server.py: BASE_ENV). Node logs and data go to OUT/nodes/.

Placement: in a scenario, socket i goes to node (i // 2 + i % 2) mod N
(runner.Ctx.connect_many): the two users of a pair (2k, 2k + 1) are on nodes k and k + 1,
always different (cross-node 1:1), the pairs' senders on every node in turn, and a group's
members spread evenly; a node that refuses connections is skipped (Ctx.connect).

Exit status as `python -m bench`: 0 when every scenario ran and nothing was lost or
duplicated; 1 otherwise; 2 for bad arguments or when PostgreSQL/Redis are not installed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import re
import secrets
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from bench import client, report
from bench.cli import _pair, _write, loadavg, machine, parser, raise_fd_limit, source_digest
from bench.client import Ws, chat_frame, close_many, decode_error, stamped
from bench.faults import (
    Node,
    PrivatePostgres,
    add_node,
    missing_binaries,
    open_nodes,
    open_private_postgres,
    open_private_redis,
)
from bench.ledger import Ledger, Workload, check, open_traffic
from bench.runner import QUICK, Ctx, Progress, Scale, override, run_scenarios, wait_until
from bench.scenarios import (
    REGISTRY,
    SCENARIOS,
    Gate,
    _pump,
    _send,
    receivers_setup,
    receivers_tally,
    run_receivers,
)
from bench.server import BASE_ENV, NodeRef, ServerInfo
from bench.stats import summarize
from chatsrv.protocol import frames

# What the cluster runs by default, in this order (node_kill last: it leaves one node dead).
DEFAULT = ["latency_1to1", "throughput_1to1", "group_fanout", "broadcast_throughput",
           "load_per_message", "node_kill"]
SCENARIO_NAMES = [*SCENARIOS, "load_per_message", "node_kill"]

# The private PostgreSQL as the machine's shared one is configured (shared_buffers at its
# default, 128MB; faults.py starts with 16MB), plus pg_stat_statements; `cluster_name` puts
# the run's name in every process title, so proc.postgres_cpu_seconds counts this cluster's
# background processes and no other's.
PG_SETTINGS = {"shared_buffers": "128MB", "max_connections": "100",
               "shared_preload_libraries": "pg_stat_statements",
               "pg_stat_statements.track_utility": "on"}
# faults.node_env tunes nodes for fault runs; the bench measures the server's defaults
FAULT_TUNING = ("DB_TIMEOUT", "CONNECT_RETRY_DEADLINE", "PRESENCE_GRACE",
                "NODE_HEARTBEAT_INTERVAL", "NODE_TTL", "LOG_LEVEL")
GAP_WAIT = 5.0  # node_kill: after the last ack, until every receiver has every message live
COUNTER_DEADLINE = 10.0  # one reading of Redis, PostgreSQL and every node's /metrics
NODE_METRICS = ("peer_events_sent", "peer_batches_sent", "peer_events_dropped",
                "messages_sent", "frames_out", "commit_batches")


@dataclass(frozen=True)
class ClusterScale(Scale):
    """Scale plus the cluster's own scenarios (`--set` reaches these too)."""

    # load_per_message: cross-node pairs and one group, `load_messages` sent into each at
    # `load_rate`, after an idle window as long (the nodes' own Redis heartbeats, subtracted)
    load_pairs: int = 10
    load_members: int = 50
    load_messages: int = 1000
    load_rate: float = 200.0
    load_connects: int = 200  # then sockets of users without contacts: opened, closed
    # node_kill: senders ledger every ack (bench/ledger.py: one message in flight each,
    # resending the same client_msg_id); receivers in a group with all of them and a
    # one_to_one with each; the last node is killed at the middle of `kill_duration`
    kill_senders: int = 4
    kill_receivers: int = 20
    kill_rate: float = 25.0  # messages per second per sender
    kill_duration: float = 16.0


QUICK_CLUSTER = ClusterScale(
    **{f.name: getattr(QUICK, f.name) for f in dataclasses.fields(Scale)},
    load_pairs=2, load_members=3, load_messages=40, load_rate=40.0, load_connects=10,
    kill_senders=2, kill_receivers=3, kill_rate=20.0, kill_duration=4.0,
)


def node_count(requested: int | None) -> tuple[int, str]:
    """How many nodes, and why: each node, PostgreSQL and the load generator want a core of
    their own to measure anything but contention, so a third node needs 5 cores or more."""
    cores = os.cpu_count() or 1
    if requested is not None:
        return requested, f"--nodes {requested} ({cores} cores)"
    if cores >= 5:
        return 3, f"{cores} cores: 3 nodes + PostgreSQL + generator"
    return 2, (f"{cores} cores: 2 nodes (the fewest that cross nodes); a third would only "
               f"share the same cores (3 nodes + PostgreSQL + generator want 5)")


# ------------------------------------------------------------------------------ counters


class LoadCounters:
    """Cluster-wide counters, read before and after a window: Redis commands by name (INFO
    commandstats of the private Redis, our INFO left out), PostgreSQL statements by text
    (pg_stat_statements of the run's database, read from another database so the reading
    is not counted) and node counters from every node's /metrics (peer_events_sent: events
    that crossed to another node)."""

    def __init__(self, redis_port: int, pg: PrivatePostgres, database: str,
                 node_urls: list[str]) -> None:
        self.redis_port = redis_port
        self.pg = pg
        self.database = database
        self.node_urls = node_urls

    async def read(self) -> dict[str, Counter[str]]:
        with trio.fail_after(COUNTER_DEADLINE):
            return {"redis": await self._redis(), "pg": await self._pg(),
                    "nodes": await self._nodes()}

    async def redis_info(self, section: str) -> str:
        """The text of INFO `section` (RESP bulk string, read to its announced length)."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.redis_port)
        async with stream:
            await stream.send_all(f"INFO {section}\r\n".encode())
            buf = b""
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection during INFO")
                buf += chunk
                head, sep, body = buf.partition(b"\r\n")
                if sep and len(body) >= int(head[1:]):
                    return body[:int(head[1:])].decode()

    async def _redis(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for line in (await self.redis_info("commandstats")).splitlines():
            name, sep, stats = line.removeprefix("cmdstat_").partition(":")
            if sep and line.startswith("cmdstat_") and name != "info":
                out[name] = int(stats.split(",", 1)[0].removeprefix("calls="))
        return out

    async def _pg(self) -> Counter[str]:
        text = await self.pg.sql(
            "SELECT s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') FROM pg_stat_statements s "
            f"JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{self.database}'",
            db="postgres")
        out: Counter[str] = Counter()
        for line in text.splitlines():
            calls, sep, query = line.partition("|")
            if sep:
                out[query] += int(calls)
        return out

    async def _nodes(self) -> Counter[str]:
        out: Counter[str] = Counter()
        async with httpx.AsyncClient(timeout=5) as http:
            for url in self.node_urls:
                try:
                    text = (await http.get(f"{url}/metrics")).text
                except httpx.HTTPError:
                    continue  # a killed node: its counters are gone with it
                for m in re.finditer(r"^chatsrv_(\w+)_total ([0-9.e+]+)$", text, re.M):
                    out[m[1]] += int(float(m[2]))
        return out


def delta(a: dict[str, Counter[str]], b: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
    return {k: Counter({n: v - a[k].get(n, 0) for n, v in b[k].items()
                        if v - a[k].get(n, 0) > 0}) for k in b}


def _load_summary(d: dict[str, Counter[str]]) -> dict[str, Any]:
    return {"redis_commands": sum(d["redis"].values()),
            "redis_by_command": dict(d["redis"].most_common(10)),
            "pg_statements": sum(d["pg"].values()),
            **{k: d["nodes"].get(k, 0) for k in NODE_METRICS}}


def measured(fn: Callable[[Ctx], Awaitable[dict[str, Any]]], counters: LoadCounters
             ) -> Callable[[Ctx], Awaitable[dict[str, Any]]]:
    """`fn` with the counters' deltas over the whole scenario (set-up included) added as
    `cluster_load`: peer_events_sent > 0 is the proof that its traffic crossed nodes."""
    async def run(ctx: Ctx) -> dict[str, Any]:
        before = await counters.read()
        result = await fn(ctx)
        result["cluster_load"] = _load_summary(delta(before, await counters.read()))
        return result
    return run


# ------------------------------------------------------------------------------ scenarios


async def load_per_message(ctx: Ctx, counters: LoadCounters) -> dict[str, Any]:
    """Redis commands, PostgreSQL statements and node-to-node events per message sent, for
    cross-node 1:1 and for a group spread over the nodes: `load_messages` each at
    `load_rate`, open loop, with client_msg_ids; an idle window as long first, whose counts
    (the nodes' heartbeats) are subtracted pro rata."""
    s = ctx.scale
    assert isinstance(s, ClusterScale)
    users = await ctx.register(2 * s.load_pairs + s.load_members)
    pair_users, members = users[:2 * s.load_pairs], users[2 * s.load_pairs:]
    cids = await ctx.rest.pairs(pair_users)
    seen = {"acked": 0, "received": 0}
    errors: list[str] = []

    def on_frame(env: frames.Envelope, t: int) -> None:
        if env.type == "message_ack":
            seen["acked"] += 1
        elif env.type == "new_message":
            seen["received"] += 1
        elif env.type == "error":
            errors.append(decode_error(env.payload).code)

    n, pad = s.load_messages, max(0, s.content_chars - 20)
    rows: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        pair_socks = await ctx.connect_many(nursery, pair_users)
        group_socks = await ctx.connect_many(nursery, members)
        group = await ctx.rest.conversation(members[0], members[1:], group=True, name="load")
        for w in [*pair_socks, *group_socks]:
            nursery.start_soon(_pump, w, on_frame)
        await ctx.settle()
        senders = min(4, len(group_socks))  # group senders on every node in turn

        def one_to_one(i: int) -> tuple[Ws, str]:
            p, turn = i % s.load_pairs, (i // s.load_pairs) % 2
            return pair_socks[2 * p + turn], cids[p]

        def into_group(i: int) -> tuple[Ws, str]:
            return group_socks[i % senders], group

        async def window(pick: Callable[[int], tuple[Ws, str]] | None, count: int,
                         receivers: int) -> dict[str, Any]:
            seen.update(acked=0, received=0)
            before = await counters.read()
            start, usage0 = trio.current_time(), ctx.begin()
            for i in range(count if pick is not None else 0):
                await trio.sleep_until(start + i / s.load_rate)  # open loop, paced
                assert pick is not None
                ws, cid = pick(i)
                t = time.perf_counter_ns()
                await _send(ws, chat_frame(cid, stamped(t, pad), ref=t,
                                           client_msg_id=f"load{uuid.uuid4().hex[:8]}.{i}"))
            if pick is None:  # the idle window: as long as a sending one
                await trio.sleep_until(start + n / s.load_rate)
            done = await wait_until(lambda: seen["acked"] >= count
                                    and seen["received"] >= count * receivers, 15)
            seconds = trio.current_time() - start
            usage = ctx.end(usage0)
            return {"delta": delta(before, await counters.read()), "seconds": seconds,
                    "usage": usage, "done": done, **seen}

        with ctx.status_during(lambda: f"idle / 1:1 / group: acked {seen['acked']} "
                               f"received {seen['received']}"):
            idle = await window(None, 0, 0)
            await ctx.settle()
            runs = [("1:1 across nodes", await window(one_to_one, n, 1), 1)]
            await ctx.settle()
            runs.append((f"group of {len(members)} over {len(ctx.nodes)} nodes",
                         await window(into_group, n, len(members) - 1), len(members) - 1))
        await close_many(pair_socks + group_socks)
        ctx.closed_many()
        # the directory is touched per connection, never per message: a connect and a
        # disconnect (after the presence grace) of users who share no conversation
        lonely = await ctx.lonely_users(s.load_connects)
        await ctx.settle()
        before = await counters.read()
        start = trio.current_time()
        with ctx.status_during(lambda: f"{s.load_connects} sockets: connect, close"):
            await close_many(await ctx.connect_many(nursery, lonely))
            ctx.closed_many()
            await ctx.settle()  # waits out the presence grace: the users go offline
        cycles = {"delta": delta(before, await counters.read()),
                  "seconds": trio.current_time() - start}
        nursery.cancel_scope.cancel()

    background = {k: {name: v / idle["seconds"] for name, v in c.items()}
                  for k, c in idle["delta"].items()}
    for case, run, receivers in runs:
        per = _per_message(run["delta"], background, run["seconds"], n)
        rows.append({
            "case": f"{case}, {s.load_rate:g} msg/s",
            "counts": {"messages": n, "acked": run["acked"], "deliveries": run["received"],
                       "expected_deliveries": n * receivers, "errors": len(errors)},
            "rate": {"redis_commands_per_msg": round(sum(per["redis"].values()), 3),
                     "pg_statements_per_msg": round(sum(per["pg"].values()), 3),
                     "peer_events_per_msg": round(per["nodes"].get("peer_events_sent", 0), 3)},
            "per_message": {
                "redis_by_command": _top(per["redis"], 10),
                "pg_by_statement": _top(per["pg"], 12, width=160),
                "nodes": {k: round(per["nodes"].get(k, 0.0), 3) for k in NODE_METRICS},
            },
            "drained": run["done"],
            "usage": run["usage"],
        })
    per = _per_message(cycles["delta"], background, cycles["seconds"], s.load_connects)
    rows.append({
        "case": f"{s.load_connects} sockets connected and closed (users with no contacts)",
        "counts": {"connections": s.load_connects},
        "rate": {"redis_commands_per_connection": round(sum(per["redis"].values()), 3),
                 "pg_statements_per_connection": round(sum(per["pg"].values()), 3)},
        "per_connection": {"redis_by_command": _top(per["redis"], 12),
                           "pg_by_statement": _top(per["pg"], 12, width=160)},
    })
    return {"params": {"pairs": s.load_pairs, "members": len(members), "messages": n,
                       "rate_per_s": s.load_rate, "nodes": len(ctx.nodes)},
            "background_per_s": {k: _top(v, 10) for k, v in background.items()},
            "rows": rows, "error_codes": sorted(set(errors))}


def _per_message(d: dict[str, Counter[str]], background: dict[str, dict[str, float]],
                 seconds: float, n: int) -> dict[str, dict[str, float]]:
    """(delta - background rate x seconds) / n, per counter, never below 0."""
    return {k: {name: max(0.0, (v - background.get(k, {}).get(name, 0.0) * seconds) / n)
                for name, v in c.items()} for k, c in d.items()}


def _top(values: dict[str, float], k: int, *, width: int = 60) -> dict[str, float]:
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    return {name[:width]: round(v, 3) for name, v in ranked[:k] if round(v, 3) > 0}


async def node_kill(ctx: Ctx, nodes: list[Node]) -> dict[str, Any]:
    """Senders (bench/ledger.py: every ack recorded, a failed send resent with the same
    client_msg_id) and receivers, spread over the nodes; at the middle of the run the last
    node gets SIGKILL and stays down. Its clients reconnect to a survivor (senders resend,
    receivers `sync` from their position, paging). Then every acked message must have
    reached every member of its conversation exactly once (`received` = `expected`,
    `lost` = `duplicated` = 0), and the store must hold each once (ledger.check)."""
    s = ctx.scale
    assert isinstance(s, ClusterScale)
    n_snd, n_rcv = s.kill_senders, s.kill_receivers
    users = await ctx.register(n_snd + n_rcv)
    snd_users, rcv_users = users[:n_snd], users[n_snd:]
    group, o2o, receivers = await receivers_setup(ctx, snd_users, rcv_users, "node kill")
    urls = [f"http://{n.host}:{n.port}" for n in ctx.nodes]
    plan = []
    for si, u in enumerate(snd_users):  # every other message into the group
        cids = [c for ri in range(n_rcv) for c in (group, o2o[si, ri])]
        plan.append((u, cids, urls[si % len(urls)]))
    members = {group: list(users)} | {c: [snd_users[si], rcv_users[ri]]
                                      for (si, ri), c in o2o.items()}
    work = Workload(plan, members)
    for ri, u in enumerate(rcv_users):
        ctx.placed[u.id] = (n_snd + ri) % len(ctx.nodes)
    victim = nodes[-1]
    on_victim = [r for r in receivers if ctx.node_of(r.user) == len(nodes) - 1]
    ledger = Ledger()
    gate = Gate()
    recovered: float | None = None
    async with trio.open_nursery() as nursery:
        await run_receivers(nursery, ctx, receivers, gate)
        window = ctx.begin()
        with ctx.status_during(lambda: f"{ledger.summary()}, receivers connected "
                               f"{sum(1 for r in receivers if r.ws)}/{n_rcv}"):
            async with open_traffic(work, rate=s.kill_rate, ledger=ledger,
                                    failover=urls) as traffic:
                start = trio.current_time()
                await trio.sleep(s.kill_duration / 2)  # the run's shape: kill at the middle
                async with traffic.fault(f"kill -9 {victim.name}") as fault:
                    await victim.kill()
                with trio.move_on_after(30):
                    recovered = await traffic.wait_recovered(fault, 30)
                await trio.sleep_until(start + s.kill_duration)
            acked: dict[str, dict[int, str]] = {}
            for a in ledger.acks.values():
                acked.setdefault(a.conversation_id, {})[a.seq] = a.id
            last = {cid: max(seqs) for cid, seqs in acked.items()}
            await wait_until(lambda: all(r.caught_up(last) for r in receivers), GAP_WAIT)
            # A message the killed node committed (and acked, or not: its sender resends
            # the same client_msg_id and gets it back, duplicate: true) but did not pass to
            # the other nodes before it died is never sent live to their members; they get
            # it from the next `sync`. So a receiver still behind now reconnects and syncs,
            # as a client does on its next reconnect; what only that sync brought is counted.
            behind = [r for r in receivers if not r.caught_up(last)]
            missed = [(cid, seq) for r in behind for cid, conv in r.convs.items()
                      for seq in acked.get(cid, {})
                      if seq not in conv.ids and seq not in conv.pending]
            for r in behind:
                if r.ws is not None:
                    await r.ws.cut()
            caught_up = await wait_until(lambda: all(r.caught_up(last) for r in receivers), 30)
        usage = ctx.end(window)
        # the killed node's PostgreSQL backends exited, taking their CPU time with them
        usage["db_cpu_pct"] = usage["other_cpu_pct"] = None
        await close_many([r.ws for r in receivers if r.ws is not None])
        nursery.cancel_scope.cancel()
    survivors = [u for u, node in zip(urls, nodes, strict=True) if node is not victim]
    stored = await check(ledger, work, survivors[:1])
    tally = receivers_tally(receivers, acked)
    ok = tally.pop("ok") and not stored.problems()
    counts = {"sent": ledger.sent, "acked": len(ledger.acks), **tally,
              "resends_found_stored": ledger.duplicate_acks,
              "sender_failures": dict(ledger.failures),
              "receivers_on_killed_node": len(on_victim),
              # deliveries (and distinct messages) that never came live, only by the sync
              "missed_live": len(missed), "missed_live_messages": len(set(missed)),
              "receivers_resynced_for_gap": len(behind),
              "stored": stored.stored, "stored_twice": stored.stored_twice,
              "false_acks": stored.false_acks, "gaps": stored.gaps,
              "sync_missing": stored.sync_missing, "sync_duplicated": stored.sync_duplicated,
              "caught_up": caught_up}
    synced = [x for r in on_victim for x in r.synced_ms[1:]]
    return {
        "params": {"senders": n_snd, "receivers": n_rcv, "rate_per_sender": s.kill_rate,
                   "duration_s": s.kill_duration, "killed": victim.name,
                   "nodes": len(nodes)},
        "lost": tally["lost"] + stored.lost,
        "duplicated": tally["duplicated"] + stored.stored_twice + stored.sync_duplicated,
        "store_problems": stored.problems(),
        "rows": [{
            "case": f"kill -9 {victim.name} mid-run: its receivers reconnect → synced",
            "latency_ms": summarize(synced),
            "counts": counts,
            "rate": {"senders_acked_again_s": None if recovered is None
                     else round(recovered, 3)},
            "usage": usage,
            "target": {"text": "0 lost, 0 duplicated",
                       "measured": f"{tally['received']}/{tally['expected_deliveries']} "
                                   f"received, {tally['lost']} lost, "
                                   f"{tally['duplicated']} dup", "ok": ok},
        }],
    }


def _cap(n_users: int) -> float:
    return n_users / 40 + 30  # registration, as scenarios._cap_registration


def cluster_registry(counters: LoadCounters, nodes: list[Node]
                     ) -> dict[str, tuple[Any, Callable[[Scale], float]]]:
    def cap_load(s: Scale) -> float:
        assert isinstance(s, ClusterScale)
        return _cap(2 * s.load_pairs + s.load_members) + 3 * s.load_messages / s.load_rate + 120

    def cap_kill(s: Scale) -> float:
        assert isinstance(s, ClusterScale)
        return _cap(s.kill_senders + s.kill_receivers) + s.kill_duration + 150

    own: dict[str, tuple[Any, Callable[[Scale], float]]] = {
        "load_per_message": (partial(load_per_message, counters=counters), cap_load),
        "node_kill": (partial(node_kill, nodes=nodes), cap_kill),
    }
    return {name: (measured(fn, counters), cap)
            for name, (fn, cap) in {**REGISTRY, **own}.items()}


# ------------------------------------------------------------------------------ the run


async def run_cluster(args: Any, scale: ClusterScale, names: list[str], n_nodes: int,
                      out: Path, rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Private PostgreSQL and Redis, n_nodes nodes, the scenarios; all torn down after."""
    database = f"chatsrv_bench_{uuid.uuid4().hex[:12]}"
    knobs = {**BASE_ENV, **dict(_pair(x) for x in args.server_env)}
    secret = secrets.token_urlsafe(36)  # 48 characters, one for every node
    root = out / "nodes"
    root.mkdir(parents=True, exist_ok=True)
    progress = Progress("cluster")
    async with open_private_postgres(db=database, settings={**PG_SETTINGS,
                                                             "cluster_name": database}) as pg, \
            open_private_redis() as redis, open_nodes(root) as nodes:
        await pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db="postgres")
        for i in range(n_nodes):
            node = add_node(nodes, root, f"node-{i + 1}", pg=pg, redis=redis,
                            source=args.server_src)
            for k in FAULT_TUNING:
                node.env.pop(k, None)
            node.env.update(knobs, JWT_SECRET=secret, REDIS_PREFIX="chatsrv-bench")
        for node in nodes:  # one at a time: the first one runs the migrations
            await node.start()
            progress.log(f"{node.name} {node.url} pid {node.pid}")
        counters = LoadCounters(redis.port, pg, database, [n.url for n in nodes])
        rep["cluster"] = {
            "nodes": [{"name": n.name, "url": n.url, "pid": n.pid} for n in nodes],
            "why_this_many": node_count(args.nodes)[1],
            "postgres": (await pg.sql("SHOW server_version")) + ", " + ", ".join(
                f"{k}={v}" for k, v in PG_SETTINGS.items()),
            "redis": next((line for line in (await counters.redis_info("server")).splitlines()
                           if line.startswith("redis_version:")), "?"),
            "placement": ("socket i of a scenario on node (i // 2 + i % 2) mod N: pair k "
                          "on nodes k and k + 1"),
        }
        server = ServerInfo(backend="cluster", base_url=nodes[0].url, host="127.0.0.1",
                            port=nodes[0].port, pid=nodes[0].pid, env=knobs,
                            database=database,
                            nodes=tuple(NodeRef(n.name, "127.0.0.1", n.port, n.pid)
                                        for n in nodes))
        return await run_scenarios(server, scale, names, cluster_registry(counters, nodes),
                                   quick=args.quick, progress=progress, out=out,
                                   profile=frozenset(args.profile))


def load_table(rep: dict[str, Any]) -> str:
    """The per-message load of `load_per_message` as a table (appended to results.md)."""
    res = rep["backends"].get("cluster", {}).get("scenarios", {}).get("load_per_message")
    if not res or not res.get("ok"):
        return ""
    out = ["\nLoad per message sent (idle background subtracted):\n",
           "| traffic | Redis commands | PostgreSQL statements | node-to-node events "
           "| node-to-node batches | commit batches | top statements (per message) |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for row in res["rows"]:
        if "per_message" not in row:
            continue
        per, nodes = row["per_message"], row["per_message"]["nodes"]
        top = "; ".join(f"{v:g} x `{q[:70]}`" for q, v in list(per["pg_by_statement"].items())[:4])
        out.append(f"| {row['case']} | {row['rate']['redis_commands_per_msg']:g} "
                   f"| {row['rate']['pg_statements_per_msg']:g} "
                   f"| {nodes['peer_events_sent']:g} | {nodes['peer_batches_sent']:g} "
                   f"| {nodes['commit_batches']:g} | {top} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser(SCENARIO_NAMES, prog="python -m bench.cluster")
    p.description = (f"{__doc__.splitlines()[0]} Default scenarios: {', '.join(DEFAULT)}."
                     if __doc__ else None)
    p.add_argument("--nodes", type=int, metavar="N",
                   help="chatsrv nodes (default: 2, or 3 with 5 cores or more)")
    args = p.parse_args(argv)
    if args.target or args.server_pid:
        p.error("--target/--server-pid do not apply: the cluster bench starts its own nodes")
    try:
        scale = override(QUICK_CLUSTER if args.quick else ClusterScale(), args.sets)
        for x in args.server_env:
            _pair(x)
    except ValueError as exc:
        p.error(str(exc))
    assert isinstance(scale, ClusterScale)
    n_nodes, why = node_count(args.nodes)
    if n_nodes < 2:
        p.error("--nodes must be at least 2")
    reason = missing_binaries(redis=True)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    client.client_kind = args.client
    gc.freeze()  # as python -m bench (cli.main): thousands of sockets in the generator
    gc.set_threshold(50_000, 20, 100)
    names = [n for n in SCENARIO_NAMES if n in (args.scenario or DEFAULT)]  # node_kill last
    out: Path = args.out or Path("bench/out") / ("cluster-" +
                                                 dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    src = args.server_src or Path.cwd()
    rep: dict[str, Any] = {
        "tool": "chatsrv bench (cluster)",
        "command": "python -m bench.cluster " + shlex.join(sys.argv[1:] if argv is None
                                                           else argv),
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine() | {"generator_fd_limit": raise_fd_limit(),
                                "loadavg_at_start": loadavg()},
        "server_source": {"dir": str(src.resolve()), "sha256_16": source_digest(src)},
        "quick": args.quick, "client": args.client, "nodes": n_nodes, "why_nodes": why,
        "scale": dataclasses.asdict(scale), "backends": {},
    }
    run: dict[str, Any] = {}
    rep["backends"]["cluster"] = run
    results = trio.run(run_cluster, args, scale, names, n_nodes, out, rep)
    run["scenarios"] = {r["name"]: r for r in results}
    code = 0
    for r in results:
        if not r["ok"] or r.get("lost") or r.get("duplicated"):
            code = 1
    _write(rep, out, started, plot=not args.no_plot)
    (out / "results.md").write_text(report.markdown(rep) + load_table(rep))
    print(report.markdown(rep) + load_table(rep))
    print(f"reports in {out}/; took {time.monotonic() - started:.0f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
