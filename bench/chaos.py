"""`python -m bench.chaos`: the fault runs of tests/fault, longer and repeated, with a table
of counts and recovery times.

Each repetition of each fault gets a fresh private PostgreSQL cluster (and Redis), fresh
nodes and accounts; senders send for `--duration` seconds while the fault is injected every
`--interval` seconds; then the senders finish the message in hand and the store and a fresh
client's `sync` are checked against the ledger (bench/ledger.py). Faults:

  kill_node     kill -9 the node, keep it down `--down` s, start it again (same port)
  pg_restart    PostgreSQL stop -m fast, down `--down` s, start
  pg_terminate  pg_terminate_backend of the node's connections, 5 times 300 ms apart
  cluster       two nodes on one PostgreSQL and one Redis, senders on both; in turn:
                kill -9 one node (alternating) and restart Redis (empty), each down `--down` s

A node that exits by itself is counted (`node deaths`) and started again, so the run goes on
and its data is still checked. Exit status: 0 when nothing was lost, duplicated or falsely
acked, every failure was `unavailable` or a closed socket, no node died and every fault
recovered within `--recover-bound`; 1 otherwise; 2 when PostgreSQL/Redis are not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bench.faults import (
    Node,
    PrivatePostgres,
    PrivateRedis,
    add_node,
    missing_binaries,
    open_nodes,
    open_private_postgres,
    open_private_redis,
)
from bench.ledger import (
    Check,
    Fault,
    Ledger,
    Traffic,
    check,
    counts,
    open_traffic,
    problems,
    set_up,
    wall_clock,
)

FAULTS = ("kill_node", "pg_restart", "pg_terminate", "cluster")
WARM_UP = 20  # acks before the first fault
TERMINATIONS, TERMINATION_GAP = 5, 0.3


@dataclass(frozen=True)
class Options:
    duration: float
    repeat: int
    interval: float
    down: float
    senders: int
    rate: float
    recover_bound: float
    server_src: Path | None


@dataclass
class Env:
    pg: PrivatePostgres
    redis: PrivateRedis | None
    nodes: list[Node]


@asynccontextmanager
async def open_env(kind: str, opts: Options, root: Path) -> AsyncIterator[Env]:
    """Private PostgreSQL (+ Redis for the cluster) and started nodes, all killed at the end."""
    async with AsyncExitStack() as stack:
        pg = await stack.enter_async_context(open_private_postgres())
        redis = (await stack.enter_async_context(open_private_redis())
                 if kind == "cluster" else None)
        nodes = await stack.enter_async_context(open_nodes(root))
        for i in range(2 if kind == "cluster" else 1):
            add_node(nodes, root, f"node-{i + 1}", pg=pg, redis=redis, source=opts.server_src)
        for node in nodes:
            await node.start()
        yield Env(pg, redis, nodes)


async def inject(kind: str, i: int, traffic: Traffic, env: Env, opts: Options) -> Fault:
    """The i-th fault of this kind; returns when the dependency is back."""
    if kind == "kill_node" or (kind == "cluster" and i % 2 == 0):
        node = env.nodes[(i // 2) % len(env.nodes)]
        async with traffic.fault(f"kill -9 {node.name}") as f:
            await node.kill()
            await trio.sleep(opts.down)  # the outage's length is a parameter of the run
            await node.spawn()
    elif kind == "cluster":
        assert env.redis is not None
        async with traffic.fault("redis restart") as f:
            await env.redis.stop()
            await trio.sleep(opts.down)
            await env.redis.start()
    elif kind == "pg_restart":
        async with traffic.fault("postgres restart") as f:
            await env.pg.stop("fast")
            await trio.sleep(opts.down)
            await env.pg.start()
    else:
        async with traffic.fault("pg_terminate_backend x5") as f:
            for _ in range(TERMINATIONS):
                await env.pg.terminate_backends()
                await trio.sleep(TERMINATION_GAP)  # the fault's own rhythm
    return f


async def run_once(kind: str, rep: int, opts: Options) -> dict[str, Any]:
    """One repetition of one fault kind: its row of counts."""
    notes: list[str] = []
    ledger = Ledger()
    result = Check()
    with tempfile.TemporaryDirectory(prefix=f"chatsrv-chaos-{kind}-") as tmp:
        root = Path(tmp)
        async with open_env(kind, opts, root) as env:
            urls = [n.url for n in env.nodes]
            work = await set_up(urls[-1], opts.senders, urls)

            async def revive(node: Node) -> None:
                notes.append(f"{node.name} died by itself:\n{node.log_tail(25)}")
                await node.spawn()

            watch = [partial(n.child.watch, partial(revive, n)) for n in env.nodes]
            try:
                async with open_traffic(work, rate=opts.rate, ledger=ledger,
                                        watch=watch) as traffic:
                    await traffic.wait_acks(WARM_UP)
                    end = trio.current_time() + opts.duration
                    i = 0
                    while trio.current_time() + opts.interval < end:
                        await trio.sleep(opts.interval)  # pacing between faults
                        f = await inject(kind, i, traffic, env, opts)
                        i += 1
                        try:
                            await traffic.wait_recovered(f, opts.recover_bound)
                        except trio.TooSlowError as exc:
                            notes.append(str(exc))
                    await trio.sleep_until(end)
            except* trio.TooSlowError as group:
                notes.extend(str(e) for e in group.exceptions)
            for node in env.nodes:
                if not node.running:  # e.g. died at the very end
                    await node.start()
                await node.wait_ready()
            result = await check(ledger, work, urls)
            deaths = sum(n.child.deaths for n in env.nodes)
    found = problems(ledger, result, recover_bound=opts.recover_bound)
    if deaths:
        found.append(f"node deaths: {deaths}")
    return {"fault": kind, "rep": rep + 1, "deaths": deaths, **counts(ledger, result),
            "problems": found, "notes": notes}


def _stats(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    missing = len(values) - len(finite)
    text = f"{statistics.median(finite):.2f} / {max(finite):.2f}"
    return text + (f" ({missing} never)" if missing else "")


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| fault | rep | faults injected | sent | acked | failures seen by senders "
            "| resends found stored | lost | false acks | stored twice | gaps "
            "| sync missing / dup | node deaths | recovery, first ack (median / max s) "
            "| recovery, every sender (median / max s) | longest a sender waited for an ack (s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        faults = r["faults"]
        fails = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())) or "none"
        lines.append(
            f"| {r['fault']} | {r['rep']} | {len(faults)} | {r['sent']:,} | {r['acked']:,} "
            f"| {fails} | {r['resends_found_stored']} | {r['lost']} | {r['false_acks']} "
            f"| {r['stored_twice']} | {r['gaps']} "
            f"| {r['sync_missing']} / {r['sync_duplicated']} | {r['deaths']} "
            f"| {_stats([f['recover_first_s'] for f in faults])} "
            f"| {_stats([f['recover_all_s'] for f in faults])} | {r['max_stall_s']:.2f} |")
    return "\n".join(lines)


def totals(rows: list[dict[str, Any]]) -> str:
    """One line per fault kind, summed over its repetitions."""
    out = []
    for kind in dict.fromkeys(r["fault"] for r in rows):
        rs = [r for r in rows if r["fault"] == kind]
        failures: Counter[str] = Counter()
        for r in rs:
            failures.update(r["failures"])
        faults = [f for r in rs for f in r["faults"]]
        out.append(
            f"{kind}: {len(rs)} runs, {len(faults)} faults, sent {sum(r['sent'] for r in rs):,}, "
            f"acked {sum(r['acked'] for r in rs):,}, lost {sum(r['lost'] for r in rs)}, "
            f"stored twice {sum(r['stored_twice'] for r in rs)}, "
            f"false acks {sum(r['false_acks'] for r in rs)}, "
            f"node deaths {sum(r['deaths'] for r in rs)}, failures {dict(failures)}, "
            f"recovery every sender median/max {_stats([f['recover_all_s'] for f in faults])} s, "
            f"longest wait for an ack {max(r['max_stall_s'] for r in rs):.2f} s")
    return "\n".join(out)


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).parent)
    return done.stdout.strip() or "unknown"


async def main_async(kinds: list[str], opts: Options) -> list[dict[str, Any]]:
    rows = []
    for kind in kinds:
        for rep in range(opts.repeat):
            print(f"[{wall_clock()}] {kind} {rep + 1}/{opts.repeat} ...", file=sys.stderr,
                  flush=True)
            row = await run_once(kind, rep, opts)
            print(f"    sent {row['sent']}, acked {row['acked']}, lost {row['lost']}, "
                  f"failures {row['failures']}, problems {row['problems'][:3]}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fault", action="append", choices=FAULTS,
                   help="run only this fault (repeatable; default all four)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of sending per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per fault")
    p.add_argument("--interval", type=float, default=8.0, help="seconds between faults")
    p.add_argument("--down", type=float, default=1.0,
                   help="seconds a killed node / stopped PostgreSQL or Redis stays down")
    p.add_argument("--senders", type=int, default=6)
    p.add_argument("--rate", type=float, default=25.0, help="messages/s per sender")
    p.add_argument("--recover-bound", type=float, default=15.0)
    p.add_argument("--server-src", type=Path, help="run chatsrv from this source tree")
    p.add_argument("--json", type=Path, help="write every row (and notes) here")
    args = p.parse_args(argv)
    if args.duration <= args.interval or args.senders < 2 or args.rate <= 0:
        p.error("need --duration > --interval, --senders >= 2 and --rate > 0")
    kinds = args.fault or list(FAULTS)
    reason = missing_binaries(redis="cluster" in kinds)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    opts = Options(args.duration, args.repeat, args.interval, args.down, args.senders,
                   args.rate, args.recover_bound,
                   args.server_src.resolve() if args.server_src else None)
    started = wall_clock()
    rows = trio.run(main_async, kinds, opts)
    print(f"chaos run {started} to {wall_clock()}, commit {_commit()}, "
          f"{opts.senders} senders x {opts.rate:g} msg/s, {opts.duration:g} s per run, "
          f"a fault every {opts.interval:g} s, down {opts.down:g} s\n")
    print(table(rows))
    print()
    print(totals(rows))
    bad = [(r["fault"], r["rep"], r["problems"]) for r in rows if r["problems"]]
    for kind, rep, found in bad:
        print(f"\nPROBLEMS in {kind} run {rep}: {found}")
    if args.json:
        args.json.write_text(json.dumps({"started": started, "commit": _commit(),
                                         "options": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
