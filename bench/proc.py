"""CPU time and memory of the processes under test, read from /proc (Linux only).

Plain sync functions: each reads one or a few small files under /proc, which never block.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (its threads included), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may hold spaces or parentheses: the fields we want come after the last ')'
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def postgres_cpu_seconds(database: str) -> float:
    """CPU time of the PostgreSQL processes working for `database`: its backends (the
    server's pool) and the background processes of the same cluster (WAL writer,
    checkpointer, ...). Backends of other databases and other clusters on the machine (tests,
    containers) are left out. A backend that exits takes its time with it; the server's pool
    is persistent, so that does not happen during a scenario."""
    procs: list[tuple[bytes, bytes]] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.index(b"(") + 1:stat.rindex(b")")] != b"postgres":
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").strip()
        except (OSError, ValueError):
            continue
        procs.append((stat, cmdline))
    marker = f" {database} ".encode()
    ours = [c for _, c in procs if marker in c]
    if not ours:
        return 0.0
    # "postgres: 15/main: postgres chatsrv_bench_x 127.0.0.1(5432) idle" -> "postgres: 15/main: "
    prefix = ours[0][:ours[0].index(marker)].rsplit(b" ", 1)[0] + b" "
    total = 0.0
    for stat, cmdline in procs:
        background = cmdline.startswith(prefix) and b"(" not in cmdline and b"[local]" not in cmdline
        if marker in cmdline or background:
            fields = stat[stat.rindex(b")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine, all cores (so 2 cores busy for 1 s = 2.0)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK


def self_cpu_seconds() -> float:
    """CPU time of this (the load generator's) process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The server's CPU and RSS, PostgreSQL's CPU for the run's database, ours, the
    machine's, at one moment (runner.Ctx.begin)."""

    at: float
    server_cpu: float | None
    server_rss: int | None
    db_cpu: float | None
    generator_cpu: float
    machine_cpu: float
    node_cpu: tuple[float | None, ...] = ()  # cluster mode: each node's (server_cpu: the sum)


def usage(a: Snapshot, b: Snapshot, *, peak_rss: int | None = None) -> dict[str, Any]:
    """CPU as % of one core between two snapshots, and the server's RSS in MiB."""
    wall = max(b.at - a.at, 1e-9)

    def pct(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round(100 * (y - x) / wall, 1)

    def mib(x: int | None) -> float | None:
        return None if x is None else round(x / 2**20, 1)

    measured = [pct(a.server_cpu, b.server_cpu), pct(a.db_cpu, b.db_cpu),
                pct(a.generator_cpu, b.generator_cpu)]
    machine = pct(a.machine_cpu, b.machine_cpu)
    return {
        "wall_s": round(wall, 2),
        "server_cpu_pct": measured[0],
        "db_cpu_pct": measured[1],
        "generator_cpu_pct": measured[2],
        # all cores (200% = both busy); "other" is everything else running on the machine,
        # which should be near 0 for numbers worth keeping
        "machine_cpu_pct": machine,
        "other_cpu_pct": None if machine is None else
        round(max(0.0, machine - sum(x or 0.0 for x in measured)), 1),
        "server_rss_start_mib": mib(a.server_rss),
        "server_rss_end_mib": mib(b.server_rss),
        "server_rss_peak_mib": mib(max(filter(None, (peak_rss, a.server_rss, b.server_rss)),
                                       default=None)),
    } | ({"node_cpu_pct": [pct(x, y) for x, y in zip(a.node_cpu, b.node_cpu, strict=True)]}
         if len(a.node_cpu) > 1 else {})
