"""The node's metrics, in prometheus_client's registry (one per node, never the global one:
tests run several nodes in one process).

Per-frame counters stay plain ints on `Metrics` (an increment per frame out at 90k frames/s
must not take prometheus_client's lock); a collector reads them at scrape time, with the
gauges the composition root registers (`gauge`, read through a callback like Synapse's
LaterGauge). Latencies are histograms: send→ack, commit, fan-out, connect, and the stages
of one WebSocket send (`SendStages`: plain counts per bucket, built into a histogram at
scrape time, for the same reason as the counters).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# seconds: a durable commit is ~0.5-3 ms here; fan-out to 1,000 sockets up to ~60 ms
_FAST = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
         2.5, 5.0)
# the stages of one message, finer: most are tens of microseconds
_STAGE_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

COUNTERS = {
    "connections_opened": "WebSocket connections accepted",
    "connections_closed": "WebSocket connections ended",
    "connections_evicted": "WebSocket connections cut because their outbox overflowed (1013)",
    "connections_timed_out": "WebSocket connections dropped by the heartbeat",
    "frames_in": "WebSocket frames received",
    "frames_out": "WebSocket frames queued for sending",
    "errors_sent": "error frames sent",
    "messages_sent": "messages stored by WebSocket sends (not counting resends)",
}


# One WebSocket chat_message, frame decoded to message_ack queued, in order:
SEND_STAGES = {
    "accept": "decoded frame to queued for commit (validation, block check, mentions, reply)",
    "queue": "queued to taken by its commit lane's writer",
    "commit": "taken to stored (the Trio/asyncio crossing, the statement, the fsync)",
    "fanout": "stored to its new_message frames queued for the members (in batch order)",
    "ack": "fanned out to its message_ack queued (the connection's acker wakes)",
}


class SendStages:
    """Per-stage latency of WebSocket sends: counts per bucket and a sum per stage. An
    observation is a bisect and two additions (prometheus_client's Histogram takes a lock,
    ~1 µs: five per message was 2.5% of a core at 5,000 msg/s)."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [[0] * (len(_STAGE_BOUNDS) + 1) for _ in SEND_STAGES]
        self.sums = [0.0] * len(SEND_STAGES)

    def observe(self, marks: tuple[float, ...]) -> None:
        """One message: its timestamps at the start of each stage and at the end."""
        counts, sums = self.counts, self.sums
        for i in range(len(marks) - 1):
            seconds = marks[i + 1] - marks[i]
            counts[i][bisect_left(_STAGE_BOUNDS, seconds)] += 1
            sums[i] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "chatsrv_send_stage_seconds", "one WebSocket chat_message, by stage: "
            + "; ".join(f"{k}: {v}" for k, v in SEND_STAGES.items()), labels=["stage"])
        for i, stage in enumerate(SEND_STAGES):
            running, buckets = 0, []
            for bound, count in zip((*map(str, _STAGE_BOUNDS), "+Inf"), self.counts[i],
                                    strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([stage], buckets, self.sums[i])
        return family


@dataclass(eq=False)
class Metrics:
    connections_opened: int = 0
    connections_closed: int = 0
    connections_evicted: int = 0
    connections_timed_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors_sent: int = 0
    messages_sent: int = 0
    # background task -> failures it was restarted after (tasks.supervised)
    task_failures: Counter[str] = field(default_factory=Counter)
    # more labelled counters, by metric name (e.g. ws_refused by reason)
    sources: dict[str, Counter[str]] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    send_stages: SendStages = field(default_factory=SendStages)

    def __post_init__(self) -> None:
        self._gauges: list[tuple[str, str, Callable[[], float]]] = []
        self._counters: list[tuple[str, str, Callable[[], float]]] = []
        r = self.registry
        self.send_to_ack = Histogram("chatsrv_send_to_ack_seconds", "chat_message read to its "
                                     "message_ack queued (commit included)", buckets=_FAST,
                                     registry=r)
        self.commit = Histogram("chatsrv_commit_seconds", "one group-commit batch stored",
                                buckets=_FAST, registry=r)
        self.fanout = Histogram("chatsrv_fanout_seconds", "a committed batch's new_message "
                                "frames queued for every member's connections",
                                buckets=_FAST, registry=r)
        self.connect = Histogram("chatsrv_connect_seconds", "a WebSocket handshake, first "
                                 "byte to `ready` queued", buckets=_FAST, registry=r)
        r.register(_Collector(self))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (e.g. live connections)."""
        self._gauges.append((name, help, read))

    def counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (e.g. commit batches), read at scrape time."""
        self._counters.append((name, help, read))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        for name, help in COUNTERS.items():
            family = CounterMetricFamily(f"chatsrv_{name}", help)
            family.add_metric([], getattr(m, name))
            yield family
        failures = CounterMetricFamily("chatsrv_task_failures", "background task failures "
                                       "(each restarted)", labels=["task"])
        for task, count in sorted(m.task_failures.items()):
            failures.add_metric([task], count)
        yield failures
        for metric, counts in sorted(m.sources.items()):
            family = CounterMetricFamily(f"chatsrv_{metric}", metric.replace("_", " "),
                                         labels=["reason"])
            for reason, count in sorted(counts.items()):
                family.add_metric([reason], count)
            yield family
        yield m.send_stages.family()
        for name, help, read in m._counters:
            family = CounterMetricFamily(f"chatsrv_{name}", help)
            family.add_metric([], read())
            yield family
        for name, help, read in m._gauges:
            gauge = GaugeMetricFamily(f"chatsrv_{name}", help)
            gauge.add_metric([], read())
            yield gauge
