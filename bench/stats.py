"""Latency summaries and per-interval counts; pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

CDF_POINTS = 101  # stored quantiles per latency series (0%, 1%, ... 100%): enough to plot


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an ascending sequence (q in [0, 1])."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(samples_ms: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50/p95/p99/max (ms) and a CDF as CDF_POINTS quantiles."""
    values = sorted(samples_ms)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None,
                "cdf": []}
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 3),
        "p50": round(quantile(values, 0.50), 3),
        "p95": round(quantile(values, 0.95), 3),
        "p99": round(quantile(values, 0.99), 3),
        "max": round(values[-1], 3),
        "cdf": [round(quantile(values, i / (CDF_POINTS - 1)), 3) for i in range(CDF_POINTS)],
    }


class Timeline:
    """Events counted per `bin_s` interval since `t0_ns` (perf_counter_ns), per series."""

    def __init__(self, t0_ns: int, bin_s: float = 0.5) -> None:
        self.t0_ns = t0_ns
        self.bin_ns = int(bin_s * 1e9)
        self.bin_s = bin_s
        self.series: dict[str, list[int]] = {}

    def add(self, name: str, t_ns: int, n: int = 1) -> None:
        i = (t_ns - self.t0_ns) // self.bin_ns
        if i < 0:
            return
        bins = self.series.setdefault(name, [])
        if len(bins) <= i:
            bins.extend([0] * (i + 1 - len(bins)))
        bins[i] += n

    def rates(self) -> dict[str, Any]:
        """{"bin_s": .., "series": {name: [events per second per bin]}}."""
        return {"bin_s": self.bin_s,
                "series": {k: [round(c / self.bin_s, 1) for c in v]
                           for k, v in self.series.items()}}


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


STAGE_METRIC = "chatsrv_send_stage_seconds"


def stage_histograms(metrics_text: str) -> dict[str, dict[str, Any]]:
    """The server's per-stage send histograms (chatsrv_send_stage_seconds) from one /metrics
    scrape: stage -> {"buckets": [(upper bound s, cumulative count)], "sum": s, "count": n}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != STAGE_METRIC:
            continue
        for s in family.samples:
            h = out.setdefault(s.labels["stage"], {"buckets": [], "sum": 0.0, "count": 0})
            if s.name.endswith("_bucket"):
                h["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
            elif s.name.endswith("_count"):
                h["count"] = int(s.value)
    return out


def stage_breakdown(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """What the messages sent between two scrapes spent in each stage: count, mean (exact,
    from the sums) and p50/p90 (interpolated within the histogram's buckets), in ms."""
    rows = []
    for stage, h in after.items():
        old = before.get(stage, {"buckets": [], "sum": 0.0, "count": 0})
        n = h["count"] - old["count"]
        if n <= 0:
            continue
        prior = dict(old["buckets"])
        cumulative = [(b, c - prior.get(b, 0.0)) for b, c in h["buckets"]]

        def quantile(q: float, cumulative: list[tuple[float, float]] = cumulative,
                     n: int = n) -> float | None:
            lo_bound, lo_count = 0.0, 0.0
            for bound, count in cumulative:
                if count >= q * n:
                    if bound == float("inf"):
                        return None  # beyond the last finite bucket
                    within = (q * n - lo_count) / (count - lo_count) if count > lo_count else 1
                    return round((lo_bound + (bound - lo_bound) * within) * 1000, 3)
                lo_bound, lo_count = bound, count
            return None

        rows.append({"stage": stage, "count": n,
                     "mean_ms": round((h["sum"] - old["sum"]) / n * 1000, 3),
                     "p50_ms": quantile(0.5), "p90_ms": quantile(0.9)})
    return rows
