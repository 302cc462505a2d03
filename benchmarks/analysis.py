"""The analysis of a benchmark run: its plan, the medians and paired ratios of its runs, and
the verdict on each target. Pure functions over the raw figures: the harness runs the
processes and the report writes them down, both through this module.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import attrs

from benchmarks.outcomes import OVERLOAD_LAG_MS, behind_schedule

PLATFORM_TIMEOUT = 15.0
"""Graph's timeout for a decision, in the scenarios that do not set their own."""
SAFETY_MARGIN = 3.0
"""The bot's safety margin in those scenarios."""
ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"


@attrs.frozen
class Plan:
    """How long and how hard each scenario runs."""

    quick: bool
    warmup: float
    duration: float
    concurrencies: tuple[int, ...]
    key_concurrency: int
    rounds: int
    open_rates: tuple[int, ...]
    open_duration: float
    fresh_jwt: bool
    uvloop_pass: bool
    quiet_variant: bool
    capacity_steps: int
    capacity_seconds: float
    capacity_tail: float
    capacity_ceiling: float
    """Upper end of the search when no closed-loop throughput was measured."""
    overload_rate: float
    overload_seconds: float
    overload_factor: float
    overload_platform: float
    overload_margin: float
    overload_connections: int
    """Connections (so notifications awaiting their reply) the overload runs keep open."""
    block_seconds: float
    block_pre: float
    block_pre_rate: float
    block_calls: int
    block_after: float
    block_after_rate: float
    block_platform: float
    block_margin: float
    memory_calls: int
    profile_seconds: float

    @classmethod
    def full(cls) -> Plan:
        """The full run (about ten minutes)."""
        return cls(
            quick=False,
            warmup=1.0,
            duration=5.0,
            concurrencies=(1, 16, 64, 256),
            key_concurrency=64,
            rounds=5,
            open_rates=(200, 500, 1000, 2000),
            open_duration=5.0,
            fresh_jwt=True,
            uvloop_pass=True,
            quiet_variant=True,
            capacity_steps=6,
            capacity_seconds=3.0,
            capacity_tail=3.0,
            capacity_ceiling=6000.0,
            overload_rate=3000.0,
            overload_seconds=10.0,
            overload_factor=10.0,
            overload_platform=PLATFORM_TIMEOUT,
            overload_margin=SAFETY_MARGIN,
            overload_connections=8192,
            block_seconds=12.0,
            block_pre=4.0,
            block_pre_rate=100.0,
            block_calls=50,
            block_after=2.0,
            block_after_rate=25.0,
            block_platform=PLATFORM_TIMEOUT,
            block_margin=SAFETY_MARGIN,
            memory_calls=20_000,
            profile_seconds=8.0,
        )

    @classmethod
    def short(cls) -> Plan:
        """The quick run (about a minute): the same scenarios, smaller."""
        return cls(
            quick=True,
            warmup=0.3,
            duration=1.0,
            concurrencies=(1, 64),
            key_concurrency=64,
            rounds=1,
            open_rates=(200,),
            open_duration=1.0,
            fresh_jwt=False,
            uvloop_pass=False,
            quiet_variant=False,
            capacity_steps=2,
            capacity_seconds=1.0,
            capacity_tail=1.5,
            capacity_ceiling=4000.0,
            overload_rate=3000.0,
            overload_seconds=1.0,
            overload_factor=10.0,
            overload_platform=3.0,
            overload_margin=1.0,
            overload_connections=2048,
            block_seconds=1.5,
            block_pre=0.5,
            block_pre_rate=100.0,
            block_calls=10,
            block_after=0.5,
            block_after_rate=20.0,
            block_platform=2.0,
            block_margin=1.0,
            memory_calls=3_000,
            profile_seconds=0.0,
        )

    def block_schedule(self) -> tuple[list[list[float]], float]:
        """The blocked-loop run's schedule and the marked call's offset.

        ``block_pre`` seconds of calls, the marked call, ``block_calls`` calls spread over
        the block (starting a quarter second after the mark, or 0.5 s on long blocks, and
        ending as long before its end), a pause as long again, then ``block_after`` seconds
        of calls sent after the loop is free again.
        """
        gap = min(0.5, self.block_seconds / 6)
        spread = self.block_seconds - 2 * gap
        return (
            [
                [self.block_pre_rate, self.block_pre],
                [0.0, gap],
                [self.block_calls / spread, spread],
                [0.0, 3 * gap],
                [self.block_after_rate, self.block_after],
            ],
            self.block_pre,
        )


# --- processes -------------------------------------------------------------------------------


def median_of(runs: Sequence[dict[str, Any]], *path: str) -> float:
    """The median over runs of a nested figure (``"latency", "p50"``)."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values) if values else math.nan


def paired_ratio(
    runs: Sequence[dict[str, Any]], others: Sequence[dict[str, Any]], *path: str
) -> float:
    """Median over rounds of ``runs[i] / others[i]`` (rounds interleave the variants, so a
    round's two runs shared the machine's conditions)."""
    ratios = [
        _ratio(median_of((a,), *path), median_of((b,), *path))
        for a, b in zip(runs, others, strict=False)
    ]
    return statistics.median(ratios) if ratios else math.nan


def _ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is 0 (a run that measured nothing, on a starved machine)."""
    return a / b if b else math.nan


def key_runs(
    results: dict[str, Any], variant: str, c: int, loop: str = "asyncio"
) -> list[dict[str, Any]]:
    """The closed-loop runs of ``variant`` at concurrency ``c``."""
    return list(results.get("closed", {}).get(loop, {}).get(variant, {}).get(str(c), []))


def _generator_note(gen: dict[str, Any]) -> str:
    """A warning for an overload target's row when the load generator was behind schedule."""
    if not behind_schedule(gen, OVERLOAD_LAG_MS):
        return ""
    return (
        f"; **load not offered on schedule**: {gen['offered']:,.0f} of "
        f"{gen['requested']:,.0f}/s, {gen['not_sent']:,} not sent, send lag p99 "
        f"{gen['send_lag_ms']['p99']:,.0f} ms"
    )


def evaluate_targets(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Each target: what was measured and whether it was met (the goals of issue #11).

    An overload target is met only when the load generator also offered its schedule: a
    goal reached with less load than asked for is not reached.
    """
    c = plan.key_concurrency
    cf, fl, sdk = (key_runs(results, v, c) for v in ("callflow", "floor", "sdk"))
    cf1, fl1 = key_runs(results, "callflow", 1), key_runs(results, "floor", 1)
    targets: list[dict[str, Any]] = []

    def add(group: str, name: str, goal: str, value: float, ok: bool, shown: str) -> None:
        targets.append(
            {"group": group, "name": name, "goal": goal, "value": value, "ok": ok, "shown": shown}
        )

    if cf and fl:
        rtp = paired_ratio(cf, fl, "throughput")
        r50 = paired_ratio(cf, fl, "latency", "p50")
        r99 = paired_ratio(cf, fl, "latency", "p99")
        add(
            "speed", f"throughput callflow / floor, c={c}", ">= 0.9", rtp, rtp >= 0.9, f"{rtp:.2f}x"
        )
        add("speed", f"p50 callflow / floor, c={c}", "<= 1.15", r50, r50 <= 1.15, f"{r50:.2f}x")
        add("speed", f"p99 callflow / floor, c={c}", "<= 1.2", r99, r99 <= 1.2, f"{r99:.2f}x")
    if cf1 and fl1:
        r50 = paired_ratio(cf1, fl1, "latency", "p50")
        add("speed", "p50 callflow / floor, c=1", "<= 1.15", r50, r50 <= 1.15, f"{r50:.2f}x")
    cap = results.get("capacity", {})
    if "callflow" in cap and "floor" in cap:
        ratio = cap.get("ratio", math.nan)
        add(
            "speed",
            "open-loop capacity callflow / floor (202 p99 < 50 ms, 0 late)",
            ">= 0.9",
            ratio,
            ratio >= 0.9,
            f"{ratio:.2f}x ({cap['callflow']['capacity']:,.0f} vs "
            f"{cap['floor']['capacity']:,.0f} calls/s)",
        )
    if cf and sdk:
        rts = paired_ratio(cf, sdk, "throughput")
        p99c, p99s = median_of(cf, "latency", "p99"), median_of(sdk, "latency", "p99")
        add(
            "speed",
            f"throughput callflow / msgraph-sdk, c={c}",
            ">= 3",
            rts,
            rts >= 3,
            f"{rts:.2f}x",
        )
        add(
            "speed",
            f"p99 callflow < msgraph-sdk, c={c}",
            "lower",
            p99c / p99s,
            p99c < p99s,
            f"{p99c:.2f} vs {p99s:.2f} ms",
        )
    over = results.get("overload", {})
    fixed = over.get("fixed")
    if fixed:
        out, note = fixed["outcome"], _generator_note(fixed["generator"])
        rate = f"{fixed['requested']:,.0f}/s"
        offered = not behind_schedule(fixed["generator"], OVERLOAD_LAG_MS)
        add(
            "guarantee",
            f"overload {rate}: calls late from the sender, or accepted and never decided",
            "0",
            out["missed"],
            out["missed"] == 0 and offered,
            f"{out['missed']:,} of {out['calls']:,} ({out['late']:,} late, "
            f"{out['lost']:,} never decided){note}",
        )
        add(
            "guarantee",
            f"overload {rate}: calls decided twice",
            "0",
            out["twice"],
            out["twice"] == 0 and offered,
            f"{out['twice']:,}{note}",
        )
        p99 = out["ack_ms"]["p99"]
        add(
            "guarantee",
            f"overload {rate}: 202 p99",
            "< 250 ms",
            p99,
            p99 < 250 and offered,
            f"{p99:,.1f} ms ({out['refused']:,} refused with 503)",
        )
    tenfold = over.get("tenfold")
    if tenfold:
        out, note = tenfold["outcome"], _generator_note(tenfold["generator"])
        add(
            "guarantee",
            f"overload {plan.overload_factor:g}x capacity: calls neither decided in time nor "
            "refused with 503 within 100 ms",
            "0",
            out["neither"],
            out["neither"] == 0 and not behind_schedule(tenfold["generator"], OVERLOAD_LAG_MS),
            f"{out['neither']:,} of {out['calls']:,} ({out['accepted']:,} accepted, "
            f"{out['refused']:,} refused, {out['missed']:,} late or never decided; reply p99 "
            f"{out['reply_ms']['p99']:,.1f} ms){note}",
        )
    blocked = results.get("blocked", {})
    for how, label, ack_goal in (("sleep", "time.sleep", None), ("spin", "busy loop", 250.0)):
        run = blocked.get(how)
        if not run:
            continue
        d, b = run["during"], run["before"]
        ack = d["ack_ms"]
        if ack_goal is None:
            worst = max(ack["p50"], ack["p99"], ack["max"]) if d["accepted"] else math.inf
            add(
                "guarantee",
                f"blocked loop ({label}): 2xx to calls sent during the block, p50 / p99 / max",
                "each <= 100 ms",
                worst,
                d["accepted"] == d["calls"] > 0 and worst <= 100,
                f"{ack['p50']:,.1f} / {ack['p99']:,.1f} / {ack['max']:,.1f} ms "
                f"({d['accepted']} of {d['calls']} got a 2xx)",
            )
        else:
            p99 = ack["p99"] if d["accepted"] else math.inf
            add(
                "guarantee",
                f"blocked loop ({label}): 2xx p99 to calls sent during the block",
                f"< {ack_goal:g} ms",
                p99,
                d["accepted"] == d["calls"] > 0 and p99 < ack_goal,
                f"{p99:,.1f} ms ({d['accepted']} of {d['calls']} got a 2xx)",
            )
        add(
            "guarantee",
            f"blocked loop ({label}): calls sent during the block decided late or never",
            "0",
            d["missed"],
            d["calls"] > 0 and d["missed"] == 0,
            f"{d['missed']} of {d['calls']}",
        )
        add(
            "guarantee",
            f"blocked loop ({label}): calls sent during the block not decided exactly once",
            "0",
            d["calls"] - d["exactly_once"],
            d["calls"] > 0 and d["exactly_once"] == d["calls"],
            f"{d['calls'] - d['exactly_once']} of {d['calls']}",
        )
        add(
            "guarantee",
            f"blocked loop ({label}): calls accepted before the block decided late or never",
            "0",
            b["missed"],
            b["missed"] == 0,
            f"{b['missed']} of {b['calls']}",
        )
    memory = results.get("memory")
    if memory:
        b = memory["bytes_per_pending"]
        add(
            "memory",
            f"bytes of RSS per pending call ({memory['added']:,} pending, handlers hang)",
            "<= 4096",
            b,
            b <= 4096,
            f"{b:,.0f} B",
        )
    return targets


# --- entry point -----------------------------------------------------------------------------
