"""`python -m bench`: start (or target) a chatsrv server, run the scenarios, write reports.

Exit status: 0 when every scenario ran and reconnect_storm_loss lost and duplicated
nothing (timings never change it); 1 otherwise; 2 for bad arguments or a server that could
not be started or reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import hashlib
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from bench import client, report
from bench.runner import QUICK, Progress, Scale, override, run_scenarios
from bench.scenarios import REGISTRY, SCENARIOS
from bench.server import ServerInfo, TargetError, started_server, target_server

PG_ADMIN_DSN = os.environ.get("CHATSRV_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def parser(scenarios: list[str] = SCENARIOS, prog: str = "python -m bench"
           ) -> argparse.ArgumentParser:
    """The options; bench/cluster.py reuses them with its own scenario names."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Load bench for chatsrv. Starts a server per backend on 127.0.0.1 (or "
                    "targets one with --target), runs the scenarios one at a time and writes "
                    "results.json, results.md and bench.png into --out.")
    p.add_argument("--quick", action="store_true",
                   help="tiny counts, a few seconds per scenario (the CI smoke)")
    p.add_argument("--scenario", action="append", choices=scenarios, metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(scenarios)}")
    p.add_argument("--client", choices=client.CLIENTS, default="lean",
                   help="the generator's WebSocket client: lean (bench/lean.py, default: "
                        "little CPU per received frame), trio-websocket, or websockets "
                        "(the PyPI package on asyncio: a third-party client)")
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both",
                   help="storage of the server the bench starts (default both, PostgreSQL "
                        "first)")
    p.add_argument("--target", metavar="URL",
                   help="use an already running server (http://127.0.0.1:PORT) instead of "
                        "starting one; it must allow the load (RATE_PER_SECOND, RATE_BURST)")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="with --target: the server's pid, to measure its CPU and RSS")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where reports go (default bench/out/<date-time>)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="sets",
                   help="override a scale field, e.g. --set idle_hold=10 or "
                        "--set fanout_sizes=50,200 (see bench/runner.py: Scale)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for a server the bench starts, e.g. "
                        "--server-env WS_OUTBOX_SIZE=1024")
    p.add_argument("--server-src", type=Path, metavar="DIR",
                   help="run the server from this source tree (a directory holding chatsrv/ "
                        "and sql/) instead of the installed package, e.g. a fixed copy to "
                        "measure while the working tree changes")
    p.add_argument("--pg-admin-dsn", default=PG_ADMIN_DSN,
                   help="PostgreSQL used to create and drop the run's database "
                        "(default $CHATSRV_BENCH_PG or postgresql://postgres@127.0.0.1:5432/"
                        "postgres)")
    p.add_argument("--no-plot", action="store_true", help="skip bench.png")
    p.add_argument("--profile", action="append", default=[], choices=scenarios, metavar="NAME",
                   help="sample the server with py-spy during this scenario (repeatable; "
                        "needs `pip install py-spy` and a server pid); best in a run of its "
                        "own, as sampling slows the server")
    return p


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                            "kernel": platform.release()}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def source_digest(root: Path) -> str | None:
    """sha256 (first 16 hex digits) of the server's source (chatsrv/**/*.py and sql/**), to
    tell which code a report measured when the tree has uncommitted changes."""
    files = sorted([*root.glob("chatsrv/**/*.py"), *root.glob("sql/**/*.sql")])
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def loadavg() -> str | None:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard limit (10,000 sockets need it); returns the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _run_one(server: ServerInfo, scale: Scale, names: list[str], args: argparse.Namespace,
             out: Path) -> list[dict[str, Any]]:
    progress = Progress(server.backend)
    progress.log(f"server {server.base_url} pid {server.pid or 'unknown'}")
    async def run() -> list[dict[str, Any]]:
        return await run_scenarios(server, scale, names, REGISTRY, quick=args.quick,
                                   progress=progress, out=out, profile=frozenset(args.profile))

    if args.client == "websockets":  # an asyncio client: the run hosts an asyncio loop
        return trio_asyncio.run(run)  # type: ignore[no-any-return]
    return trio.run(run)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    scale = QUICK if args.quick else Scale()
    try:
        scale = override(scale, args.sets)
        extra_env = dict(_pair(x) for x in args.server_env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.server_pid and not args.target:
        print("error: --server-pid goes with --target", file=sys.stderr)
        return 2
    client.client_kind = args.client
    # as in the server (chatsrv.app._tune_gc): with thousands of sockets, the default
    # cadence of full collections stalls the generator's reads for tens of milliseconds
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    names = [n for n in SCENARIOS if not args.scenario or n in args.scenario]
    out: Path = args.out or Path("bench/out") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    fd_limit = raise_fd_limit()
    started = time.monotonic()
    rep: dict[str, Any] = {
        "tool": "chatsrv bench",
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine() | {"generator_fd_limit": fd_limit, "loadavg_at_start": loadavg()},
        "server_source": None if args.target else {
            "dir": str((args.server_src or Path.cwd()).resolve()),
            "sha256_16": source_digest(args.server_src or Path.cwd())},
        "quick": args.quick,
        "client": args.client,
        "scale": dataclasses.asdict(scale),
        "backends": {},
    }
    backends = (["target"] if args.target else
                ["postgres", "sqlite"] if args.backend == "both" else [args.backend])
    code = 0
    for backend in backends:
        run: dict[str, Any] = {}
        rep["backends"][backend] = run
        try:
            if args.target:
                server = target_server(args.target, args.server_pid)
                run["server"] = {"url": server.base_url, "pid": server.pid}
                results = _run_one(server, scale, names, args, out)
            else:
                with started_server(backend, out, pg_admin_dsn=args.pg_admin_dsn,
                                    extra_env=extra_env, source=args.server_src) as server:
                    run["server"] = {"url": server.base_url, "pid": server.pid,
                                     "env": server.env}
                    results = _run_one(server, scale, names, args, out)
        except TargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            run["error"] = str(exc)
            code = max(code, 2)
            continue
        run["scenarios"] = {r["name"]: r for r in results}
        for r in results:
            if not r["ok"] or r.get("lost") or r.get("duplicated"):
                code = max(code, 1)
        _write(rep, out, started, plot=not args.no_plot)  # partial reports survive a crash
    _write(rep, out, started, plot=not args.no_plot)
    print(report.markdown(rep))
    print(f"reports in {out}/ (results.json, results.md"
          f"{', bench.png' if (out / 'bench.png').exists() else ''}); "
          f"took {time.monotonic() - started:.0f}s", file=sys.stderr)
    if not args.no_plot and not report.can_plot():
        print(f"no bench.png: {report.INSTALL_HINT.replace('OUT', str(out))}",
              file=sys.stderr)
    return code


def _write(rep: dict[str, Any], out: Path, started: float, *, plot: bool) -> None:
    rep["finished_at"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    rep["machine"]["loadavg_at_end"] = loadavg()
    rep["duration_s"] = round(time.monotonic() - started, 1)
    report.write_json(rep, out / "results.json")
    (out / "results.md").write_text(report.markdown(rep))
    if plot:
        report.plot(rep, out / "bench.png")


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {item!r}")
    return name, value
