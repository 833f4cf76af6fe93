"""Reports: results.json (everything), results.md (one table per backend) and bench.png
(latency CDFs and throughput over time; only when matplotlib, the `bench` extra, is
installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NONE = "\N{EN DASH}"  # an empty cell
BACKEND_TITLES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "target": "Target server"}


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- markdown


def _num(x: Any, digits: int = 1) -> str:
    if x is None:
        return NONE
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def _counts(counts: dict[str, Any]) -> str:
    keep = ("sent", "acked", "received", "messages", "deliveries", "expected_deliveries",
            "lost", "duplicated", "sockets", "users", "connected", "connect_failures", "ready",
            "failed", "open_at_end", "answered_ping",
            "incomplete", "undelivered", "closed_by_server", "errors", "cuts", "connections")
    parts = []
    for k in keep:
        v = counts.get(k)
        if v is None or isinstance(v, bool | dict):
            continue
        if k in ("incomplete", "undelivered", "closed_by_server", "errors", "failed",
                 "connect_failures") and not v:
            continue
        parts.append(f"{k.replace('_', ' ')} {_num(v)}")
    return ", ".join(parts)


def _rate(row: dict[str, Any]) -> str:
    parts = []
    for k, v in (row.get("rate") or {}).items():
        unit = {"acked_per_s": "acked/s", "delivered_per_s": "delivered/s",
                "deliveries_per_s": "deliveries/s", "messages_per_s": "msg/s",
                "all_ready_s": "s to all ready", "connects_per_s": "connects/s"}.get(k, k)
        parts.append(f"{_num(v)} {unit}")
    mem = row.get("memory")
    if mem:
        parts.append(f"{_num(mem.get('kib_per_connection'), 2)} KiB/conn "
                     f"(RSS {_num(mem.get('rss_before_mib'))}→{_num(mem.get('rss_after_mib'))} MiB)")
    return ", ".join(parts)


def _usage(u: dict[str, Any] | None) -> tuple[str, str]:
    if not u:
        return NONE, NONE
    cpu = f"{_num(u.get('server_cpu_pct'), 0)}%"
    extra = []
    if u.get("db_cpu_pct") is not None:
        extra.append(f"pg {_num(u['db_cpu_pct'], 0)}%")
    if u.get("generator_cpu_pct") is not None:
        extra.append(f"gen {_num(u['generator_cpu_pct'], 0)}%")
    if u.get("other_cpu_pct") is not None:
        extra.append(f"other {_num(u['other_cpu_pct'], 0)}%")
    if extra:
        cpu += f" ({', '.join(extra)})"
    rss = f"{_num(u.get('server_rss_end_mib'))} MiB"
    if u.get("server_rss_peak_mib") is not None:
        rss += f" (peak {_num(u['server_rss_peak_mib'])})"
    return cpu, rss


def markdown(report: dict[str, Any]) -> str:
    out = []
    for backend, run in report["backends"].items():
        out.append(f"### {BACKEND_TITLES.get(backend, backend)}\n")
        if run.get("error"):
            out.append(f"**The run failed:** {run['error']}\n")
        out.append("| scenario | case | p50 ms | p95 ms | p99 ms | max ms | counts | rate | "
                   "CPU (% of a core) | server RSS | target | met |")
        out.append("|---|---|---:|---:|---:|---:|---|---|---|---|---|:-:|")
        for name, res in run.get("scenarios", {}).items():
            if not res.get("ok"):
                out.append(f"| {name} | **failed**: {res.get('error')} | | | | | | | | | | ❌ |")
                continue
            for row in res.get("rows", []):
                lat = row.get("latency_ms") or {}
                cpu, rss = _usage(row.get("usage"))
                target = row.get("target") or {}
                met = "" if not target else "✅" if target.get("ok") else "❌"
                out.append(
                    f"| {name} | {row['case']} | {_num(lat.get('p50'), 2)} | "
                    f"{_num(lat.get('p95'), 2)} | {_num(lat.get('p99'), 2)} | "
                    f"{_num(lat.get('max'), 2)} | {_counts(row.get('counts') or {})} | "
                    f"{_rate(row)} | {cpu} | {rss} | {target.get('text', '')} | {met} |")
        stages = run.get("scenarios", {}).get("throughput_1to1", {}).get("stages")
        if stages:
            out.append("\nthroughput_1to1 stages:\n")
            out.append("| senders | acked/s | delivered/s | ack p50 / p99 ms | "
                       "receive p50 / p99 ms | server CPU | pg CPU | generator CPU |")
            out.append("|---:|---:|---:|---|---|---:|---:|---:|")
            for st in stages:
                u = st.get("usage") or {}
                out.append(
                    f"| {st['senders']} | {_num(st['acked_per_s'])} | "
                    f"{_num(st['delivered_per_s'])} | {_num(st['ack_ms']['p50'], 2)} / "
                    f"{_num(st['ack_ms']['p99'], 2)} | {_num(st['receive_ms']['p50'], 2)} / "
                    f"{_num(st['receive_ms']['p99'], 2)} | {_num(u.get('server_cpu_pct'), 0)}% | "
                    f"{_num(u.get('db_cpu_pct'), 0)}% | {_num(u.get('generator_cpu_pct'), 0)}% |")
        out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- plot


def plot(report: dict[str, Any], path: Path) -> bool:
    """Write the figure; False when matplotlib is not installed (the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [(b, r) for b, r in report["backends"].items() if r.get("scenarios")]
    if not runs:
        return False
    fig, axes = plt.subplots(len(runs), 3, figsize=(15, 4.2 * len(runs)), squeeze=False)
    for (backend, run), (ax_cdf, ax_tp, ax_bc) in zip(runs, axes, strict=True):
        title = BACKEND_TITLES.get(backend, backend)
        sc = run["scenarios"]
        for name, res in sc.items():
            if not res.get("ok"):
                continue
            for row in res.get("rows", []):
                cdf = (row.get("latency_ms") or {}).get("cdf")
                if not cdf or name in ("connect_storm", "reconnect_storm_loss"):
                    continue
                ys = [i / (len(cdf) - 1) for i in range(len(cdf))]
                ax_cdf.plot([max(x, 1e-3) for x in cdf], ys, label=f"{name}: {row['case']}")
        if not ax_cdf.lines:
            ax_cdf.text(0.5, 0.5, "no latency scenario run", ha="center", va="center",
                        transform=ax_cdf.transAxes)
        ax_cdf.set_xscale("log")
        ax_cdf.set_xlabel("latency (ms, log)")
        ax_cdf.set_ylabel("fraction ≤ x")
        ax_cdf.set_title(f"{title}: latency CDF")
        ax_cdf.grid(True, which="both", alpha=0.3)
        if ax_cdf.lines:
            ax_cdf.legend(fontsize=6, loc="lower right")
        _timeline(ax_tp, sc.get("throughput_1to1"), f"{title}: throughput_1to1 ramp",
                  "messages/s")
        _timeline(ax_bc, sc.get("broadcast_throughput"), f"{title}: broadcast_throughput",
                  "frames/s")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def _timeline(ax: Any, res: dict[str, Any] | None, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("seconds since the scenario's sockets were up")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not res or not res.get("ok") or not res.get("timeline"):
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return
    tl = res["timeline"]
    for name, values in tl["series"].items():
        ax.plot([i * tl["bin_s"] for i in range(len(values))], values, label=name)
    for stage in res.get("stages", []):  # throughput_1to1: shade each measured window
        if "window_s" in stage:
            start, end = stage["window_s"]
            ax.axvspan(start, end, alpha=0.08, color="green")
            ax.text((start + end) / 2, 0.98, f"{stage['senders']}", ha="center", va="top",
                    fontsize=7, transform=ax.get_xaxis_transform())
    ax.legend(fontsize=7)
