"""Reports: results.json (everything), results.md (one table per backend) and bench.png
(latency CDFs and throughput over time; only when matplotlib, the `bench` extra, is
installed: `just bench` installs it). `python -m bench.report RESULTS_JSON PNG` draws a
run's plot again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NONE = "\N{EN DASH}"  # an empty cell
BACKEND_TITLES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "target": "Target server",
                  "cluster": "Cluster (PostgreSQL + Redis, bench/cluster.py)"}


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
                "all_ready_s": "s to all ready", "connects_per_s": "connects/s",
                "redis_commands_per_msg": "Redis commands/msg",
                "pg_statements_per_msg": "PostgreSQL statements/msg",
                "peer_events_per_msg": "node-to-node events/msg",
                "redis_commands_per_connection": "Redis commands/connection",
                "pg_statements_per_connection": "PostgreSQL statements/connection",
                "senders_acked_again_s": "s until every sender was acked again"}.get(k, k)
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
        send_stages = run.get("scenarios", {}).get("latency_1to1", {}).get("send_stages")
        if send_stages:
            out.append("\nlatency_1to1, the server's breakdown of the same sends "
                       "(chatsrv_send_stage_seconds; p50/p90 interpolated in its buckets):\n")
            out.append("| stage | messages | mean ms | p50 ms | p90 ms |")
            out.append("|---|---:|---:|---:|---:|")
            for st in send_stages:
                out.append(f"| {st['stage']} | {st['count']} | {_num(st['mean_ms'], 3)} | "
                           f"{_num(st['p50_ms'], 3)} | {_num(st['p90_ms'], 3)} |")
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

PLOT_WIDTH_PX = 1600
PLOT_DPI = 100
PLOT_ROW_IN = 5.2  # inches of height per backend
INSTALL_HINT = ("matplotlib is not installed: `.venv/bin/pip install -e '.[bench]'` (or "
                "`just bench`, which installs it), then `just bench-plot OUT/results.json "
                "OUT/bench.png` draws this run's plot")


def can_plot() -> bool:
    """Is matplotlib (the `bench` extra) installed?"""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(report: dict[str, Any], path: Path) -> bool:
    """Write the figure (PLOT_WIDTH_PX wide) to `path`. False when matplotlib (the `bench`
    extra) is not installed, or nothing ran."""
    fig = figure(report)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


def figure(report: dict[str, Any]) -> Any:
    """Per backend: latency CDFs with their legend beside the curves, and the throughput
    timelines with theirs below; a matplotlib Figure, or None (no matplotlib, no run)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return None
    runs = [(b, r) for b, r in report["backends"].items() if r.get("scenarios")]
    if not runs:
        return None
    fig, axes = plt.subplots(
        len(runs), 3, squeeze=False, layout="constrained", dpi=PLOT_DPI,
        figsize=(PLOT_WIDTH_PX / PLOT_DPI, PLOT_ROW_IN * len(runs)),
        gridspec_kw={"width_ratios": [1.15, 1, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for (backend, run), (ax_cdf, ax_tp, ax_bc) in zip(runs, axes, strict=True):
        title = BACKEND_TITLES.get(backend, backend)
        sc = run["scenarios"]
        n = 0
        for name, res in sc.items():
            if not res.get("ok") or name in ("connect_storm", "reconnect_storm_loss"):
                continue
            curves = [row for row in res.get("rows", [])
                      if (row.get("latency_ms") or {}).get("cdf")]
            if curves:  # one colour per scenario, one line style per case
                colour, n = colours[n % len(colours)], n + 1
            for i, row in enumerate(curves):
                cdf = row["latency_ms"]["cdf"]
                ys = [k / (len(cdf) - 1) for k in range(len(cdf))]
                ax_cdf.plot([max(x, 1e-3) for x in cdf], ys, color=colour,
                            linestyle=styles[i % len(styles)], linewidth=1.6,
                            label=_wrap(f"{name}: {row['case']}", 38))
        if not ax_cdf.lines:
            ax_cdf.text(0.5, 0.5, "no latency scenario run", ha="center", va="center",
                        transform=ax_cdf.transAxes)
        ax_cdf.set_xscale("log")
        # plain numbers at 1-2-5 steps (1, 2, 5, 10, 20...), not 10^x
        ax_cdf.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax_cdf.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_cdf.xaxis.set_minor_formatter(NullFormatter())
        ax_cdf.set_xlabel("latency (ms, log scale)")
        ax_cdf.set_ylabel("fraction of messages at or below")
        ax_cdf.set_ylim(0, 1.02)
        ax_cdf.set_title(f"{title}: latency CDF")
        ax_cdf.grid(True, which="both", alpha=0.3)
        if ax_cdf.lines:
            ax_cdf.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                          frameon=False, handlelength=2.6, labelspacing=0.9)
        _timeline(ax_tp, sc.get("throughput_1to1"), f"{title}: throughput_1to1 ramp",
                  "messages/s")
        _timeline(ax_bc, sc.get("broadcast_throughput"), f"{title}: broadcast_throughput",
                  "frames/s")
    when = str(report.get("started_at", ""))[:10]
    digest = (report.get("server_source") or {}).get("sha256_16")
    fig.suptitle(f"chatsrv bench {when}" + (f", server source {digest}" if digest else "")
                 + (" (--quick)" if report.get("quick") else ""), fontsize=12)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _timeline(ax: Any, res: dict[str, Any] | None, title: str, ylabel: str) -> None:
    """Series over time, on a log scale when one is over 10x another (broadcast: ~2,000
    sends/s under ~90,000 deliveries/s), so both stay readable. The legend goes below the
    axes, outside the curves."""
    ax.set_title(title)
    ax.set_xlabel("seconds since the scenario's sockets were up")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not res or not res.get("ok") or not res.get("timeline"):
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return
    tl = res["timeline"]
    series = [(name, values) for name, values in tl["series"].items() if values]
    peaks = [max(values) for _, values in series]
    log = bool(peaks) and min(peaks) > 0 and max(peaks) > 10 * min(peaks)
    lines = []
    for i, (name, values) in enumerate(series):
        xs = [k * tl["bin_s"] for k in range(len(values))]
        lines += ax.plot(xs, values, label=name, color=f"C{i}", linewidth=1.6,
                         linestyle="--" if i else "-")
    if log:
        from matplotlib.ticker import FuncFormatter  # plot() checked it is there

        ax.set_yscale("log")
        ax.set_ylabel(f"{ylabel} (log scale)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    else:
        ax.set_ylim(bottom=0)
    for stage in res.get("stages", []):  # throughput_1to1: shade each measured window
        if "window_s" in stage:
            start, end = stage["window_s"]
            ax.axvspan(start, end, alpha=0.08, color="green")
            ax.text((start + end) / 2, 0.98, f"{stage['senders']}", ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform())
    if res.get("stages"):
        lines.append(ax.axvspan(0, 0, alpha=0.08, color="green",
                                label="measured window (senders)"))
    ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=len(lines), fontsize=8, frameon=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report RESULTS_JSON PNG`: draw a run's plot again."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("results", type=Path, help="a bench run's results.json")
    p.add_argument("png", type=Path, help="where the plot goes")
    args = p.parse_args(argv)
    if not plot(json.loads(args.results.read_text()), args.png):
        print(f"no plot: {INSTALL_HINT}", file=sys.stderr)
        return 1
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
