"""Turns the harness's results into ``RESULTS.md`` and the latency CDF ``cdf.png``.

A block of the existing ``RESULTS.md`` between ``<!-- analysis:start -->`` and
``<!-- analysis:end -->`` (the written reading of the figures) is kept when the file is
regenerated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.analysis import (
    ANALYSIS_END,
    ANALYSIS_START,
    Plan,
    evaluate_targets,
    key_runs,
    median_of,
    paired_ratio,
)
from benchmarks.outcomes import QUICK_REFUSAL

LABELS = {
    "callflow": "callflow (JWT on)",
    "floor": "floor (bare aiohttp)",
    "sdk": "msgraph-sdk",
    "callflow_quiet": "callflow, LOG_LEVEL=warning",
}
COLOURS = {"callflow": "#1f77b4", "floor": "#2ca02c", "sdk": "#d62728"}


def _f(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def draw_cdf(results: dict[str, Any], plan: Plan, path: Path) -> bool:
    """Draw the decision-latency CDFs (c=1 and the key concurrency); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        c
        for c in (1, plan.key_concurrency)
        if c in plan.concurrencies and any(key_runs(results, v, c) for v in COLOURS)
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, c in zip(axes[0], panels, strict=True):
        for variant in ("floor", "callflow", "sdk"):
            runs = key_runs(results, variant, c)
            values = sorted(x for run in runs for x in run.get("latencies", ()))
            if not values:
                continue
            n = len(values)
            ys = [(i + 1) / n * 100 for i in range(n)]
            p50 = values[n // 2]
            p99 = values[min(n - 1, int(n * 0.99))]
            ax.plot(
                values,
                ys,
                color=COLOURS[variant],
                linewidth=1.8,
                label=f"{LABELS[variant]}: p50 {p50:.2f}, p99 {p99:.2f} ms",
            )
        ax.set_xscale("log")
        ax.set_xlabel("decision latency, ms (notification sent -> decision at Graph; log scale)")
        ax.set_ylabel("calls decided, % (cumulative)")
        ax.set_ylim(0, 100.5)
        ax.axhline(50, color="#999999", linewidth=0.7, linestyle=":")
        ax.axhline(99, color="#999999", linewidth=0.7, linestyle=":")
        ax.grid(True, which="both", linewidth=0.3, alpha=0.6)
        closed = "one call at a time" if c == 1 else f"{c} calls in flight"
        rounds = max(len(key_runs(results, v, c)) for v in ("floor", "callflow", "sdk"))
        if rounds > 1:
            closed += f" ({rounds} rounds pooled)"
        ax.set_title(f"Closed loop, {closed}")
        if ax.get_lines():
            ax.legend(loc="lower right", fontsize=8.5)
    meta = results["meta"]
    fig.suptitle(
        f"Decision latency CDF — {meta['nproc']} cores, Python {meta['python']}, asyncio loop, "
        f"{meta['date'][:10]}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _lat_row(name: str, s: dict[str, Any]) -> str:
    lat = s["latency"]
    return (
        f"| {name} | {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p99'])} | "
        f"{_f(lat['p99.9'])} | {_f(lat['max'])} |"
    )


def _median_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median over runs of every figure the tables show."""
    keys = ("p50", "p90", "p99", "p99.9", "max")
    return {
        "latency": {k: median_of(runs, "latency", k) for k in keys},
        "ack": {k: median_of(runs, "ack", k) for k in keys},
        "throughput": median_of(runs, "throughput"),
        "cpu": median_of(runs, "cpu_per_1000", "bot"),
        "cpu_stub": median_of(runs, "cpu_per_1000", "stub"),
        "cpu_loadgen": median_of(runs, "cpu_per_1000", "loadgen"),
        "share": median_of(runs, "bot_cpu_share"),
        "calls": sum(r["calls"] for r in runs),
        "undecided": sum(r["undecided"] for r in runs),
        "duplicates": max(r["duplicates"] for r in runs),
        "rounds": len(runs),
        "other": (
            median_of(runs, "other_cores") if all("other_cores" in r for r in runs) else math.nan
        ),
    }


def render(results: dict[str, Any], plan: Plan, previous: str, png: str | None) -> str:
    """The whole RESULTS.md text."""
    meta = results["meta"]
    variants = [v for v in ("callflow", "callflow_quiet", "floor", "sdk") if v in meta["variants"]]
    c = plan.key_concurrency
    out: list[str] = []
    w = out.append
    w("# Benchmark results" + (" (quick run: noisy, for smoke tests only)" if plan.quick else ""))
    w("")
    w(
        "Three processes on 127.0.0.1 sharing the machine: the load generator, the bot under "
        "test and a Graph stub. Latency is *notification sent → decision POST received by "
        "the stub*, both stamped with `time.monotonic()` (one system-wide clock) and matched by "
        "call id. All variants run in the same session against the same stub and load "
        "generator; figures drift ±15 % between sessions on shared machines, so read the "
        "**ratios**."
    )
    w("")
    w(
        "**Late** is measured as the platform sees it: a call is late when the stub received "
        "its decision more than the platform timeout after the load generator *sent* the "
        "notification, or when it was accepted and never decided. *Sent* is stamped just before "
        "the request bytes go into an already open keep-alive connection, so time a "
        "notification then waits in socket buffers or in the bot counts. A call refused with "
        "503 and never decided is not late; its reply time is reported (a quick refusal: "
        f"within {QUICK_REFUSAL * 1000:.0f} ms). *Decided twice*: the stub received more than one "
        "decision POST for the call. The load generator speaks HTTP/1.1 itself on "
        f"{meta['support_loop']}, one request per connection at a time; in open-loop runs it "
        "sends on a schedule whatever the replies, and reports what it actually offered, how "
        "late it sent against its schedule and how late its own loop ran, so that a "
        "generator short of connections or CPU shows."
    )
    w("")
    w(
        "- **callflow**: `benchmarks/callflow_bot.py` runs the `callflow run` command in its own "
        "process (settings from `CALLFLOW_*`, JSON logs at info with one `call.decided` line "
        "per call, the worker's collector tuning, inbound RS256 JWT validation on with keys "
        "from the stub's key server, the app token from msal against the stub's token "
        "endpoint); only the loop is chosen (uvloop hidden for the asyncio runs)."
    )
    w(
        '- **floor**: `benchmarks/floor_bot.py`: `json.loads`, 202, POST `{"reason":"busy"}` '
        "from a spawned task through one shared `ClientSession`; no JWT, no routing."
    )
    w(
        "- **msgraph-sdk**: `benchmarks/sdk_bot.py`: the same webhook, deciding through "
        "`graph_client.communications.calls.by_call_id(id).reject.post(...)` (SDK defaults: "
        "httpx client and middleware; a static-token auth provider; `base_url` at the stub)."
    )
    w("")
    w("## Machine and command")
    w("")
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    dirty = " plus uncommitted changes in the working tree" if meta.get("dirty") else ""
    w(f"- date: {meta['date']}; commit {meta['commit'] or '?'}{dirty}")
    w(
        f"- {meta['nproc']} cores ({meta['cpu'] or 'unknown CPU'}), Linux {meta['kernel']}, "
        f"Python {meta['python']}"
    )
    w(f"- packages: {vers}")
    w(
        f"- bots on the asyncio loop unless stated; load generator and stub on "
        f"{meta['support_loop']}"
    )
    w(
        f"- command: `{meta['command']}` (`make bench{'-quick' if plan.quick else ''}`), "
        f"{meta.get('seconds', 0):.0f} s; raw figures in `results.json` beside the report "
        "(`benchmarks/out/` for the full run)"
    )
    w(
        f"- closed-loop runs: {plan.warmup:g} s warm-up + {plan.duration:g} s measured; "
        f"concurrency {c}: median of {plan.rounds} interleaved rounds"
    )
    w("")

    targets = results.get("targets", [])
    if targets:
        w("## Targets")
        w("")
        w("| target | goal | measured | met |")
        w("|---|---|---|---|")
        for t in targets:
            w(f"| {t['name']} | {t['goal']} | {t['shown']} | {'yes' if t['ok'] else '**no**'} |")
        w("")

    closed = results.get("closed", {}).get("asyncio", {})
    if closed:
        w(
            "## Decision latency and throughput (closed loop: each of *c* workers waits for its "
            "call's decision before placing the next)"
        )
        w("")
        for conc in plan.concurrencies:
            rows = {v: key_runs(results, v, conc) for v in variants}
            if not any(rows.values()):
                continue
            rounds = max(len(r) for r in rows.values())
            w(f"### c = {conc}" + (f" (median of {rounds} rounds)" if rounds > 1 else ""))
            w("")
            w(
                "| variant | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | decisions/s | "
                "bot CPU s / 1000 calls | 202 p99 ms | calls | undecided | other load, cores |"
            )
            w("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for v in variants:
                if not rows[v]:
                    continue
                m = _median_summary(rows[v])
                lat = m["latency"]
                w(
                    f"| {LABELS[v]} | {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p99'])} | "
                    f"{_f(lat['p99.9'])} | {_f(lat['max'])} | {_f(m['throughput'], 0)} | "
                    f"{_f(m['cpu'], 3)} | {_f(m['ack']['p99'])} | {m['calls']} | "
                    f"{m['undecided']} | {_f(m['other'])} |"
                )
            if rows.get("floor") and rows.get("callflow"):
                cf_r, fl_r = rows["callflow"], rows["floor"]
                text = (
                    f"callflow / floor (median of per-round ratios): p50 "
                    f"{paired_ratio(cf_r, fl_r, 'latency', 'p50'):.2f}x, p99 "
                    f"{paired_ratio(cf_r, fl_r, 'latency', 'p99'):.2f}x, throughput "
                    f"{paired_ratio(cf_r, fl_r, 'throughput'):.2f}x, CPU per call "
                    f"{paired_ratio(cf_r, fl_r, 'cpu_per_1000', 'bot'):.2f}x"
                )
                if rows.get("sdk"):
                    sd_r = rows["sdk"]
                    text += (
                        f"; callflow / msgraph-sdk: p50 "
                        f"{paired_ratio(cf_r, sd_r, 'latency', 'p50'):.2f}x, p99 "
                        f"{paired_ratio(cf_r, sd_r, 'latency', 'p99'):.2f}x, throughput "
                        f"{paired_ratio(cf_r, sd_r, 'throughput'):.2f}x, CPU per call "
                        f"{paired_ratio(cf_r, sd_r, 'cpu_per_1000', 'bot'):.2f}x"
                    )
                w("")
                w(text + ".")
            gcs = [r["gc"] for r in rows.get("callflow", ()) if r.get("gc")]
            if gcs:
                w("")
                w(_gc_text("callflow bot's cyclic garbage collector during these runs", gcs))
            w("")
        w(
            "CPU per 1000 calls of the other processes at c = "
            f"{c} (stub / load generator): "
            + "; ".join(
                f"{LABELS[v]} {_f(_median_summary(key_runs(results, v, c))['cpu_stub'], 3)} / "
                f"{_f(_median_summary(key_runs(results, v, c))['cpu_loadgen'], 3)} s"
                for v in variants
                if key_runs(results, v, c)
            )
            + "."
        )
        w("")
        tp = {
            v: {k: _median_summary(r)["throughput"] for k, r in closed.get(v, {}).items()}
            for v in variants
        }
        w("### Throughput by concurrency (decisions/s)")
        w("")
        w("| variant | " + " | ".join(f"c={k}" for k in plan.concurrencies) + " |")
        w("|---|" + "---|" * len(plan.concurrencies))
        for v in variants:
            w(
                f"| {LABELS[v]} | "
                + " | ".join(_f(tp[v].get(str(k), math.nan), 0) for k in plan.concurrencies)
                + " |"
            )
        w("")
        if png:
            w(f"![decision latency CDF]({png})")
            w("")

    opened = results.get("open", {})
    if opened:
        w("## Open loop (calls sent on a fixed schedule, whatever the bot does)")
        w("")
        w(
            "| rate /s | variant | offered /s | decided /s | p50 ms | p90 ms | p99 ms | "
            "p99.9 ms | max ms | 202 p99 ms | bot CPU s / 1000 | undecided | late | "
            "send lag p99 ms | sent > 10 ms late | other load, cores |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rate in plan.open_rates:
            for v in variants:
                s = opened.get(v, {}).get(str(rate))
                if not s:
                    continue
                if "skipped" in s:
                    w(
                        f"| {rate} | {LABELS[v]} | not run: above 90 % of its "
                        f"{s['skipped']:,.0f}/s closed-loop capacity |" + " |" * 13
                    )
                    continue
                lat, gen = s["latency"], s["generator"]
                w(
                    f"| {rate} | {LABELS[v]} | {_f(gen['offered'], 0)} | "
                    f"{_f(s['decided_rate'], 0)} | {_f(lat['p50'])} | {_f(lat['p90'])} | "
                    f"{_f(lat['p99'])} | {_f(lat['p99.9'])} | {_f(lat['max'])} | "
                    f"{_f(s['ack']['p99'])} | {_f(s['cpu_per_1000']['bot'], 3)} | "
                    f"{s['undecided']} | {s['outcome']['missed']} | "
                    f"{_f(gen['send_lag_ms']['p99'])} | {s['late_sends']} | "
                    f"{_f(s['other_cores'])} |"
                )
        w("")

    capacity = results.get("capacity", {})
    if capacity.get("callflow") or capacity.get("floor"):
        _capacity_section(w, capacity)

    fresh = results.get("fresh_jwt")
    if fresh:
        base = _median_summary(key_runs(results, "callflow", c))
        lat = fresh["latency"]
        w(f"## A new JWT on every call (c = {c})")
        w("")
        w(
            "Graph reuses a notification token for many notifications and callflow remembers "
            "verified tokens, so the runs above verify each of the 8 tokens once. Here every "
            "call carries a token never seen before (full RS256 verification per call):"
        )
        w("")
        w("| variant | p50 ms | p99 ms | max ms | decisions/s | bot CPU s / 1000 |")
        w("|---|---|---|---|---|---|")
        w(
            f"| callflow, tokens reused | {_f(base['latency']['p50'])} | "
            f"{_f(base['latency']['p99'])} | {_f(base['latency']['max'])} | "
            f"{_f(base['throughput'], 0)} | {_f(base['cpu'], 3)} |"
        )
        w(
            f"| callflow, new token per call | {_f(lat['p50'])} | {_f(lat['p99'])} | "
            f"{_f(lat['max'])} | {_f(fresh['throughput'], 0)} | "
            f"{_f(fresh['cpu_per_1000']['bot'], 3)} |"
        )
        w("")

    uv = results.get("closed", {}).get("uvloop", {})
    if uv:
        w("## On uvloop (`callflow-graph[speed]`), same load")
        w("")
        w("| c | variant | p50 ms | p99 ms | max ms | decisions/s | bot CPU s / 1000 |")
        w("|---|---|---|---|---|---|---|")
        for conc in (1, c):
            for v in variants:
                runs = key_runs(results, v, conc, "uvloop")
                if not runs:
                    continue
                m = _median_summary(runs)
                w(
                    f"| {conc} | {LABELS[v]} | {_f(m['latency']['p50'])} | "
                    f"{_f(m['latency']['p99'])} | {_f(m['latency']['max'])} | "
                    f"{_f(m['throughput'], 0)} | {_f(m['cpu'], 3)} |"
                )
        uv_cf = key_runs(results, "callflow", c, "uvloop")
        uv_fl = key_runs(results, "floor", c, "uvloop")
        if uv_cf and uv_fl:
            w("")
            r50 = median_of(uv_cf, "latency", "p50") / median_of(uv_fl, "latency", "p50")
            r99 = median_of(uv_cf, "latency", "p99") / median_of(uv_fl, "latency", "p99")
            rtp = median_of(uv_cf, "throughput") / median_of(uv_fl, "throughput")
            w(
                f"callflow / floor on uvloop at c = {c}: p50 {r50:.2f}x, p99 {r99:.2f}x, "
                f"throughput {rtp:.2f}x."
            )
        w("")

    cold = results.get("cold_start", {})
    if cold:
        w("## Cold start (process start → `/readyz` 200; then the first call's decision latency)")
        w("")
        w("| loop | variant | ready s | first call ms |")
        w("|---|---|---|---|")
        for loop, table in cold.items():
            for v in variants:
                if v in table:
                    w(
                        f"| {loop} | {LABELS[v]} | {_f(table[v]['ready_s'], 3)} | "
                        f"{_f(table[v]['first_call_ms'])} |"
                    )
        w("")

    over = results.get("overload", {})
    if over.get("fixed") or over.get("tenfold"):
        _overload_section(w, over, plan)
    blocked = results.get("blocked", {})
    if blocked.get("sleep") or blocked.get("spin"):
        _blocked_section(w, blocked, plan)
    memory = results.get("memory")
    if memory:
        _memory_section(w, memory)

    profiles = results.get("profile")
    if profiles and "callflow" in profiles:
        cf, fl = profiles["callflow"], profiles.get("floor", {})
        floor_layers = {row["layer"]: row for row in fl.get("layers", ())}
        w(f"## Where the CPU goes (py-spy, c = {c}, callflow vs the floor)")
        w("")
        w(
            f"Each bot profiled alone during a closed-loop run (py-spy at 250 Hz, waiting threads "
            f"left out; {cf['samples']} and {fl.get('samples', 0)} busy samples). A sample counts "
            "for the layer of the frame nearest the leaf that belongs to one (standard-library "
            "frames count for their caller); µs per call = share x the bot's measured CPU per "
            f"call ({cf['cpu_us_per_call']:.0f} µs callflow, "
            f"{fl.get('cpu_us_per_call', math.nan):.0f} µs floor; throughput while profiled "
            f"{cf['throughput_while_profiled']:,.0f}/s and "
            f"{fl.get('throughput_while_profiled', math.nan):,.0f}/s). Raw stacks: "
            "`benchmarks/out/profile_*.txt`."
        )
        w("")
        w("| layer | callflow % | callflow µs/call | floor µs/call | difference µs/call |")
        w("|---|---|---|---|---|")
        seen = set()
        for row in cf["layers"]:
            other = floor_layers.get(row["layer"], {"us_per_call": 0.0})
            seen.add(row["layer"])
            w(
                f"| {row['layer']} | {row['pct']:.1f} | {row['us_per_call']:.1f} | "
                f"{other['us_per_call']:.1f} | {row['us_per_call'] - other['us_per_call']:+.1f} |"
            )
        for layer, row in floor_layers.items():
            if layer not in seen:
                w(
                    f"| {layer} | 0.0 | 0.0 | {row['us_per_call']:.1f} | "
                    f"{-row['us_per_call']:+.1f} |"
                )
        w("")
        w(
            "Functions with the most samples of their own in the callflow bot, and the frames "
            "that most samples pass through (the program's root frames left out):"
        )
        w("")
        w("| self % | function | | inclusive % | function |")
        w("|---|---|---|---|---|")
        inclusive = [row for row in cf["inclusive"] if row["pct"] < 97.0]
        for own, incl in zip(cf["self"][:20], inclusive[:20], strict=False):
            w(f"| {own['pct']:.1f} | `{own['frame']}` | | {incl['pct']:.1f} | `{incl['frame']}` |")
        w("")

    w("## Reading the figures")
    w("")
    w(_analysis(previous))
    w("")
    return "\n".join(out)


def _stats(d: dict[str, float], digits: int = 1) -> str:
    return f"{_f(d['p50'], digits)} / {_f(d['p99'], digits)} / {_f(d['max'], digits)}"


def _capacity_section(w: Callable[[str], None], capacity: dict[str, Any]) -> None:
    w("## Open-loop capacity (highest rate with 202 p99 < 50 ms and no call late)")
    w("")
    names = [v for v in ("callflow", "floor") if v in capacity]
    first = capacity[names[0]]
    w(
        f"Bisection in {len(first['steps'])} steps of short open-loop runs between 0 and 1.3x "
        "each variant's closed-loop throughput at 64 in flight, the variants alternating step "
        "by step. A step passes when the load generator sent on schedule, every call got a "
        "2xx, the 2xx p99 is under 50 ms and every call was decided by the end of the step's "
        "tail (stricter than the platform timeout, so capacity is not overstated); the "
        "capacity is the highest rate that passed. A step that failed while other processes "
        "used more than a quarter of a core is run once more and the second run counts."
    )
    w("")
    w("| variant | capacity /s | search ceiling /s | resolution /s |")
    w("|---|---|---|---|")
    for v in names:
        cap = capacity[v]
        w(
            f"| {LABELS[v]} | **{_f(cap['capacity'], 0)}** | {_f(cap['ceiling'], 0)} | "
            f"{_f(cap['resolution'], 0)} |"
        )
    if "ratio" in capacity:
        w("")
        w(f"callflow / floor: **{capacity['ratio']:.2f}x**.")
    w("")
    w(
        "| step | variant | rate /s | offered /s | result | 202 p99 ms | late or undecided | "
        "non-2xx | send lag p99 ms | generator loop lag p99 ms | other load, cores |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for i in range(max(len(capacity[v]["steps"]) for v in names)):
        for v in names:
            steps = capacity[v]["steps"]
            if i >= len(steps):
                continue
            st = steps[i]
            verdict = "pass" if st["passed"] else f"fail: {st['reason']}"
            if st.get("retried"):
                verdict += " (second run: the first failed with other load)"
            w(
                f"| {i + 1} | {LABELS[v]} | {_f(st['rate'], 0)} | {_f(st['offered'], 0)} | "
                f"{verdict} | {_f(st['ack_p99_ms'])} | {st['missed']} | {st['non_2xx']} | "
                f"{_f(st['send_lag_p99_ms'])} | {_f(st['loop_lag_p99_ms'])} | "
                f"{_f(st['other_cores'])} |"
            )
    w("")


def _overload_section(w: Callable[[str], None], over: dict[str, Any], plan: Plan) -> None:
    runs = [(k, over[k]) for k in ("fixed", "tenfold") if over.get(k)]
    w("## Overload (callflow, one worker, every handler hangs)")
    w("")
    first = runs[0][1]
    w(
        f"Open loop for {first['seconds']:g} s against a fresh worker whose handlers never "
        f"return (every decision is callflow's own: admission or the deadline default); "
        f"platform timeout {first['platform_timeout']:g} s, safety margin "
        f"{first['safety_margin']:g} s, every other setting at its default. The load "
        "generator opens its connections before it starts (up to "
        f"{first['generator'].get('max_connections', 0):,} notifications may await their "
        "reply); beyond that a call waits for a connection, and one still waiting a second "
        "after the schedule ended is not sent."
    )
    tenfold = over.get("tenfold")
    if tenfold:
        w("")
        w(
            f"The second run asks for {plan.overload_factor:g}x the capacity: "
            f"{plan.overload_factor:g} x {tenfold['capacity']:,.0f}/s ({tenfold['basis']})."
        )
    w("")
    heads = {
        "fixed": f"{first['requested']:,.0f}/s",
        "tenfold": f"{plan.overload_factor:g}x capacity",
    }
    w("| figure | " + " | ".join(heads[k] for k, _ in runs) + " |")
    w("|---|" + "---|" * len(runs))

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        w(f"| {label} | " + " | ".join(cell(r) for _, r in runs) + " |")

    row("asked for, calls/s", lambda r: _f(r["requested"], 0))
    row(
        "**offered**, calls/s (calls sent / not sent)",
        lambda r: (
            f"**{_f(r['generator']['offered'], 0)}** ({r['outcome']['calls']:,} / "
            f"{r['generator']['not_sent']:,})"
        ),
    )
    row(
        "send lag against the schedule: p50 / p99 / max ms",
        lambda r: _stats(r["generator"]["send_lag_ms"]),
    )
    row(
        "calls that waited for a connection; connections opened during the run",
        lambda r: (
            f"{r['generator'].get('waited_for_connection', 0):,}; "
            f"{r['generator'].get('opened_in_window', 0):,}"
        ),
    )
    row(
        "load generator's loop lag: p50 / p99 / max ms",
        lambda r: _stats(r["generator"]["loop_lag_ms"]),
    )
    row(
        "accepted (2xx) / refused (503) / other replies",
        lambda r: (
            f"{r['outcome']['accepted']:,} / {r['outcome']['refused']:,} / "
            f"{r['outcome']['other_status']:,}"
        ),
    )
    row("decided in time (from the sender)", lambda r: f"{r['outcome']['in_time']:,}")
    row("**late** (decided after the platform timeout)", lambda r: f"**{r['outcome']['late']:,}**")
    row(
        "**never decided** (accepted or no reply; refused ones apart)",
        lambda r: (
            f"**{r['outcome']['lost']:,}** (refused and never decided: "
            f"{r['outcome']['never_decided'] - r['outcome']['lost']:,})"
        ),
    )
    row("**decided twice**", lambda r: f"**{r['outcome']['twice']:,}**")
    row(
        "neither decided in time nor refused within 100 ms",
        lambda r: f"{r['outcome']['neither']:,}",
    )
    row("2xx reply: p50 / **p99** / max ms", lambda r: _stats(r["outcome"]["ack_ms"]))
    row(
        "503 reply: p50 / p99 / max ms (slower than 100 ms)",
        lambda r: f"{_stats(r['outcome']['refusal_ms'])} ({r['outcome']['refused_slowly']:,})",
    )
    row("any reply: p50 / p99 / max ms", lambda r: _stats(r["outcome"]["reply_ms"]))
    row(
        "decision latency from the sender: p50 / p99 / max s",
        lambda r: _stats(r["outcome"]["latency_s"], 3),
    )
    row("decided within 1 s of sending", lambda r: f"{r['outcome']['decided_within_1s']:,}")
    row(
        "CPU seconds: bot / stub / load generator",
        lambda r: (
            f"{_f(r['cpu_s']['bot'])} / {_f(r['cpu_s']['stub'])} / {_f(r['cpu_s']['loadgen'])}"
        ),
    )
    row(
        "bot's cyclic GC: seconds of its CPU seconds (longest pass)",
        lambda r: (
            f"{r['gc']['total_seconds']:.1f} of {r['gc']['cpu_seconds']:.1f} "
            f"({r['gc']['longest'] * 1000:.0f} ms)"
            if r.get("gc")
            else "-"
        ),
    )
    row("other load, cores", lambda r: _f(r["other_cores"]))
    w("")
    for key, run in runs:
        if not run.get("timeline"):
            continue
        w(
            f"Timeline of the {heads[key]} run (per second, by 3-second step; *late or never* "
            "counts the calls sent in that step):"
        )
        w("")
        w("| t s | sent /s | 2xx /s | 503 /s | decisions at Graph /s | late or never |")
        w("|---|---|---|---|---|---|")
        for r in run["timeline"]:
            w(
                f"| {r['t']:.0f} | {r['sent']:,.0f} | {r['acked']:,.0f} | {r['refused']:,.0f} | "
                f"{r['decided']:,.0f} | {r['missed']:,} |"
            )
        w("")


def _blocked_section(w: Callable[[str], None], blocked: dict[str, Any], plan: Plan) -> None:
    w("## Blocked loop (callflow: one handler holds its event loop)")
    w("")
    w(
        f"Every handler hangs; {plan.block_pre:g} s into the run one marked call's handler "
        f"holds its thread for {plan.block_seconds:g} s, with `time.sleep` (the GIL is free) "
        "or with a pure-Python busy loop (the GIL is held but for the interpreter's switch "
        f"interval). Calls: {plan.block_pre_rate:g}/s before the block, "
        f"{plan.block_calls} spread over the block (sent after it began and before it ended, "
        f"by the handler's own stamps), then {plan.block_after_rate:g}/s for "
        f"{plan.block_after:g} s after it. Platform timeout "
        f"{plan.block_platform:g} s, safety margin {plan.block_margin:g} s; late is counted "
        "from the sender."
    )
    w("")
    for how, label in (("sleep", "`time.sleep`"), ("spin", "busy loop")):
        run = blocked.get(how)
        if not run:
            continue
        held = (
            f"held {run['held_for']:.1f} s, from "
            f"{run['handler_started_after_ms']:.1f} ms after the marked call was sent"
            if run["handler_ran"]
            else "the marked handler never ran (window assumed from the marked call's send)"
        )
        w(f"### {label}: {held}")
        w("")
        w(
            "| calls sent | count | 2xx | other replies | 2xx reply p50 / p99 / max ms | "
            "late | never decided | decided exactly once | twice | decided while held | "
            "decision latency p50 / max s |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for group, name in (
            ("before", "before the block"),
            ("during", "**during the block**"),
            ("after", "after the block"),
        ):
            g = run[group]
            w(
                f"| {name} | {g['calls']} | {g['accepted']} | {g['calls'] - g['accepted']} | "
                f"{_stats(g['ack_ms'])} | {g['late']} | {g['lost']} | {g['exactly_once']} | "
                f"{g['twice']} | {g['decided_while_blocked']} | "
                f"{_f(g['latency_s']['p50'], 3)} / {_f(g['latency_s']['max'], 3)} |"
            )
        mark = run.get("marked_call", {})
        w("")
        w(
            f"The marked call itself: reply {mark.get('status', '-')}, decided "
            f"{mark.get('decisions', 0)} time(s). Load generator: send lag p99 "
            f"{_f(run['generator']['send_lag_ms']['p99'])} ms, loop lag p99 "
            f"{_f(run['generator']['loop_lag_ms']['p99'])} ms."
        )
        w("")


def _memory_section(w: Callable[[str], None], memory: dict[str, Any]) -> None:
    w("## Memory (callflow, handlers hang)")
    w("")
    w(
        f"RSS {memory['rss_base_mb']:.1f} MB → {memory['rss_mb']:.1f} MB with "
        f"{memory.get('added', memory['pending']):,} calls added to those pending "
        f"({memory['pending']:,} pending in all): **{memory['bytes_per_pending']:,.0f} bytes "
        f"per pending call** (goal ≤ 4 KB). Intake {memory['intake_per_s']:,.0f} "
        "notifications/s while filling."
    )
    if memory.get("parsed_body_bytes"):
        w(
            f"For scale: the notification's parsed JSON tree alone takes "
            f"{memory['parsed_body_bytes']:,.0f} bytes. `python -m benchmarks.bench_core` "
            "breaks the in-process figure down."
        )
    if memory.get("gc"):
        w("")
        w(_gc_text("cyclic garbage collector while the pending calls were added", [memory["gc"]]))
    w("")


def _gc_text(what: str, stats: Sequence[dict[str, Any]]) -> str:
    total = sum(g["total_seconds"] for g in stats)
    cpu = sum(g["cpu_seconds"] for g in stats)
    full = sum(g["collections"][2] for g in stats)
    longest = max(g["longest"] for g in stats)
    share = 100.0 * total / cpu if cpu else math.nan
    return (
        f"The {what}: {total:.2f} s of {cpu:.2f} s of the bot's CPU ({share:.0f} %), "
        f"{full} full passes, longest pass so far {longest * 1000:.0f} ms."
    )


def _analysis(previous: str) -> str:
    if ANALYSIS_START in previous and ANALYSIS_END in previous:
        body = previous.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0]
        return ANALYSIS_START + body + ANALYSIS_END
    return ANALYSIS_START + "\n(no analysis written yet)\n" + ANALYSIS_END


def write_report(results: dict[str, Any], plan: Plan, md_path: Path, png_path: Path) -> None:
    """Draw the CDF (when matplotlib is there) and write RESULTS.md."""
    drew = draw_cdf(results, plan, png_path)
    previous = md_path.read_text() if md_path.exists() else ""
    png = png_path.name if drew and png_path.parent == md_path.parent else None
    if drew and png is None:
        png = str(png_path)
    md_path.write_text(render(results, plan, previous, png))


def main() -> None:
    """Re-render RESULTS.md from ``benchmarks/out/results.json`` (after editing the analysis).

    The targets are evaluated again from the stored figures, so that a changed goal or rule
    shows without running the benchmarks again.
    """
    import json
    import sys

    here = Path(__file__).resolve().parent
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "out" / "results.json"
    results = json.loads(source.read_text())
    plan = Plan.short() if results["meta"].get("quick") else Plan.full()
    results["targets"] = evaluate_targets(results, plan)
    md = here / "RESULTS.md" if source.parent == here / "out" else source.parent / "RESULTS.md"
    png = md.parent / "cdf.png"
    md.write_text(render(results, plan, md.read_text(), png.name if png.exists() else None))
    print(f"rendered {md}")


if __name__ == "__main__":
    main()
