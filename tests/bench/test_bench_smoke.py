"""The benchmark harness's quick mode, the soak benchmark and ``callflow bench`` produce
sane figures."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from benchmarks.bench_soak import NOTIFICATIONS_PER_CALL
from callflow import Bot, IncomingCall, Reject, RejectReason
from callflow.bench import BenchReport, bench_bot, percentile
from callflow.cli import main
from callflow.errors import CallflowError
from callflow.testing import FakeGraph
from tests.helpers import run_module

pytestmark = pytest.mark.slow  # benchmark runs in processes of their own


def _busy_bot() -> Bot:
    bot = Bot()

    @bot.incoming_call
    async def busy(call: IncomingCall) -> Reject:
        return Reject(RejectReason.BUSY)

    return bot


CLI_BOT = _busy_bot()
"""Served once, by the CLI test (``tests.bench.test_bench_smoke:CLI_BOT``)."""


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _consistent(outcome: dict[str, Any]) -> None:
    """The counts of a deadline outcome add up."""
    calls = outcome["calls"]
    assert outcome["accepted"] + outcome["refused"] + outcome["other_status"] == calls
    assert outcome["in_time"] + outcome["late"] + outcome["never_decided"] == calls
    assert outcome["missed"] == outcome["late"] + outcome["lost"]
    assert outcome["exactly_once"] + outcome["twice"] <= calls
    assert 0 <= outcome["neither"] <= calls


def test_quick_harness_writes_a_report_with_sane_figures(tmp_path: Path) -> None:
    """``python -m benchmarks.harness --quick`` runs every scenario small and reports figures."""
    done, took = run_module("benchmarks.harness", "--quick", "--out", str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert took < 150, f"the quick mode took {took:.0f} s; expected about a minute"
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in report
    assert "callflow / floor" in report
    results = json.loads((tmp_path / "results.json").read_text())

    closed = results["closed"]["asyncio"]
    for variant in ("callflow", "floor"):
        for c in ("1", "64"):
            (run,) = closed[variant][c]
            lat = run["latency"]
            assert run["decided"] > 0
            assert run["undecided"] == 0
            assert run["duplicates"] == 0
            assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5_000
            assert run["throughput"] > 10
            assert _finite(run["cpu_per_1000"]["bot"])
            assert run["cpu_per_1000"]["bot"] > 0
    for variant, table in results["cold_start"]["asyncio"].items():
        assert 0 < table["ready_s"] < 30, variant
        assert 0 < table["first_call_ms"] < 5_000, variant

    capacity = results["capacity"]
    for variant in ("callflow", "floor"):
        steps = capacity[variant]["steps"]
        assert len(steps) == 2
        assert all(step["rate"] > 0 and step["offered"] > 0 for step in steps)
        assert capacity[variant]["capacity"] in {0.0} | {s["rate"] for s in steps if s["passed"]}

    over = results["overload"]
    fixed, tenfold = over["fixed"], over["tenfold"]
    assert fixed["requested"] == 3000
    assert fixed["generator"]["offered"] > 100
    assert tenfold["requested"] == pytest.approx(10 * tenfold["capacity"])
    for run in (fixed, tenfold):
        _consistent(run["outcome"])
        assert run["outcome"]["calls"] == run["generator"]["sent"] > 100
        assert run["timeline"]

    blocked = results["blocked"]
    for how in ("sleep", "spin"):
        run = blocked[how]
        assert run["handler_ran"]
        assert 1.0 < run["held_for"] < 5.0
        assert run["before"]["calls"] > 0
        assert run["during"]["calls"] > 0
        sent = run["before"]["calls"] + run["during"]["calls"] + run["after"]["calls"]
        assert sent == run["generator"]["sent"]
        for group in ("before", "during", "after"):
            _consistent(run[group])

    memory = results["memory"]
    assert memory["added"] >= memory["calls"]  # every call held, none defaulted
    assert 100 < memory["bytes_per_pending"] < 1_000_000
    names = " / ".join(t["name"] for t in results["targets"])
    for part in (
        "throughput callflow / floor, c=64",
        "p50 callflow / floor, c=1",
        "open-loop capacity callflow / floor",
        "overload 3,000/s: calls late from the sender",
        "overload 10x capacity",
        "blocked loop (time.sleep)",
        "blocked loop (busy loop)",
        "bytes of RSS per pending call",
    ):
        assert part in names
    if (tmp_path / "cdf.png").exists():
        assert (tmp_path / "cdf.png").stat().st_size > 10_000


@pytest.mark.anyio
async def test_bench_bot_measures_every_call() -> None:
    """bench_bot places the calls against its own FakeGraph and reports each decision."""
    report = await bench_bot(_busy_bot(), target="busy", calls=20, concurrency=4, warmup=2)
    assert report.decisions == (("reject", 20),)
    assert report.undecided == 0
    assert len(report.latencies_ms) == 20
    assert list(report.latencies_ms) == sorted(report.latencies_ms)
    assert 0 < report.p50 <= report.p90 <= report.p99 <= report.max < 5_000
    text = report.render()
    assert "callflow bench busy: 20 p2p calls, 4 at a time" in text
    assert "p50" in text
    assert "reject 20" in text
    assert report.decided_by == (("busy", "reject", 20),)  # the warm-up calls left out
    assert "decided by: busy (reject) 20" in text


@pytest.mark.anyio
async def test_bench_says_when_no_handler_decided() -> None:
    """A bot whose handlers decline every call is measured deciding by the default decision,
    and the report says so rather than naming a handler."""
    bot = Bot()

    @bot.incoming_call
    async def undecided(call: IncomingCall) -> None:
        return None

    report = await bench_bot(bot, calls=3, concurrency=1, warmup=1)
    assert report.decided_by == (("default", "reject", 3),)
    assert "decided by: the default decision (reject) 3" in report.render()


@pytest.mark.anyio
async def test_bench_bot_counts_calls_graph_never_accepted() -> None:
    """A decision Graph refuses leaves the call undecided, and the report says so."""
    async with FakeGraph(platform_timeout=2.0, recording_timeout=2.0) as fake:
        fake.fail_next("decision", 403, count=10)
        report = await bench_bot(_busy_bot(), calls=1, concurrency=1, warmup=0, fake=fake)
    assert report.undecided == 1
    assert report.latencies_ms == ()
    assert math.isnan(report.max)
    assert "decisions: none; undecided: 1" in report.render()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calls": 0}, "calls=0: expected at least 1"),
        ({"concurrency": 0}, "concurrency=0: expected at least 1"),
        ({"warmup": -1}, "warmup=-1: expected 0 or more"),
        ({"kind": "fax"}, "kind='fax': expected one of p2p"),
    ],
)
async def test_bench_bot_rejects_bad_arguments(options: dict[str, Any], message: str) -> None:
    """Out-of-range arguments raise CallflowError naming the argument and what was expected."""
    with pytest.raises(CallflowError, match=message):
        await bench_bot(_busy_bot(), **options)


def test_percentile_interpolates_and_handles_empty() -> None:
    """percentile interpolates between ranks and is nan for no values."""
    assert percentile((1.0, 2.0, 3.0, 4.0), 50) == 2.5
    assert percentile((5.0,), 99) == 5.0
    assert math.isnan(percentile((), 50))


def test_render_of_an_empty_run_has_no_rate() -> None:
    """A report of a run that took no time prints without dividing by zero."""
    report = BenchReport("t", "p2p", 1, 1, (), (), 1, 0.0)
    assert "nan decisions/s" in report.render()


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Put structlog's process-wide configuration back as it was after the test."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


@pytest.mark.usefixtures("restore_structlog")
def test_cli_bench_prints_the_latency(capsys: pytest.CaptureFixture[str]) -> None:
    """``callflow bench module:attr`` serves the bot, measures it and prints p50/p99/max."""
    code = main(
        ["bench", "tests.bench.test_bench_smoke:CLI_BOT", "--calls", "10", "--concurrency", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "callflow bench tests.bench.test_bench_smoke:CLI_BOT: 10 p2p calls, 2 at a time" in out
    assert "p99" in out
    assert "max" in out
    assert "decided by: busy (reject) 10" in out


def test_soak_benchmark_reports_every_tenth(tmp_path: Path) -> None:
    """``python -m benchmarks.bench_soak --calls 300`` puts 300 calls with operations through
    one worker and reports each tenth: I/O-loop time per notification, RSS, the calls, and
    per-call state freed once every call ended (the verdict needs a long run: not judged)."""
    out = tmp_path / "soak.json"
    # 20 calls in flight: the worker stays busy without its loop falling behind enough to
    # shed calls on a loaded machine (shed or failed calls would not run their flow).
    args = ("--calls", "300", "--concurrency", "20", "--json", str(out))
    done, took = run_module("benchmarks.bench_soak", *args, timeout=120)
    assert done.returncode in (0, 3), done.stdout[-3000:] + done.stderr[-3000:]  # 3: not flat
    report = json.loads(out.read_text())
    summary = {name: report[name] for name in ("seconds", "failed", "defaulted", "refused")}
    assert took < 45, f"300 calls took {took:.0f} s; expected a few seconds ({summary})"
    assert (report["calls"], report["tenth"]) == (300, 30)
    outcome = [report[name] for name in ("completed", "failed", "defaulted")]
    assert outcome == [300, 0, 0], summary  # refused notifications were sent again
    rows = report["rows"]
    assert [row["tenth"] for row in rows] == list(range(1, 11))
    assert [row["calls"] for row in rows] == [30 * k for k in range(1, 11)]
    # The last calls' "terminated" may come after the last row.
    per_call = NOTIFICATIONS_PER_CALL
    assert (per_call - 1) * 300 <= sum(row["notifications"] for row in rows) <= per_call * 300
    for row in rows:
        assert _finite(row["io_us_per_notification"]), row
        assert 0 < row["io_us_per_notification"] < 100_000, row
        assert _finite(row["reference_us"]) and row["reference_us"] > 0, row
        assert _finite(row["io_per_reference"]) and row["io_per_reference"] > 0, row
        assert 0 < row["app_us_per_notification"] < 100_000, row
        assert 10 < row["rss_mb"] < 2_000, row
        assert 0 < row["call_p50_ms"] <= row["call_p99_ms"] < 30_000, row
        assert all(isinstance(n, int) and n >= 0 for n in row["records"].values()), row
    last = rows[-1]["records"]
    assert (last["registry"], last["book_live"], last["keeper_held"]) == (0, 0, 0)
    assert last["book_ended"] == 300
    verdict = report["verdict"]
    assert isinstance(verdict["flat"], bool)
    assert all(_finite(change) for change in verdict["changes"].values())
    assert "| tenth | calls |" in done.stdout
    assert "Verdict: **" in done.stdout
