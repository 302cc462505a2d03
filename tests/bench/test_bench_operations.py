"""The per-operation benchmark's quick mode runs both sides and reports sane figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import run_module

pytestmark = pytest.mark.slow  # a benchmark run in processes of its own


def test_quick_operation_benchmark_reports_both_sides(tmp_path: Path) -> None:
    """``python -m benchmarks.bench_operations --quick`` finishes in seconds with figures for
    callflow (flow and I/O loop) and the aiohttp baseline, and their ratios."""
    out = tmp_path / "operations.json"
    done, took = run_module(
        "benchmarks.bench_operations", "--quick", "--json", str(out), timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert took < 60, f"the quick mode took {took:.0f} s; expected a few seconds"
    report = json.loads(out.read_text())
    assert report["rounds"] * report["ops_per_round"] > 0
    assert set(report["results"]) == {"callflow", "callflow_io", "baseline"}
    for side, row in report["results"].items():
        assert row["ops"] == report["rounds"] * report["ops_per_round"], side
        assert 0 < row["p50_us"] <= row["p99_us"] < 1_000_000, side  # under a second each
        assert 0 < row["cpu_per_op_us"] < 100_000, side
    assert set(report["ratios"]) == {"callflow", "callflow_io"}
    for side, ratios in report["ratios"].items():
        for name, ratio in ratios.items():
            assert math.isfinite(ratio), (side, name)
            assert 0.05 < ratio < 50, (side, name, ratio)
    assert "| baseline (hand-written aiohttp) |" in done.stdout
