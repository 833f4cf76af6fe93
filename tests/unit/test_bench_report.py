"""The bench plot (bench/report.py) is readable: 1600 px wide, every axis labelled, every
legend outside the curves; without matplotlib the bench says how to get it."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.stats import stage_breakdown, stage_histograms
from chatsrv.metrics import SEND_STAGES, Metrics

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"


def _results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())  # type: ignore[no-any-return]


def test_the_plot_is_1600_px_wide(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    assert report.plot(_results(), out)
    width, height = struct.unpack(">II", out.read_bytes()[16:24])  # the PNG's IHDR
    assert width == report.PLOT_WIDTH_PX and 600 < height < 1600


def test_every_axis_is_labelled_and_no_legend_covers_a_curve() -> None:
    pytest.importorskip("matplotlib")
    fig = report.figure(_results())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6  # two backends, three panels each
    legends = 0
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box, plot_area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not box.overlaps(plot_area), (ax.get_title(), box, plot_area)
        assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0  # and inside the image
        for other in axes:  # nor another panel
            assert other is ax or not box.overlaps(other.get_window_extent(renderer))
    assert legends == 6
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_without_matplotlib_the_bench_says_how_to_get_the_plot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not report.can_plot()
    assert report.main([str(RESULTS), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "pip install -e '.[bench]'" in err and "just bench" in err
    assert not (tmp_path / "x.png").exists()


def test_the_stage_breakdown_is_the_difference_between_two_scrapes() -> None:
    m = Metrics()
    m.send_stages.observe((0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5)[:len(SEND_STAGES) + 1])  # before
    before = stage_histograms(m.render()[0].decode())
    for i in range(10):  # accept 0.1 ms, queue 0, commit 1-1.9 ms, fanout 0.2, ack 0.05
        t = [0.0, 0.0001, 0.0001, 0.0011 + i * 0.0001]
        m.send_stages.observe((*t, t[-1] + 0.0002, t[-1] + 0.00025))
    rows = {r["stage"]: r for r in stage_breakdown(before, stage_histograms(
        m.render()[0].decode()))}
    assert list(rows) == list(SEND_STAGES)
    assert all(r["count"] == 10 for r in rows.values())
    assert rows["accept"]["mean_ms"] == pytest.approx(0.1)
    assert rows["queue"]["mean_ms"] == 0
    assert rows["commit"]["mean_ms"] == pytest.approx(1.45)
    assert 1.0 <= rows["commit"]["p50_ms"] <= 1.5 <= rows["commit"]["p90_ms"] <= 2.0
    assert rows["ack"]["p90_ms"] <= 0.05
