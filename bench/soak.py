"""`python -m bench.soak`: a long run of mixed traffic over many sockets, sampled, and held
to "nothing grows and nothing is lost" (issue 16, item 6).

One node on a private PostgreSQL (bench/faults.py: never the shared one). The population:
- `--senders` accounts send `--rate` msg/s each, one message in flight, into their
  conversations in turn (bench/ledger.py: every ack is in the ledger, a failed send is resent
  with the same client_msg_id until acked);
- `--sockets` idle sockets, `--devices` per account, each account in a one_to_one with one
  sender: every device receives that sender's messages there; the first device of each
  account answers a share of them with a `read_receipt`, and sends `typing` now and then;
- reconnects: `--churn` idle sockets a second are cut and opened again.

Every `--sample` seconds: the server's RSS and open fds (/proc), its Trio task count and
WebSocket connections (/metrics: chatsrv_tasks, chatsrv_connections), the sends acked in the
window and their ack latency p50/p99. At the end the ledger is checked against the store
and against a fresh client's `sync` (lost, stored twice, false acks, gaps), and RSS, fds
and tasks are compared between the first and the last minute after `--warmup`: growth
must be ≤ 5%. Writes OUT/soak.json, OUT/soak.md and, with matplotlib, OUT/soak.png.

    .venv/bin/python -m bench.soak --duration 1800 --sockets 5000 --out bench/out/soak

Exit status 0 when every check holds, 1 otherwise, 2 when PostgreSQL is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import HandshakeError

from bench.cli import raise_fd_limit
from bench.client import CONNECT_FAILURES, ConnectionClosed, Rest, User, Ws, connect
from bench.faults import add_node, missing_binaries, open_nodes, open_private_postgres
from bench.ledger import Ledger, Workload, check, counts, open_traffic, wall_clock
from bench.ledger import set_up as ledger_set_up
from bench.stats import quantile, stage_breakdown, stage_histograms
from chatsrv.tasks import leaves

GROWTH_BOUND = 0.05  # RSS, fds, tasks: last minute over first minute after warm-up
TAIL_WINDOW = 60.0  # seconds averaged at each end of the comparison
_encoder = msgspec.json.Encoder()


def _encode(frame: dict[str, Any]) -> str:
    return _encoder.encode(frame).decode()


@dataclass(frozen=True)
class Options:
    duration: float
    sockets: int
    devices: int
    senders: int
    rate: float
    receipt_share: float
    typing_every: float
    churn: float
    sample: float
    warmup: float
    server_src: Path | None
    out: Path


@dataclass
class Sample:
    t: float  # seconds since the traffic started
    rss_mib: float
    fds: int
    tasks: float
    connections: float
    acked: int  # in this window
    ack_p50_ms: float | None
    ack_p99_ms: float | None


@dataclass
class Crowd:
    """The idle sockets and what they did."""

    sockets: int = 0
    receipts: int = 0
    typing: int = 0
    reconnects: int = 0
    reconnect_failures: int = 0  # while the traffic ran
    open_failures: int = 0  # while the crowd first connected, before the traffic
    received: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # "opening" / "traffic" -> "exception name[: status line]" -> count
    failure_kinds: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"opening": {}, "traffic": {}})
    target: int = 0
    full: trio.Event = field(default_factory=trio.Event)  # set once `target` are up

    def up(self) -> None:
        self.sockets += 1
        if self.sockets >= self.target:
            self.full.set()


# ---------------------------------------------------------------------------- set-up


async def set_up(url: str, opts: Options) -> tuple[Workload, list[User], dict[str, str]]:
    """Senders with their ledger conversations (a one_to_one with a silent peer, the shared
    group, and a one_to_one with each idle account assigned to them), and the idle
    accounts (`owner`: idle account id -> its one_to_one)."""
    work = await ledger_set_up(url, opts.senders, [url])
    rest = Rest(url, concurrency=8)
    try:
        idle = await rest.register_many(math.ceil(opts.sockets / opts.devices))
        owner: dict[str, str] = {}
        for i, user in enumerate(idle):
            sender, cids, node = work.senders[i % len(work.senders)]
            cid = await rest.conversation(sender, [user], group=False)
            cids.append(cid)
            work.members[cid] = [sender, user]
            owner[user.id] = cid
        return work, idle, owner
    finally:
        await rest.aclose()


# ---------------------------------------------------------------------------- the crowd


async def device(url: str, user: User, cid: str, *, first: bool, opts: Options, crowd: Crowd,
                 cuts: list[trio.Event], index: int, rng: random.Random) -> None:
    """One idle socket, for ever: read what arrives; the account's first device answers a
    share with read receipts and types now and then; reconnect when `cuts[index]` is set
    (churn: the churner then puts a fresh event there) or when the socket drops."""
    host, port = _host_port(url)
    while True:
        cut = cuts[index]
        try:
            async with trio.open_nursery() as nursery:
                ws = await connect(nursery, host, port, user, kind="lean")
                crowd.up()
                try:
                    await _use(ws, cid, first=first, opts=opts, crowd=crowd, cut=cut, rng=rng)
                finally:
                    crowd.sockets -= 1
                    with trio.CancelScope(shield=True):
                        await ws.cut()
                nursery.cancel_scope.cancel()
        except* (*CONNECT_FAILURES, ConnectionClosed) as group:  # raised inside the nursery
            phase = "traffic" if crowd.full.is_set() else "opening"
            if phase == "traffic":
                crowd.reconnect_failures += 1
            else:
                crowd.open_failures += 1
            kinds = crowd.failure_kinds[phase]
            for exc in leaves(group):
                kind = type(exc).__name__
                if isinstance(exc, HandshakeError):  # its message is the refusal's status
                    kind += f": {str(exc)[:60]}"
                kinds[kind] = kinds.get(kind, 0) + 1
            await trio.sleep(0.5)  # retry pacing for a refused or dropped socket
        else:
            crowd.reconnects += 1


async def _use(ws: Ws, cid: str, *, first: bool, opts: Options, crowd: Crowd,
               cut: trio.Event, rng: random.Random) -> None:
    async with trio.open_nursery() as nursery:

        async def on_cut() -> None:
            await cut.wait()
            nursery.cancel_scope.cancel()

        async def typing() -> None:
            while True:
                await trio.sleep(rng.expovariate(1 / opts.typing_every))  # the user's rhythm
                await ws.send(_encode({"type": "typing",
                                       "payload": {"conversation_id": cid, "is_typing": True}}))
                crowd.typing += 1

        nursery.start_soon(on_cut)
        if first and opts.typing_every > 0:
            nursery.start_soon(typing)
        while True:
            env, _ = await ws.recv()
            if env.type == "new_message":
                crowd.received += 1
                if first and rng.random() < opts.receipt_share:
                    message_id = msgspec.json.decode(env.payload)["id"]
                    await ws.send(_encode({"type": "read_receipt",
                                           "payload": {"message_id": message_id}}))
                    crowd.receipts += 1
            elif env.type == "error":
                code = msgspec.json.decode(env.payload).get("code", "?")
                crowd.errors[code] = crowd.errors.get(code, 0) + 1


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


# ---------------------------------------------------------------------------- sampling


def _proc(pid: int) -> tuple[float, int]:
    """RSS (MiB) and open fds of a process."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def _gauges(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    wanted = {"chatsrv_tasks", "chatsrv_connections"}
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name in wanted}


def _refusals(metrics_text: str) -> dict[str, float]:
    """Handshakes the node refused, by reason (a cap, the origin check), from a scrape."""
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == "chatsrv_ws_refused_total"}


def growth(samples: list[Sample], attr: str, *, warmup: float) -> float | None:
    """The mean of the last TAIL_WINDOW seconds over the mean of the first TAIL_WINDOW
    seconds after warm-up, minus 1 (None: too short a run to tell)."""
    after = [s for s in samples if s.t >= warmup]
    if not after or after[-1].t - after[0].t < 2 * TAIL_WINDOW:
        return None
    head = [getattr(s, attr) for s in after if s.t < after[0].t + TAIL_WINDOW]
    tail = [getattr(s, attr) for s in after if s.t > after[-1].t - TAIL_WINDOW]
    return statistics.fmean(tail) / statistics.fmean(head) - 1


# ---------------------------------------------------------------------------- the run


async def run(opts: Options) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="chatsrv-soak-"))
    try:
        return await _run(opts, root)
    finally:
        _keep_logs(root, opts.out)
        shutil.rmtree(root, ignore_errors=True)


def _keep_logs(root: Path, out: Path) -> None:
    """The node's own account of the run, kept beside the report."""
    out.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        shutil.copy(log, out / log.name)


async def _run(opts: Options, root: Path) -> dict[str, Any]:
    crowd = Crowd(target=opts.sockets)
    samples: list[Sample] = []
    rng = random.Random(16)
    async with open_private_postgres() as pg, open_nodes(root) as nodes:
        node = add_node(nodes, root, "node-1", pg=pg, source=opts.server_src,
                        extra={"LOG_LEVEL": "WARNING"})
        await node.start()
        assert node.pid is not None
        work, idle, owner = await set_up(node.url, opts)
        ledger = Ledger()
        cuts: list[trio.Event] = []
        async with trio.open_nursery() as crowd_nursery, \
                httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            left = opts.sockets
            for user in idle:
                for d in range(min(opts.devices, left)):
                    cuts.append(trio.Event())
                    crowd_nursery.start_soon(partial(
                        device, node.url, user, owner[user.id], first=d == 0, opts=opts,
                        crowd=crowd, cuts=cuts, index=len(cuts) - 1, rng=rng))
                left -= opts.devices
            with trio.fail_after(300):
                await crowd.full.wait()
            async with open_traffic(work, rate=opts.rate, ledger=ledger,
                                    watch=[node.child.watch]):
                stages_before = stage_histograms((await http.get("/metrics")).text)
                start = trio.current_time()
                seen = 0
                churned = 0.0
                next_sample = start + opts.sample
                while (now := trio.current_time()) < start + opts.duration:
                    await trio.sleep(min(1.0, max(0.0, next_sample - now)))  # churn rhythm
                    churned += opts.churn
                    while churned >= 1:
                        churned -= 1
                        i = rng.randrange(len(cuts))
                        cuts[i].set()
                        cuts[i] = trio.Event()
                    if trio.current_time() >= next_sample:
                        next_sample += opts.sample
                        acks = list(ledger.acks.values())
                        window = [a.rtt * 1000 for a in acks[seen:]]
                        seen = len(acks)
                        window.sort()
                        rss, fds = _proc(node.pid)
                        g = await _gauges(http)
                        samples.append(Sample(
                            round(trio.current_time() - start, 1), round(rss, 1), fds,
                            g.get("chatsrv_tasks", math.nan),
                            g.get("chatsrv_connections", math.nan), len(window),
                            round(quantile(window, 0.5), 2) if window else None,
                            round(quantile(window, 0.99), 2) if window else None))
                        s = samples[-1]
                        print(f"{s.t:7.0f}s rss {s.rss_mib:7.1f} MiB  fds {s.fds:6d}  "
                              f"tasks {s.tasks:6.0f}  sockets {s.connections:6.0f}  "
                              f"acked {s.acked:6d}  p50/p99 {s.ack_p50_ms}/{s.ack_p99_ms} ms  "
                              f"failed (re)connects {crowd.reconnect_failures}", flush=True)
            metrics_text = (await http.get("/metrics")).text  # one scrape for both
            refused = _refusals(metrics_text)
            stages = stage_breakdown(stages_before, stage_histograms(metrics_text))
            crowd_nursery.cancel_scope.cancel()
        result = await check(ledger, work, [node.url])
        deaths = node.child.deaths
    found = result.problems()
    grew = {a: growth(samples, a, warmup=opts.warmup) for a in ("rss_mib", "fds", "tasks")}
    for attr, by in grew.items():
        if by is not None and by > GROWTH_BOUND:
            found.append(f"{attr} grew {by:.1%} after warm-up (bound {GROWTH_BOUND:.0%})")
    if deaths:
        found.append(f"node deaths: {deaths}")
    if ledger.failures:
        found.append(f"send failures: {dict(ledger.failures)}")
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "counts": counts(ledger, result),
        "crowd": {k: getattr(crowd, k) for k in ("sockets", "received", "receipts", "typing",
                                                 "reconnects", "reconnect_failures",
                                                 "open_failures", "failure_kinds",
                                                 "errors")},
        "refused_by_node": refused,
        "send_stages": stages,  # where the server's send-to-ack time went, per stage
        "growth": grew,
        "samples": [asdict(s) for s in samples], "problems": found, "notes": result.notes[:50],
    }


# ---------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    c, crowd, g = report["counts"], report["crowd"], report["growth"]
    samples = report["samples"]
    p99s = [s["ack_p99_ms"] for s in samples if s["ack_p99_ms"] is not None]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1%}"

    lines = [
        f"soak {report['started']} to {report['ended']}: {report['options']['duration']:.0f} s, "
        f"{report['options']['sockets']} idle sockets + {report['options']['senders']} senders",
        "",
        "| sent | acked | lost | stored twice | false acks | gaps | sync missing | "
        "receipts | typing | reconnects | growth RSS / fds / tasks | ack p99 ms (min-max of "
        "windows) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {c['sent']} | {c['acked']} | {c['lost']} | {c['stored_twice']} | "
        f"{c['false_acks']} | {c['gaps']} | {c['sync_missing']} | {crowd['receipts']} | "
        f"{crowd['typing']} | {crowd['reconnects']} | {pct(g['rss_mib'])} / {pct(g['fds'])} / "
        f"{pct(g['tasks'])} | {min(p99s, default=0):.1f}-{max(p99s, default=0):.1f} |",
        "",
        f"failed connects while the crowd first connected: {crowd['open_failures']} "
        f"{crowd['failure_kinds']['opening'] or ''}; failed reconnects during the traffic: "
        f"{crowd['reconnect_failures']} {crowd['failure_kinds']['traffic'] or ''}; "
        f"handshakes the node refused: {report['refused_by_node'] or 'none'}; "
        f"error frames: {crowd['errors'] or 'none'}",
        "",
        "server send-to-ack by stage, ms (mean / p50 / p90): " + ", ".join(
            f"{st['stage']} {st['mean_ms']} / {st['p50_ms']} / {st['p90_ms']}"
            for st in report["send_stages"]),
        "",
        "problems: " + ("; ".join(report["problems"]) or "none"),
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = report["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(16, 12), sharex=True, dpi=100)
    for ax, key, label in zip(axes, ("rss_mib", "fds", "tasks", "ack_p99_ms"),
                              ("server RSS (MiB)", "server open fds", "server Trio tasks",
                               "ack latency (ms)"), strict=True):
        values = [s[key] if s[key] is not None else math.nan for s in samples]
        ax.plot(t, values, label=key.removeprefix("ack_").removesuffix("_ms"))
        ax.set_ylabel(label)
        ax.axvline(report["options"]["warmup"] / 60, linestyle=":", color="grey",
                   label="warm-up ends")
        ax.set_ylim(0, max((v for v in values if not math.isnan(v)), default=1) * 1.2)
    axes[-1].plot(t, [s["ack_p50_ms"] if s["ack_p50_ms"] is not None else math.nan
                      for s in samples], label="p50")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel("minutes since the traffic started")
    fig.suptitle(f"chatsrv soak, {report['started']}: "
                 f"{report['options']['sockets']} sockets, {report['options']['senders']} "
                 f"senders at {report['options']['rate']}/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800, help="seconds of traffic")
    p.add_argument("--sockets", type=int, default=5000, help="idle sockets")
    p.add_argument("--devices", type=int, default=10, help="idle sockets per account")
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--rate", type=float, default=5.0, help="messages/s per sender")
    p.add_argument("--receipt-share", type=float, default=0.5,
                   help="share of received messages a first device marks read")
    p.add_argument("--typing-every", type=float, default=20.0,
                   help="mean seconds between a first device's typing frames (0: none)")
    p.add_argument("--churn", type=float, default=5.0, help="idle sockets reconnected per s")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds not compared (default: a sixth of the run)")
    p.add_argument("--server-src", type=Path, help="run chatsrv from this source tree")
    p.add_argument("--out", type=Path, default=Path("bench/out/soak"))
    a = p.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"soak: {missing}", file=sys.stderr)
        return 2
    raise_fd_limit()
    opts = Options(a.duration, a.sockets, a.devices, a.senders, a.rate, a.receipt_share,
                   a.typing_every, a.churn, a.sample,
                   a.warmup if a.warmup is not None else a.duration / 6,
                   a.server_src.resolve() if a.server_src else None, a.out)
    started = wall_clock()
    report = trio.run(run, opts)
    report["started"], report["ended"] = started, wall_clock()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "soak.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (a.out / "soak.md").write_text(text)
    plotted = plot(report, a.out / "soak.png")
    print(text + f"report in {a.out}/ (soak.json, soak.md{', soak.png' if plotted else ''})")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
