"""The load bench cannot rot: its CI-sized run (`python -m bench --quick`) must finish and
report every scenario with real traffic, and lose or duplicate nothing across reconnects.
No timing is asserted: timings on a shared CI machine are not a property of the code."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from chatsrv.metrics import SEND_STAGES
from tests.conftest import PG_ADMIN_DSN

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["latency_1to1", "throughput_1to1", "group_fanout", "broadcast_throughput",
             "idle_connections", "idle_multi_device", "connect_storm", "reconnect_storm_loss"]
# a count in each scenario's first row that says traffic really flowed
TRAFFIC = {"latency_1to1": "received", "throughput_1to1": "received",
           "group_fanout": "deliveries", "broadcast_throughput": "deliveries",
           "idle_connections": "answered_ping", "idle_multi_device": "answered_ping",
           "connect_storm": "ready",
           "reconnect_storm_loss": "received"}


def test_quick_bench_runs_every_scenario_without_loss(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--backend", "sqlite", "--no-plot",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    scenarios = report["backends"]["sqlite"]["scenarios"]
    assert sorted(scenarios) == sorted(SCENARIOS)
    for name, result in scenarios.items():
        assert result["ok"], (name, result.get("error"))
        counts = result["rows"][0]["counts"]
        assert counts[TRAFFIC[name]] > 0, (name, counts)
    loss = scenarios["reconnect_storm_loss"]
    assert loss["lost"] == 0 and loss["duplicated"] == 0, loss["rows"][0]["counts"]
    counts = loss["rows"][0]["counts"]
    assert counts["received"] == counts["expected_deliveries"] > 0
    assert (tmp_path / "results.md").read_text().count("| reconnect_storm_loss |") == 1


def test_quick_bench_runs_with_the_third_party_client(tmp_path: Path) -> None:
    """`--client websockets` (the PyPI package on asyncio) drives the same frames: a short
    latency run and the multi-device idle profile, every message acked and received."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--backend", "sqlite", "--no-plot",
         "--client", "websockets", "--scenario", "latency_1to1",
         "--scenario", "idle_multi_device", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scenarios = json.loads((tmp_path / "results.json").read_text())["backends"]["sqlite"][
        "scenarios"]
    assert sorted(scenarios) == ["idle_multi_device", "latency_1to1"]
    latency = scenarios["latency_1to1"]["rows"][0]["counts"]
    assert latency["sent"] == latency["acked"] == latency["received"] > 0, latency
    idle = scenarios["idle_multi_device"]["rows"][0]["counts"]
    assert idle["answered_ping"] == idle["sockets"] > 0 and idle["users"] < idle["sockets"]
    # the server's own breakdown of the same sends, every stage, every message
    stages = scenarios["latency_1to1"]["send_stages"]
    assert [s["stage"] for s in stages] == list(SEND_STAGES)
    assert all(s["count"] == latency["acked"] and s["mean_ms"] >= 0 for s in stages), stages


def test_the_commit_probe_runs() -> None:
    """bench.commit_probe (RESULTS.md "Why latency_1to1 misses") commits with the server's
    own statement both ways; a short run on the test PostgreSQL."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.commit_probe", "--dsn", PG_ADMIN_DSN, "--count", "3",
         "--gap", "0.01"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" p50 ") == 4, proc.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mmap threshold")
def test_the_recv_cost_probe_runs() -> None:
    """bench.recv_cost (the price of the pinned mmap threshold, adapters/heap.py) measures
    both modes; a short run."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.recv_cost", "--reads", "2000", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["dynamic", "pinned"], proc.stdout


def test_a_short_soak_counts_everything_and_loses_nothing(tmp_path: Path) -> None:
    """bench.soak (issue 16) on a private PostgreSQL: senders, idle devices with receipts,
    typing and reconnects, sampled; its own checks pass (exit 0) and every count moved."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "12", "--sockets", "40",
         "--devices", "4", "--senders", "3", "--sample", "3", "--churn", "2",
         "--typing-every", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    c, crowd = report["counts"], report["crowd"]
    assert c["sent"] == c["acked"] > 0 and c["lost"] == c["stored_twice"] == 0, c
    assert crowd["received"] > 0 and crowd["receipts"] > 0 and crowd["reconnects"] > 0, crowd
    assert crowd["typing"] > 0, crowd
    samples = report["samples"]
    assert len(samples) >= 3 and all(s["tasks"] > 0 and s["fds"] > 0 for s in samples)
