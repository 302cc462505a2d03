"""What happened to each call of a load-generator run: the figures every scenario reports.

All instants are ``time.monotonic()`` of the machine (one clock for every process), taken by
the load generator (``intended``, ``sent``, ``acked``) and the Graph stub (``decided``).

**Late** is the platform's view: a call is late when the stub received its decision more
than the platform timeout after the load generator *sent* the notification (``decided -
sent > platform_timeout``), or when it was accepted and never decided. ``sent`` is stamped
immediately before the request bytes went into an open connection's socket, so time the
notification then spent in socket buffers or the bot's queues counts, as it does for Graph.
A call refused with 503 and never decided is not late (the platform was told at once);
whether it was told *quickly* is reported apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any, Final

from benchmarks._common import percentile

__all__ = [
    "CAPACITY_LAG_MS",
    "OVERLOAD_LAG_MS",
    "QUICK_REFUSAL",
    "behind_schedule",
    "block_groups",
    "capacity_verdict",
    "cpu_delta",
    "deadline_outcome",
    "generator_figures",
    "lat_stats",
    "other_load",
    "summarize_closed",
    "summarize_open",
    "timeline",
]

QUICK_REFUSAL: Final = 0.100
"""A 503 counts as a quick refusal when its reply came within this many seconds of sending."""
CAPACITY_LAG_MS: Final = 10.0
"""A capacity step counts only if the generator's send and loop lag p99 stay within this
(its criterion is a 2xx p99 under 50 ms)."""
OVERLOAD_LAG_MS: Final = 100.0
"""An overload run counts as offered if every call was sent and the lag p99 stays within
this: far below the 15 s deadline and the 250 ms goal; a saturated generator lags seconds."""


def _isnan(value: float) -> bool:
    return value != value


def _ok(status: int) -> bool:
    return 200 <= status < 300


def lat_stats(values: Iterable[float]) -> dict[str, float]:
    """n, p50/p90/p99/p99.9, max and mean of some latencies (sorted here; nan when empty)."""
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "p99.9": percentile(ordered, 99.9),
        "max": ordered[-1] if ordered else math.nan,
        "mean": statistics.fmean(ordered) if ordered else math.nan,
    }


def cpu_delta(result: dict[str, Any], name: str) -> float:
    """CPU seconds process ``name`` used between the load generator's first and last sample."""
    samples = result["cpu"].get(name) or []
    return float(samples[-1] - samples[0]) if len(samples) >= 2 else math.nan


def other_load(result: dict[str, Any], span: float) -> float:
    """Cores used by processes other than the bot, the stub and the load generator.

    The machine is shared: anything else running shows up here, and a run with a high
    figure is a disturbed one.
    """
    ours = sum(cpu_delta(result, name) for name in ("bot", "stub", "loadgen"))
    return (cpu_delta(result, "machine") - ours) / max(span, 1e-9)


def deadline_outcome(
    result: dict[str, Any], platform_timeout: float, indexes: Iterable[int] | None = None
) -> dict[str, Any]:
    """How the calls ``indexes`` (default: all sent) fared against the platform's deadline.

    Counts: ``accepted`` (2xx reply), ``refused`` (503), ``other_status`` (anything else,
    0 = no reply); ``in_time``, ``late`` (decided after ``sent + platform_timeout``),
    ``never_decided`` and ``lost`` (never decided and not refused); ``missed`` = late + lost
    (what the platform sees as not decided in time); ``twice`` (more than one decision),
    ``exactly_once``; ``refused_slowly`` (503 later than :data:`QUICK_REFUSAL`);
    ``neither`` (neither decided in time nor refused quickly). Latencies: ``ack_ms`` (2xx
    replies), ``refusal_ms`` (503 replies), ``reply_ms`` (any reply), ``latency_s``
    (decisions).
    """
    sent, acked, status = result["sent"], result["acked"], result["status"]
    decided, decisions = result["decided"], result["decisions"]
    pool = range(len(sent)) if indexes is None else indexes
    calls = [i for i in pool if not _isnan(sent[i])]
    in_time = {i for i in calls if decisions[i] and decided[i] - sent[i] <= platform_timeout}
    late = [i for i in calls if decisions[i] and decided[i] - sent[i] > platform_timeout]
    never = [i for i in calls if not decisions[i]]
    lost = [i for i in never if status[i] != 503]
    refused = [i for i in calls if status[i] == 503]
    quick = {i for i in refused if not _isnan(acked[i]) and acked[i] - sent[i] <= QUICK_REFUSAL}
    latencies = [decided[i] - sent[i] for i in calls if decisions[i]]
    return {
        "calls": len(calls),
        "accepted": sum(1 for i in calls if _ok(status[i])),
        "refused": len(refused),
        "other_status": sum(1 for i in calls if not _ok(status[i]) and status[i] != 503),
        "no_reply": sum(1 for i in calls if status[i] == 0),
        "in_time": len(in_time),
        "late": len(late),
        "never_decided": len(never),
        "lost": len(lost),
        "missed": len(late) + len(lost),
        "twice": sum(1 for i in calls if decisions[i] > 1),
        "exactly_once": sum(1 for i in calls if decisions[i] == 1),
        "refused_slowly": len(refused) - len(quick),
        "neither": sum(1 for i in calls if i not in in_time and i not in quick),
        "decided_within_1s": sum(1 for x in latencies if x < 1.0),
        "ack_ms": lat_stats((acked[i] - sent[i]) * 1000 for i in calls if _ok(status[i])),
        "refusal_ms": lat_stats((acked[i] - sent[i]) * 1000 for i in refused),
        "reply_ms": lat_stats(
            (acked[i] - sent[i]) * 1000 for i in calls if status[i] and not _isnan(acked[i])
        ),
        "latency_s": lat_stats(latencies),
    }


def behind_schedule(gen: dict[str, Any], lag_limit_ms: float) -> bool:
    """Whether the load generator fell short of its schedule in a run (its figures).

    Short: some calls were not sent, a connection could not be opened, or the send lag
    (sent - intended) or the generator's own loop lag has a p99 over ``lag_limit_ms``.
    Calls wait for a connection when every open one carries a request (the webhook holds
    them) and a new one is being opened; the loop runs late when the generator lacks CPU.
    Either way less load arrived, or later, than asked, and the run says less than it seems.
    """
    return bool(
        gen.get("not_sent", 0)
        or gen.get("connect_errors", 0)
        or gen.get("send_lag_ms", {}).get("p99", 0.0) > lag_limit_ms
        or gen.get("loop_lag_ms", {}).get("p99", 0.0) > lag_limit_ms
    )


def generator_figures(result: dict[str, Any]) -> dict[str, Any]:
    """What the load generator actually offered in an open-loop run, and how late it sent."""
    gen = dict(result.get("generator") or {})
    seconds = max(float(gen.get("seconds", 0.0)), 1e-9)
    gen["offered"] = gen.get("sent", 0) / seconds
    gen["requested"] = gen.get("scheduled", 0) / seconds
    return gen


def summarize_closed(result: dict[str, Any]) -> dict[str, Any]:
    """Latency, throughput and CPU of a closed-loop run (calls sent inside the window)."""
    ws, we = result["window"]
    sent, acked, decided, status = (
        result["sent"],
        result["acked"],
        result["decided"],
        result["status"],
    )
    inside = [i for i, s in enumerate(sent) if ws <= s < we]
    latencies = [(decided[i] - sent[i]) * 1000 for i in inside if not _isnan(decided[i])]
    acks = [(acked[i] - sent[i]) * 1000 for i in inside if not _isnan(acked[i])]
    decided_in_window = sum(1 for d in decided if not _isnan(d) and ws <= d < we)
    span = max(we - ws, 1e-9)
    n_decided = len(latencies)
    per_call = 1000.0 / n_decided if n_decided else math.nan
    return {
        "calls": len(inside),
        "decided": n_decided,
        "undecided": len(inside) - n_decided,
        "non_202": sum(1 for i in inside if status[i] != 202),
        "duplicates": result["duplicates"],
        "throughput": decided_in_window / span,
        "latency": lat_stats(latencies),
        "ack": lat_stats(acks),
        "cpu_per_1000": {
            name: cpu_delta(result, name) * per_call for name in ("bot", "stub", "loadgen")
        },
        "bot_cpu_share": cpu_delta(result, "bot") / span,
        "other_cores": other_load(result, span),
        "window": span,
        "latencies": latencies,
    }


def summarize_open(result: dict[str, Any], rate: float, platform_timeout: float) -> dict[str, Any]:
    """Offered and decided rates, latency, deadline outcome and the generator's own figures."""
    start, end = result["window"]
    sent, decided = result["sent"], result["decided"]
    span = max(end - start, 1e-9)
    latencies = [(d - s) * 1000 for s, d in zip(sent, decided, strict=True) if not _isnan(d)]
    outcome = deadline_outcome(result, platform_timeout)
    gen = generator_figures(result)
    return {
        "rate": rate,
        "calls": outcome["calls"],
        "offered": gen["offered"],
        "decided_rate": sum(1 for d in decided if not _isnan(d) and start <= d < end) / span,
        "undecided": outcome["never_decided"],
        "late_sends": gen.get("sent_late_10ms", 0),
        "latency": lat_stats(latencies),
        "ack": outcome["ack_ms"],
        "outcome": outcome,
        "generator": gen,
        "cpu_per_1000": {
            name: cpu_delta(result, name) * 1000.0 / max(len(latencies), 1)
            for name in ("bot", "stub", "loadgen")
        },
        "duplicates": result["duplicates"],
        "other_cores": other_load(result, span),
    }


def capacity_verdict(summary: dict[str, Any], ack_p99_ms: float = 50.0) -> tuple[bool, str]:
    """Whether an open-loop step counts as handled: (passed, what failed, "; "-separated).

    Handled: the generator kept its schedule (:func:`behind_schedule` within 10 ms), every
    call got a 2xx reply, the 2xx p99 is under ``ack_p99_ms``, and no call was late or left
    undecided by the end of the step's tail.
    """
    out, gen = summary["outcome"], summary["generator"]
    failed = []
    if out["accepted"] < out["calls"]:
        failed.append(f"{out['calls'] - out['accepted']} calls without a 2xx reply")
    if not out["ack_ms"]["p99"] < ack_p99_ms:
        failed.append(f"2xx p99 {out['ack_ms']['p99']:.1f} ms")
    if out["missed"]:
        failed.append(f"{out['missed']} calls late or undecided")
    if behind_schedule(gen, CAPACITY_LAG_MS):
        failed.append("calls not sent on schedule")
    return not failed, "; ".join(failed)


def timeline(
    result: dict[str, Any], platform_timeout: float, step: float = 3.0
) -> list[dict[str, Any]]:
    """Per ``step`` seconds of a run: notifications sent, 2xx replies, 503s, decisions at the
    stub (per second), and how many of the calls sent then were late or lost."""
    start = result["window"][0]
    rows: dict[int, dict[str, float]] = {}

    def row(at: float) -> dict[str, float]:
        return rows.setdefault(
            int((at - start) // step),
            {"sent": 0, "acked": 0, "refused": 0, "decided": 0, "missed": 0},
        )

    for s, a, d, n, status in zip(
        result["sent"],
        result["acked"],
        result["decided"],
        result["decisions"],
        result["status"],
        strict=True,
    ):
        if _isnan(s):
            continue
        r = row(s)
        r["sent"] += 1
        if (n and d - s > platform_timeout) or (not n and status != 503):
            r["missed"] += 1
        if not _isnan(a) and _ok(status):
            row(a)["acked"] += 1
        if not _isnan(a) and status == 503:
            row(a)["refused"] += 1
        if n:
            row(d)["decided"] += 1
    return [
        {"t": k * step, **{name: v if name == "missed" else v / step for name, v in r.items()}}
        for k, r in sorted(rows.items())
    ]


def block_groups(
    result: dict[str, Any], block_start: float, block_end: float, platform_timeout: float
) -> dict[str, Any]:
    """The calls of a blocked-loop run by when they were sent: before, during, after the block.

    Each group gets its :func:`deadline_outcome`, plus how many of its calls were decided
    while the loop was held.
    """
    sent, decided, decisions = result["sent"], result["decided"], result["decisions"]
    calls = [i for i, s in enumerate(sent) if not _isnan(s)]
    groups = {
        "before": [i for i in calls if sent[i] < block_start],
        "during": [i for i in calls if block_start <= sent[i] < block_end],
        "after": [i for i in calls if sent[i] >= block_end],
    }
    out: dict[str, Any] = {}
    for name, indexes in groups.items():
        summary = deadline_outcome(result, platform_timeout, indexes)
        summary["decided_while_blocked"] = sum(
            1 for i in indexes if decisions[i] and block_start < decided[i] < block_end
        )
        out[name] = summary
    return out
