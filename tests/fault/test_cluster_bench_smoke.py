"""The cluster bench cannot rot: its CI-sized run (`python -m bench.cluster --quick`, two
nodes on a private PostgreSQL and Redis) must carry traffic across nodes and lose or
duplicate nothing when a node is killed. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_cluster_bench_crosses_nodes_and_survives_a_kill(redis_binaries: None,
                                                                tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--quick", "--no-plot", "--out", str(tmp_path),
         "--scenario", "latency_1to1", "--scenario", "group_fanout",
         "--scenario", "node_kill"],
        cwd=ROOT, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["nodes"] == 2
    scenarios = report["backends"]["cluster"]["scenarios"]
    assert sorted(scenarios) == ["group_fanout", "latency_1to1", "node_kill"]
    for name, result in scenarios.items():
        assert result["ok"], (name, result.get("error"))
    # every pair has its two users on different nodes: each message crossed once
    latency = scenarios["latency_1to1"]
    received = latency["rows"][0]["counts"]["received"]
    assert received > 0
    assert latency["cluster_load"]["peer_events_sent"] >= received
    fanout = scenarios["group_fanout"]["rows"][0]
    assert fanout["cross_node_member_latency_ms"]["count"] > 0
    kill = scenarios["node_kill"]
    counts = kill["rows"][0]["counts"]
    assert kill["lost"] == 0 and kill["duplicated"] == 0, counts
    assert counts["received"] == counts["expected_deliveries"] > 0, counts
    assert counts["acked"] == counts["sent"] > 0
    assert counts["receivers_on_killed_node"] > 0
    assert kill["store_problems"] == []
