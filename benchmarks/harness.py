"""The benchmark harness: three processes on 127.0.0.1, three ways to decide a call.

Processes: the load generator (:mod:`benchmarks.loadgen`), the bot under test, and the Graph
stub (:mod:`benchmarks.graph_stub`). Latency is *notification POST sent -> decision POST
received by the stub*, both stamped with ``time.monotonic()`` (one system-wide clock on
Linux) and matched by call id. Variants, measured in the same run with the same load and stub:

- ``callflow``: :mod:`benchmarks.callflow_bot`, started as ``callflow run`` starts a worker
  (inbound JWT validation on, keys from the stub's key server, app token from its token
  endpoint);
- ``floor``: :mod:`benchmarks.floor_bot`, a bare aiohttp webhook;
- ``sdk``: :mod:`benchmarks.sdk_bot`, an aiohttp webhook that rejects through msgraph-sdk
  (skipped when msgraph-sdk is not installed).

Scenarios: cold start; closed-loop decision latency and throughput at several concurrencies
(the key one, 64, repeated in interleaved rounds); open-loop rates; CPU per 1000 calls; a
new JWT per call; the same on uvloop; overload with hanging handlers; a handler that blocks
the event loop; memory per pending call; and, when a target is missed, a py-spy profile of
the callflow bot.

Run: ``python -m benchmarks.harness`` (``make bench``; writes ``benchmarks/RESULTS.md``,
``benchmarks/cdf.png`` and ``benchmarks/out/results.json``) or ``--quick`` (``make
bench-quick``; a short run written to ``benchmarks/out/quick/``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization

from benchmarks._common import (
    APP_ID,
    CALLBACK_URL,
    GRAPH_PATH,
    ISSUER,
    KEYS_PATH,
    TENANT_ID,
    WEBHOOK_PATH,
    have_uvloop,
    percentile,
    rss_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
VARIANTS = ("callflow", "floor", "sdk")
QUIET = "callflow_quiet"
"""callflow with ``LOG_LEVEL=warning`` (no ``call.decided`` line): what the logging costs."""
APP_SECRET = "bench-app-secret"
ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"
PACKAGES = (
    "callflow",
    "aiohttp",
    "anyio",
    "structlog",
    "PyJWT",
    "cryptography",
    "msgraph-sdk",
    "microsoft-kiota-http",
    "httpx",
    "uvloop",
    "matplotlib",
    "py-spy",
)


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
    overload_seconds: float
    overload_factor: float
    overload_platform: float
    overload_margin: float
    block_seconds: float
    block_pre: float
    block_rate: float
    block_platform: float
    block_margin: float
    memory_calls: int
    profile_seconds: float

    @classmethod
    def full(cls) -> Plan:
        """The full run (a few minutes)."""
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
            overload_seconds=30.0,
            overload_factor=10.0,
            overload_platform=15.0,
            overload_margin=3.0,
            block_seconds=20.0,
            block_pre=12.0,
            block_rate=100.0,
            block_platform=15.0,
            block_margin=3.0,
            memory_calls=100_000,
            profile_seconds=8.0,
        )

    @classmethod
    def short(cls) -> Plan:
        """The quick run (well under a minute): the same scenarios, smaller."""
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
            overload_seconds=1.5,
            overload_factor=10.0,
            overload_platform=3.0,
            overload_margin=1.0,
            block_seconds=1.5,
            block_pre=1.5,
            block_rate=100.0,
            block_platform=3.0,
            block_margin=1.0,
            memory_calls=3_000,
            profile_seconds=0.0,
        )


# --- processes -------------------------------------------------------------------------------


class Proc:
    """A child process whose stdout/stderr go to files; it announces itself with ``READY``."""

    def __init__(
        self, name: str, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                list(argv), cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        self.pid = self.popen.pid
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ``READY {json}`` line; raise with the stderr tail if it never comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    self.info = json.loads(line[6:])
                    return self.info
            if self.popen.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(
            f"{self.name} did not start (exit code {self.popen.poll()}); expected a READY line. "
            f"stderr tail:\n{self.stderr_tail()}"
        )

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of the process's stderr."""
        with contextlib.suppress(OSError):
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def gc_stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask a callflow bot for its collector totals (SIGUSR1); {} if it does not answer."""
        before = self.err_path.read_text(errors="replace").count('"bench.gc"')
        self.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [
                line
                for line in self.err_path.read_text(errors="replace").splitlines()
                if '"bench.gc"' in line
            ]
            if len(lines) > before:
                stats: dict[str, Any] = json.loads(lines[-1])
                return stats
            time.sleep(0.01)
        return {}

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM; a second SIGTERM after a second (a worker's "stop now"); then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(min(1.0, timeout))
                return
            except subprocess.TimeoutExpired:
                pass
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# --- statistics ------------------------------------------------------------------------------


def lat_stats(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of latencies in ms (sorted here)."""
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "p99.9": percentile(ordered, 99.9),
        "max": ordered[-1] if ordered else math.nan,
        "mean": statistics.fmean(ordered) if ordered else math.nan,
    }


def _isnan(value: float) -> bool:
    return value != value


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Collector passes and seconds between two ``bench.gc`` snapshots."""
    if not before or not after:
        return {}
    return {
        "collections": [
            b - a for a, b in zip(before["collections"], after["collections"], strict=True)
        ],
        "seconds": [b - a for a, b in zip(before["seconds"], after["seconds"], strict=True)],
        "total_seconds": sum(after["seconds"]) - sum(before["seconds"]),
        "cpu_seconds": after["cpu"] - before["cpu"],
        "longest": after["longest"],
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


def summarize_open(result: dict[str, Any], rate: float) -> dict[str, Any]:
    """Offered and decided rates, latency, and calls never decided of an open-loop run."""
    start, end = result["window"]
    sent, decided, acked = result["sent"], result["decided"], result["acked"]
    latencies = [(d - s) * 1000 for s, d in zip(sent, decided, strict=True) if not _isnan(d)]
    acks = [(a - s) * 1000 for s, a in zip(sent, acked, strict=True) if not _isnan(a)]
    late = sum(1 for i, s in enumerate(sent) if not _isnan(s) and s - (start + i / rate) > 0.010)
    span = max(end - start, 1e-9)
    n = sum(1 for s in sent if not _isnan(s))
    decided_in_window = sum(1 for d in decided if not _isnan(d) and start <= d < end)
    return {
        "rate": rate,
        "calls": n,
        "offered": n / span,
        "decided_rate": decided_in_window / span,
        "undecided": sum(
            1 for s, d in zip(sent, decided, strict=True) if not _isnan(s) and _isnan(d)
        ),
        "late_sends": late,
        "latency": lat_stats(latencies),
        "ack": lat_stats(acks),
        "cpu_per_1000": {
            name: cpu_delta(result, name) * 1000.0 / max(len(latencies), 1)
            for name in ("bot", "stub", "loadgen")
        },
        "duplicates": result["duplicates"],
        "other_cores": other_load(result, span),
    }


def summarize_deadlines(
    result: dict[str, Any], platform_timeout: float, deadline: float
) -> dict[str, Any]:
    """Deadline outcome of every call of an overload-style run: missed, how decided, 202s."""
    sent, acked, decided, status = (
        result["sent"],
        result["acked"],
        result["decided"],
        result["status"],
    )
    calls = [i for i, s in enumerate(sent) if not _isnan(s)]
    missed = [i for i in calls if _isnan(decided[i]) or decided[i] - sent[i] > platform_timeout]
    latencies = [decided[i] - sent[i] for i in calls if not _isnan(decided[i])]
    start, end = result["window"]
    return {
        "calls": len(calls),
        "offered": len(calls) / max(end - start, 1e-9),
        "seconds": end - start,
        "missed": len(missed),
        "accepted": sum(1 for i in calls if status[i] == 202),
        "missed_accepted": sum(1 for i in missed if status[i] == 202),
        "refused": sum(1 for i in calls if status[i] == 503),
        "never_decided": sum(1 for i in calls if _isnan(decided[i])),
        "non_202": sum(1 for i in calls if status[i] != 202),
        "decided_within_1s": sum(1 for x in latencies if x < 1.0),
        "decided_near_deadline": sum(
            1 for x in latencies if deadline - 0.5 <= x <= platform_timeout
        ),
        "latency_s": {
            k: v / 1000 for k, v in lat_stats([x * 1000 for x in latencies]).items() if k != "n"
        },
        "ack": lat_stats([(acked[i] - sent[i]) * 1000 for i in calls if status[i] == 202]),
        "reply": lat_stats(
            [(acked[i] - sent[i]) * 1000 for i in calls if not _isnan(acked[i]) and status[i]]
        ),
        "duplicates": result["duplicates"],
        "cpu_s": {name: cpu_delta(result, name) for name in ("bot", "stub", "loadgen")},
    }


def timeline(
    result: dict[str, Any], platform_timeout: float, step: float = 3.0
) -> list[dict[str, Any]]:
    """Per ``step`` seconds of a run: notifications sent, 202s, decisions at the stub, and
    how many of the calls sent then missed the platform timeout."""
    start = result["window"][0]
    rows: dict[int, dict[str, float]] = {}

    def row(at: float) -> dict[str, float]:
        return rows.setdefault(
            int((at - start) // step),
            {"sent": 0, "acked": 0, "decided": 0, "missed": 0, "refused": 0},
        )

    for s, a, d, status in zip(
        result["sent"], result["acked"], result["decided"], result["status"], strict=True
    ):
        if _isnan(s):
            continue
        r = row(s)
        r["sent"] += 1
        if _isnan(d) or d - s > platform_timeout:
            r["missed" if status == 202 else "refused"] += 1
        if not _isnan(a) and status == 202:
            row(a)["acked"] += 1
        if not _isnan(d):
            row(d)["decided"] += 1
    return [
        {
            "t": k * step,
            **{name: v if name in ("missed", "refused") else v / step for name, v in r.items()},
        }
        for k, r in sorted(rows.items())
    ]


def parsed_body_bytes(body: str, n: int = 200) -> float:
    """Bytes a parsed notification body (the dict tree of ``json.loads``) takes."""
    import tracemalloc

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = [json.loads(body) for _ in range(n)]
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return size / n


# --- the harness -----------------------------------------------------------------------------


class Harness:
    """Runs the scenarios of a :class:`Plan` and writes the report."""

    def __init__(self, plan: Plan, out: Path, workdir: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.out = out
        self.workdir = workdir
        self.log = log
        self.runs = 0
        self.run_prefix = int(time.time()) & 0xFFFF
        self.procs: list[Proc] = []
        self.results: dict[str, Any] = {}
        self.variants = tuple(v for v in VARIANTS if v != "sdk" or _has("msgraph"))
        if plan.quiet_variant:
            self.variants += (QUIET,)
        self.stub: Proc | None = None
        self.stub_port = 0
        self.feed_port = 0
        self.authority_url = ""
        self.ca_bundle = ""
        self._make_keys()

    # -- setup ------------------------------------------------------------------------------

    def _make_keys(self) -> None:
        from callflow.testing import SigningKey, graph_claims, incoming_call

        key = SigningKey.generate(kid="bench-key")
        self.key = key
        (self.workdir / "jwks.json").write_text(json.dumps({"keys": [key.jwk()]}))
        self.tokens = [
            key.sign(graph_claims(app_id=APP_ID, tenant_id=TENANT_ID, issuer=ISSUER, jti=str(i)))
            for i in range(8)
        ]
        self.sentinel = "5e6f7a8b-0000-4000-8000-5e471e1f1a60"
        body = incoming_call(
            kind="p2p",
            call_id=self.sentinel,
            tenant_id=TENANT_ID,
            bot_app_id=APP_ID,
            callback_uri=CALLBACK_URL,
        )
        self.body = json.dumps(body)

    def python(self, module: str, *args: str) -> list[str]:
        """argv running ``benchmarks.<module>`` with this interpreter."""
        return [sys.executable, "-m", f"benchmarks.{module}", *args]

    def start_stub(self) -> None:
        """Start the Graph stub (uvloop when installed)."""
        stub = Proc(
            "stub",
            self.python("graph_stub", "--jwks", str(self.workdir / "jwks.json")),
            self.workdir,
        )
        self.procs.append(stub)
        info = stub.wait_ready()
        self.stub, self.stub_port, self.feed_port = stub, int(info["http"]), int(info["feed"])
        self.authority_url, self.ca_bundle = str(info["authority"]), str(info["ca_bundle"])

    @property
    def graph_url(self) -> str:
        """The stub's Graph base URL."""
        return f"http://127.0.0.1:{self.stub_port}{GRAPH_PATH}"

    def callflow_env(self, port: int, **settings: Any) -> dict[str, str]:
        """The environment of a callflow bot process: CALLFLOW_* wired to the stub."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLFLOW_", "BENCH_"))}
        values: dict[str, Any] = {
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "tenant_id": TENANT_ID,
            "authority_url": self.authority_url,
            "ca_bundle": self.ca_bundle,
            "callback_url": CALLBACK_URL,
            "graph_url": self.graph_url,
            "openid_config_url": (
                f"http://127.0.0.1:{self.stub_port}{KEYS_PATH}/.well-known/openid-configuration"
            ),
            "issuers": ISSUER,
            "host": "127.0.0.1",
            "port": port,
            "log_format": "json",
            "log_level": "info",
            "instance_id": "bench",
        }
        mode = settings.pop("mode", "instant")
        block = settings.pop("block_seconds", None)
        values.update(settings)
        env.update({f"CALLFLOW_{k.upper()}": str(v) for k, v in values.items()})
        env["BENCH_MODE"] = mode
        if block is not None:
            env["BENCH_BLOCK_SECONDS"] = str(block)
        return env

    def start_bot(
        self, variant: str, *, loop: str = "asyncio", label: str | None = None, **settings: Any
    ) -> tuple[Proc, int]:
        """Start a bot process (not waiting for it); returns it and its port."""
        port = free_port()
        name = f"{label or variant}-{loop}-{self.runs}"
        self.runs += 1
        if variant == QUIET:
            variant, settings = "callflow", {"log_level": "warning", **settings}
        if variant == "callflow":
            proc = Proc(
                name,
                self.python("callflow_bot", "--loop", loop),
                self.workdir,
                self.callflow_env(port, **settings),
            )
        else:
            module = {"floor": "floor_bot", "sdk": "sdk_bot"}[variant]
            proc = Proc(
                name,
                self.python(
                    module, "--port", str(port), "--graph-url", self.graph_url, "--loop", loop
                ),
                self.workdir,
            )
        self.procs.append(proc)
        return proc, port

    def wait_readyz(self, proc: Proc, port: int, timeout: float = 60.0) -> float:
        """Poll ``/readyz`` until 200; returns the monotonic time it first answered 200."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() < deadline:
            status, _ = http_get(url, timeout=0.5)
            if status == 200:
                return time.monotonic()
            if proc.popen.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError(
            f"{proc.name} never answered 200 on /readyz; expected readiness within {timeout:g} s. "
            f"stderr tail:\n{proc.stderr_tail()}"
        )

    def loadgen(self, port: int, bot: Proc, **config: Any) -> dict[str, Any]:
        """Run one load-generator process against the bot on ``port``; return its records."""
        proc, res = self.start_loadgen(port, bot, **config)
        proc.popen.wait()
        return self.finish_loadgen(proc, res)

    def start_loadgen(self, port: int, bot: Proc, **config: Any) -> tuple[Proc, Path]:
        """Start a load-generator process; returns it and where its result will be."""
        self.runs += 1
        run = (self.run_prefix << 16) | self.runs
        full = {
            "webhook_url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
            "feed_port": self.feed_port,
            "run": run,
            "body": self.body,
            "sentinel": self.sentinel,
            "tokens": self.tokens,
            "bot_pid": bot.pid,
            "stub_pid": self.stub.pid if self.stub else None,
        }
        full.update(config)
        cfg = self.workdir / f"loadgen-{self.runs}.json"
        res = self.workdir / f"loadgen-{self.runs}.result.json"
        cfg.write_text(json.dumps(full))
        proc = Proc(
            f"loadgen-{self.runs}", self.python("loadgen", str(cfg), str(res)), self.workdir
        )
        return proc, res

    def finish_loadgen(self, proc: Proc, res: Path) -> dict[str, Any]:
        """The records of a load-generator process that has exited."""
        code = proc.popen.wait()
        if code != 0 or not res.exists():
            raise RuntimeError(
                f"the load generator failed (exit code {code}); expected a result file. "
                f"stderr tail:\n{proc.stderr_tail()}"
            )
        result: dict[str, Any] = json.loads(res.read_text())
        res.unlink()
        return result

    @contextlib.contextmanager
    def bots(self, loop: str = "asyncio") -> Iterator[dict[str, tuple[Proc, int]]]:
        """Start every variant's bot (measuring cold start), yield them, stop them."""
        running: dict[str, tuple[Proc, int]] = {}
        try:
            for variant in self.variants:
                proc, port = self.start_bot(variant, loop=loop)
                ready_at = self.wait_readyz(proc, port)
                if variant not in ("callflow", QUIET):
                    proc.wait_ready()
                first = self.loadgen(
                    port, proc, mode="closed", concurrency=1, warmup=0.0, duration=30.0, count=1
                )
                lat = (first["decided"][0] - first["sent"][0]) * 1000
                self.results.setdefault("cold_start", {}).setdefault(loop, {})[variant] = {
                    "ready_s": ready_at - proc.started,
                    "first_call_ms": lat,
                }
                self.log(
                    f"  {variant:9} ready in {ready_at - proc.started:.3f} s, "
                    f"first decision {lat:.2f} ms"
                )
                running[variant] = (proc, port)
            yield running
        finally:
            for proc, _ in running.values():
                proc.stop()

    # -- scenarios --------------------------------------------------------------------------

    def closed_runs(self, loop: str, concurrencies: Sequence[int], rounds: int) -> None:
        """Closed-loop runs, variants interleaved; the key concurrency repeated ``rounds``."""
        p = self.plan
        self.log(f"closed loop ({loop}): concurrency {', '.join(map(str, concurrencies))}")
        store = self.results.setdefault("closed", {}).setdefault(loop, {})
        with self.bots(loop) as bots:
            for rnd in range(rounds):
                for c in concurrencies:
                    if rnd > 0 and c != p.key_concurrency:
                        continue
                    for variant, (proc, port) in bots.items():
                        if variant == QUIET and c not in (1, p.key_concurrency):
                            continue
                        gc_before = proc.gc_stats() if variant in ("callflow", QUIET) else {}
                        result = self.loadgen(
                            port,
                            proc,
                            mode="closed",
                            concurrency=c,
                            warmup=p.warmup,
                            duration=p.duration,
                        )
                        summary = summarize_closed(result)
                        if gc_before:
                            summary["gc"] = gc_delta(gc_before, proc.gc_stats())
                        store.setdefault(variant, {}).setdefault(str(c), []).append(summary)
                        lat = summary["latency"]
                        self.log(
                            f"  round {rnd + 1} c={c:<3} {variant:9} "
                            f"{summary['throughput']:7.0f}/s  p50 {lat['p50']:6.2f}  "
                            f"p99 {lat['p99']:7.2f}  max {lat['max']:7.2f} ms"
                            f"  cpu {summary['cpu_per_1000']['bot']:.3f} s/1000"
                            f"  undecided {summary['undecided']}"
                        )
            if loop == "asyncio":
                self.open_runs(bots)
                if self.plan.fresh_jwt:
                    self.fresh_jwt_run(bots)

    def open_runs(self, bots: dict[str, tuple[Proc, int]]) -> None:
        """Open-loop runs at fixed rates, variants interleaved."""
        p = self.plan
        store = self.results.setdefault("open", {})
        for rate in p.open_rates:
            for variant, (proc, port) in bots.items():
                if variant == QUIET:
                    continue
                runs = key_runs(self.results, variant, p.key_concurrency)
                capacity = median_of(runs, "throughput") if runs else math.inf
                if rate > 0.9 * capacity:
                    store.setdefault(variant, {})[str(rate)] = {"skipped": capacity}
                    self.log(
                        f"  open {rate:>5}/s {variant:9} skipped: above 90 % of its "
                        f"{capacity:.0f}/s capacity"
                    )
                    continue
                result = self.loadgen(
                    port,
                    proc,
                    mode="open",
                    rate=rate,
                    duration=p.open_duration,
                    max_inflight=512,
                    tail=15.0,
                )
                summary = summarize_open(result, rate)
                store.setdefault(variant, {})[str(rate)] = summary
                self.settle()
                lat = summary["latency"]
                self.log(
                    f"  open {rate:>5}/s {variant:9} decided {summary['decided_rate']:7.0f}/s"
                    f"  p50 {lat['p50']:6.2f}  p99 {lat['p99']:7.2f}  max {lat['max']:7.2f} ms"
                    f"  undecided {summary['undecided']}"
                )

    def settle(self, quiet: float = 0.5, timeout: float = 30.0) -> bool:
        """Wait until the stub has had no decision for ``quiet`` s (a bot's backlog drained)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            status, body = http_get(f"{self.graph_url}/_stats")
            count = int(json.loads(body)["decisions"]) if status == 200 else -1
            now = time.monotonic()
            if count != last:
                last, since = count, now
            elif now - since >= quiet:
                return True
            time.sleep(0.05)
        self.log(f"  (the bots were still deciding after {timeout:g} s)")
        return False

    def fresh_jwt_run(self, bots: dict[str, tuple[Proc, int]]) -> None:
        """callflow at the key concurrency with a new (never cached) JWT on every call."""
        p = self.plan
        proc, port = bots["callflow"]
        runs = self.results["closed"]["asyncio"]["callflow"][str(p.key_concurrency)]
        rate = statistics.median(r["throughput"] for r in runs)
        count = int(min(30_000, max(2_000, rate * (p.warmup + p.duration) * 1.2)))
        pem = self.key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        result = self.loadgen(
            port,
            proc,
            mode="closed",
            concurrency=p.key_concurrency,
            warmup=p.warmup,
            duration=p.duration,
            count=count,
            fresh_tokens={
                "pem": pem,
                "kid": self.key.kid,
                "count": count,
                "app_id": APP_ID,
                "tenant_id": TENANT_ID,
                "issuer": ISSUER,
            },
        )
        summary = summarize_closed(result)
        self.results["fresh_jwt"] = summary
        lat = summary["latency"]
        self.log(
            f"  new JWT per call, c={p.key_concurrency}: {summary['throughput']:.0f}/s"
            f"  p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f} ms"
            f"  cpu {summary['cpu_per_1000']['bot']:.3f} s/1000"
        )

    def overload(self) -> None:
        """10x the sustainable rate with handlers that hang: missed deadlines and 202 p99."""
        p = self.plan
        sustainable = self.sustainable()
        rate = sustainable * p.overload_factor
        self.log(
            f"overload: {p.overload_factor:g} x {sustainable:.0f}/s = {rate:.0f}/s for "
            f"{p.overload_seconds:g} s, handlers hang"
        )
        proc, port = self.start_bot(
            "callflow",
            label="overload",
            mode="hang",
            platform_timeout=p.overload_platform,
            safety_margin=p.overload_margin,
        )
        try:
            self.wait_readyz(proc, port)
            gc_before = proc.gc_stats()
            result = self.loadgen(
                port,
                proc,
                mode="open",
                rate=rate,
                duration=p.overload_seconds,
                max_inflight=512,
                tail=p.overload_platform + 3.0,
            )
            gc_after = proc.gc_stats()
            _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        finally:
            proc.stop()
        summary = summarize_deadlines(
            result, p.overload_platform, p.overload_platform - p.overload_margin
        )
        summary.update(
            sustainable=sustainable,
            requested=rate,
            platform_timeout=p.overload_platform,
            safety_margin=p.overload_margin,
            metrics=_pick_metrics(metrics),
            gc=gc_delta(gc_before, gc_after),
            timeline=timeline(result, p.overload_platform),
        )
        self.results["overload"] = summary
        self.log(
            f"  offered {summary['offered']:.0f}/s ({summary['calls']} calls): missed "
            f"{summary['missed']}, 202 p99 {summary['ack']['p99']:.1f} ms, "
            f"decided within 1 s {summary['decided_within_1s']}, "
            f"at the deadline {summary['decided_near_deadline']}"
        )

    def blocked(self) -> None:
        """A handler blocks the event loop while calls keep arriving: missed deadlines."""
        p = self.plan
        self.log(
            f"blocked loop: {p.block_rate:g} calls/s, one handler sleeps {p.block_seconds:g} s "
            f"after {p.block_pre:g} s, handlers hang"
        )
        proc, port = self.start_bot(
            "callflow",
            label="blocked",
            mode="block",
            block_seconds=p.block_seconds,
            platform_timeout=p.block_platform,
            safety_margin=p.block_margin,
        )
        try:
            self.wait_readyz(proc, port)
            result = self.loadgen(
                port,
                proc,
                mode="open",
                rate=p.block_rate,
                duration=p.block_pre + p.block_seconds + 2.0,
                blocker_at=p.block_pre,
                max_inflight=100,
                tail=p.block_platform + 3.0,
            )
        finally:
            proc.stop()
        blocker = result["blocker"]
        if "sent" not in blocker:
            raise RuntimeError("the blocking call was not sent; expected one blocker per run")
        sent, acked, decided = result["sent"], result["acked"], result["decided"]
        # The loop blocked right after the blocker's 202: the longest silence in the replies
        # from then on is the block.
        times = sorted(a for a in (*acked, blocker["acked"]) if a >= blocker["acked"] - 0.1)
        gaps = [(b - a, a, b) for a, b in itertools.pairwise(times)] or [(0.0, 0.0, 0.0)]
        _, block_start, block_end = max(gaps)
        calls = [i for i, s in enumerate(sent) if not _isnan(s)]
        before = [i for i in calls if acked[i] <= block_start]
        during = [i for i in calls if acked[i] > block_start and sent[i] < block_end]
        after = [i for i in calls if sent[i] >= block_end]

        def outcome(indexes: list[int]) -> dict[str, Any]:
            missed = [
                i for i in indexes if _isnan(decided[i]) or decided[i] - sent[i] > p.block_platform
            ]
            in_block = [
                i
                for i in indexes
                if not _isnan(decided[i]) and block_start < decided[i] < block_end
            ]
            return {
                "calls": len(indexes),
                "missed": len(missed),
                "decided_while_blocked": len(in_block),
                "latency_s": lat_stats(
                    [decided[i] - sent[i] for i in indexes if not _isnan(decided[i])]
                ),
                "ack_ms": lat_stats([(acked[i] - sent[i]) * 1000 for i in indexes]),
            }

        summary = {
            "block_seconds": p.block_seconds,
            "loop_blocked_for": block_end - block_start,
            "rate": p.block_rate,
            "platform_timeout": p.block_platform,
            "safety_margin": p.block_margin,
            "accepted_before_block": outcome(before),
            "sent_while_blocked": outcome(during),
            "sent_after_block": outcome(after),
            "duplicates": result["duplicates"],
        }
        self.results["blocked"] = summary
        a, b = summary["accepted_before_block"], summary["sent_while_blocked"]
        self.log(
            f"  loop blocked {summary['loop_blocked_for']:.1f} s; accepted before: {a['calls']} "
            f"calls, missed {a['missed']}, {a['decided_while_blocked']} decided while blocked; "
            f"sent while blocked: {b['calls']}, missed {b['missed']}"
        )

    def memory(self) -> None:
        """RSS of a callflow bot holding ``memory_calls`` pending calls; bytes per call.

        RSS and the pending count are sampled while the calls arrive; the figure uses the
        sample with the most pending calls (if the fill outlasts the deadline, the first calls
        get their default and leave; freed memory is not returned to the system, so a later
        sample would overstate the cost per call).
        """
        p = self.plan
        self.log(f"memory: {p.memory_calls} pending calls")
        proc, port = self.start_bot(
            "callflow",
            label="memory",
            mode="hang",
            platform_timeout=60,
            safety_margin=3,
            max_pending=10 * p.memory_calls,
            # Holding every call is the point here, not pacing a deadline wave.
            deadline_send_rate=1_000_000,
        )
        samples: list[tuple[int, int, float]] = []
        try:
            self.wait_readyz(proc, port)
            warm = max(1000, p.memory_calls // 50)
            self.loadgen(port, proc, mode="burst", count=warm, concurrency=64)
            base_pending = self._pending(port, warm)
            base_rss = rss_bytes(proc.pid)
            gc_before = proc.gc_stats()
            started = time.monotonic()
            gen, res = self.start_loadgen(
                port, proc, mode="burst", count=p.memory_calls, concurrency=64
            )
            target = warm + p.memory_calls
            settle_until = math.inf
            while time.monotonic() < min(settle_until, started + 120):
                status, body = http_get(f"http://127.0.0.1:{port}/readyz", timeout=5.0)
                if status == 200:
                    pending = int(json.loads(body)["pending"])
                    samples.append((pending, rss_bytes(proc.pid), time.monotonic() - started))
                    if pending >= target:
                        break
                if gen.popen.poll() is not None and settle_until == math.inf:
                    settle_until = time.monotonic() + 3.0
                time.sleep(0.25)
            gen.popen.wait()
            result = self.finish_loadgen(gen, res)
            gc_after = proc.gc_stats()
        finally:
            proc.kill()
        pending, rss, at = max(samples or [(base_pending, base_rss, 0.0)])
        ok = sum(1 for s in result["status"] if s == 202)
        added = pending - base_pending
        summary = {
            "calls": p.memory_calls,
            "accepted": ok,
            "pending": pending,
            "rss_base_mb": base_rss / 2**20,
            "rss_mb": rss / 2**20,
            "bytes_per_pending": (rss - base_rss) / max(added, 1),
            "intake_per_s": added / max(at, 1e-9),
            "gc": gc_delta(gc_before, gc_after),
            "parsed_body_bytes": parsed_body_bytes(self.body),
        }
        self.results["memory"] = summary
        self.log(
            f"  RSS {summary['rss_base_mb']:.1f} -> {summary['rss_mb']:.1f} MB with {pending} "
            f"pending: {summary['bytes_per_pending']:.0f} B per pending call"
        )

    def _pending(self, port: int, expected: int, timeout: float = 30.0) -> int:
        """The bot's pending count once it reaches ``expected`` (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        pending = 0
        while time.monotonic() < deadline:
            status, body = http_get(f"http://127.0.0.1:{port}/readyz", timeout=5.0)
            if status == 200:
                pending = int(json.loads(body)["pending"])
                if pending >= expected:
                    break
            time.sleep(0.05)
        return pending

    def profile(self) -> None:
        """py-spy the callflow bot and the floor at the key concurrency; sort the samples."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.log("profile: py-spy is not installed; skipped")
            return
        profiles = {}
        for variant in ("callflow", "floor"):
            profile = self.profile_one(spy, variant)
            if profile is None:
                return
            profiles[variant] = profile
        self.results["profile"] = profiles
        floor = {row["layer"]: row["us_per_call"] for row in profiles["floor"]["layers"]}
        for row in profiles["callflow"]["layers"]:
            self.log(
                f"  {row['layer']:44} callflow {row['us_per_call']:6.1f} us/call "
                f"({row['pct']:4.1f} %), floor {floor.get(row['layer'], 0.0):6.1f} us/call"
            )

    def profile_one(self, spy: str, variant: str) -> dict[str, Any] | None:
        """Profile one variant during a closed-loop run; None if py-spy recorded nothing."""
        p = self.plan
        seconds = p.profile_seconds or 4.0
        self.log(f"profile: py-spy on the {variant} bot, c={p.key_concurrency}, {seconds:g} s")
        proc, port = self.start_bot(variant, label=f"profile-{variant}")
        raw = self.workdir / f"profile-{variant}.txt"
        err = b""
        try:
            self.wait_readyz(proc, port)
            if variant != "callflow":
                proc.wait_ready()
            self.loadgen(
                port, proc, mode="closed", concurrency=p.key_concurrency, warmup=0.5, duration=1.0
            )
            argv = [spy, "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw"]
            argv += ["--output", str(raw), "--duration", str(int(seconds))]
            spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)  # py-spy attaches before the measured run starts
            result = self.loadgen(
                port,
                proc,
                mode="closed",
                concurrency=p.key_concurrency,
                warmup=0.2,
                duration=seconds - 1.5,
            )
            _, err = spy_proc.communicate(timeout=seconds + 30)
        finally:
            proc.stop()
        if not raw.exists():
            self.log(f"profile: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
            return None
        summary = summarize_closed(result)
        cpu_us = summary["cpu_per_1000"]["bot"] * 1000.0  # s per 1000 calls -> us per call
        text = raw.read_text()
        profile = summarize_profile(text)
        profile["layers"] = [
            {"layer": layer, "pct": pct, "us_per_call": pct / 100.0 * cpu_us}
            for layer, pct in layer_shares(text)
        ]
        profile["throughput_while_profiled"] = summary["throughput"]
        profile["cpu_us_per_call"] = cpu_us
        shutil.copy(raw, self.out / f"profile_{variant}.txt")
        return profile

    # -- the whole run -----------------------------------------------------------------------

    def sustainable(self) -> float:
        """callflow's decisions/s at the key concurrency (measured now if not measured yet)."""
        c = str(self.plan.key_concurrency)
        runs = self.results.get("closed", {}).get("asyncio", {}).get("callflow", {}).get(c)
        if runs:
            return float(statistics.median(r["throughput"] for r in runs))
        proc, port = self.start_bot("callflow", label="sustainable")
        try:
            self.wait_readyz(proc, port)
            result = self.loadgen(
                port,
                proc,
                mode="closed",
                concurrency=self.plan.key_concurrency,
                warmup=self.plan.warmup,
                duration=self.plan.duration,
            )
        finally:
            proc.stop()
        return float(summarize_closed(result)["throughput"])

    def run(self, only: Sequence[str] = ()) -> dict[str, Any]:
        """Every scenario in turn (or those in ``only``); returns the results."""
        p = self.plan
        started = time.monotonic()
        self.results["meta"] = machine_info(p, self.variants)
        self.start_stub()
        self.log(f"stub on :{self.stub_port}; variants: {', '.join(self.variants)}")
        if not only or "closed" in only:
            self.log("cold start and closed loop (asyncio)")
            self.closed_runs("asyncio", p.concurrencies, p.rounds)
            if p.uvloop_pass and have_uvloop():
                self.closed_runs("uvloop", (1, p.key_concurrency), 1)
        if not only or "overload" in only:
            self.overload()
        if not only or "blocked" in only:
            self.blocked()
        if not only or "memory" in only:
            self.memory()
        self.results["targets"] = evaluate_targets(self.results, p)
        missed = [t for t in self.results["targets"] if not t["ok"]]
        if "profile" in only or (not only and missed and p.profile_seconds > 0):
            self.profile()
        self.results["meta"]["seconds"] = time.monotonic() - started
        return self.results

    def close(self) -> None:
        """Stop every process still running."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5.0)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pick_metrics(text: bytes) -> dict[str, float]:
    """The engine counters worth reporting, from the bot's /metrics."""
    wanted = ("callflow_", "")
    picked: dict[str, float] = {}
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("#") or not line.startswith(wanted[0]):
            continue
        name, _, value = line.rpartition(" ")
        if any(word in name for word in ("decision", "pending", "admission", "late", "default")):
            with contextlib.suppress(ValueError):
                picked[name] = float(value)
    return picked


def summarize_profile(raw: str) -> dict[str, Any]:
    """Self and inclusive shares of busy samples per function from py-spy's stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for stack, count in busy_stacks(raw):
        total += count
        frames = [_frame_name(f) for f in stack]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def rows(table: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:40]
        return [{"frame": k, "pct": 100.0 * v / max(total, 1)} for k, v in ranked]

    return {"samples": total, "self": rows(own), "inclusive": rows(incl)}


# Rules for sorting a sample into a layer: the frame nearest the leaf that matches one wins
# (standard-library frames -- asyncio, selectors, json, uuid -- are skipped, so their cost
# goes to whoever called them; a sample with nothing but such frames is the event loop's).
LAYER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (structlog call.decided and others)", ("structlog/", "callflow/_log.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "callflow/metrics.py")),
    ("inbound JWT check", ("callflow/webhook/_jwt.py", "jwt/", "cryptography/")),
    ("parse notification", ("callflow/_parse.py", "callflow/events.py")),
    (
        "aiohttp client: decision POST",
        ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tracing.py", "yarl/"),
    ),
    ("callflow Graph client", ("callflow/graph/",)),
    (
        "callflow engine (dispatch, deadline, routing)",
        ("callflow/dispatch.py", "callflow/deadline.py", "callflow/routing.py"),
    ),
    ("callflow decisions", ("callflow/decisions.py",)),
    ("callflow webhook handler", ("callflow/webhook/_app.py", "callflow/bot.py")),
    (
        "aiohttp server: notification in, 202 out",
        ("aiohttp/web", "aiohttp/http_parser.py", "aiohttp/_http_parser"),
    ),
    ("bot's own code (floor / sdk)", ("benchmarks/",)),
    ("anyio", ("anyio/",)),
)


IDLE_LEAVES = frozenset(
    {"EpollSelector.select", "Condition.wait", "Queue.get", "Event.wait", "Thread.join"}
)
"""Leaf frames of threads that wait (py-spy does not always tell them from running ones)."""


_LOOP_FRAMES = ("Handle._run ", "BaseEventLoop._run_once ")


def busy_stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of every py-spy stack that is not a thread waiting."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].partition(" (")[0] in IDLE_LEAVES:
            continue
        yield frames, int(count_text)


def layer_shares(raw: str) -> list[tuple[str, float]]:
    """Percent of busy py-spy samples per layer (see :data:`LAYER_RULES`), largest first.

    Only the frames under the event loop's current callback (after the last ``Handle._run``,
    or ``_run_once`` for the loop's own work) are looked at, so the program's ``main`` and
    the loop's frames do not swallow what runs under them.
    """
    counts: dict[str, int] = {}
    total = 0
    for frames, count in busy_stacks(raw):
        total += count
        cuts = [i for i, f in enumerate(frames) if f.startswith(_LOOP_FRAMES)]
        candidates = frames[cuts[-1] + 1 :] if cuts else frames
        layer = "event loop, sockets, other"
        for frame in reversed(candidates):
            where = frame.partition(" (")[2]
            found = next(
                (name for name, marks in LAYER_RULES if any(m in where for m in marks)), None
            )
            if found is not None:
                layer = found
                break
        counts[layer] = counts.get(layer, 0) + count
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [(layer, 100.0 * n / max(total, 1)) for layer, n in ranked]


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)`` with a short package path."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def _git(*args: str) -> str:
    """What ``git ARGS`` prints in the project (empty when git is missing or fails)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    return ""


def machine_info(plan: Plan, variants: Sequence[str]) -> dict[str, Any]:
    """nproc, CPU model, Python, package versions, date, commit, command."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "dirty": bool(dirty),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "commit": commit,
        "quick": plan.quick,
        "variants": list(variants),
        "support_loop": "uvloop" if have_uvloop() else "asyncio",
        "command": "python -m benchmarks.harness" + (" --quick" if plan.quick else ""),
    }


# --- targets and report ----------------------------------------------------------------------


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
        median_of((a,), *path) / median_of((b,), *path) for a, b in zip(runs, others, strict=False)
    ]
    return statistics.median(ratios) if ratios else math.nan


def key_runs(
    results: dict[str, Any], variant: str, c: int, loop: str = "asyncio"
) -> list[dict[str, Any]]:
    """The closed-loop runs of ``variant`` at concurrency ``c``."""
    return list(results.get("closed", {}).get(loop, {}).get(variant, {}).get(str(c), []))


def evaluate_targets(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Each target: what was measured and whether it was met."""
    c = plan.key_concurrency
    cf, fl, sdk = (key_runs(results, v, c) for v in ("callflow", "floor", "sdk"))
    targets: list[dict[str, Any]] = []

    def add(group: str, name: str, goal: str, value: float, ok: bool, shown: str) -> None:
        targets.append(
            {"group": group, "name": name, "goal": goal, "value": value, "ok": ok, "shown": shown}
        )

    if cf and fl:
        r50 = paired_ratio(cf, fl, "latency", "p50")
        r99 = paired_ratio(cf, fl, "latency", "p99")
        rtp = paired_ratio(cf, fl, "throughput")
        add("speed", f"p50 callflow / floor, c={c}", "<= 1.3", r50, r50 <= 1.3, f"{r50:.2f}x")
        add("speed", f"p99 callflow / floor, c={c}", "<= 1.5", r99, r99 <= 1.5, f"{r99:.2f}x")
        add(
            "speed", f"throughput callflow / floor, c={c}", ">= 0.7", rtp, rtp >= 0.7, f"{rtp:.2f}x"
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
    over = results.get("overload")
    if over:
        m = over.get("missed_accepted", over["missed"])
        add(
            "guarantee",
            "overload: missed deadlines among accepted (202) calls",
            "0",
            m,
            m == 0,
            str(m),
        )
        add(
            "guarantee",
            "overload: offered calls not decided in time (refused with 503 included)",
            "0",
            over["missed"],
            over["missed"] == 0,
            f"{over['missed']} ({over.get('refused', 0)} refused)",
        )
        p99 = over["ack"]["p99"]
        add("guarantee", "overload: webhook 202 p99", "< 50 ms", p99, p99 < 50, f"{p99:.1f} ms")
    blocked = results.get("blocked")
    if blocked:
        m = blocked["accepted_before_block"]["missed"]
        add(
            "guarantee",
            "blocked loop: missed deadlines (calls accepted before the block)",
            "0",
            m,
            m == 0,
            str(m),
        )
    memory = results.get("memory")
    if memory:
        b = memory["bytes_per_pending"]
        add("memory", "bytes per pending call", "<= 4096", b, b <= 4096, f"{b:.0f} B")
    return targets


# --- entry point -----------------------------------------------------------------------------


def _strip_latencies(value: Any) -> Any:
    """A copy of the results without the per-call latency lists (kept out of the JSON)."""
    if isinstance(value, dict):
        return {k: _strip_latencies(v) for k, v in value.items() if k != "latencies"}
    if isinstance(value, list):
        return [_strip_latencies(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and write the report; returns the exit code."""
    from benchmarks.report import write_report

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--out", default=None, help="where to write the report and raw figures")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run: closed, overload, blocked, memory, profile",
    )
    args = parser.parse_args(argv)
    plan = Plan.short() if args.quick else Plan.full()
    if args.out:
        out = Path(args.out)
        md, png = out / "RESULTS.md", out / "cdf.png"
    elif plan.quick or args.only:
        out = BENCH / "out" / ("quick" if plan.quick else "partial")
        md, png = out / "RESULTS.md", out / "cdf.png"
    else:
        out = BENCH / "out"
        md, png = BENCH / "RESULTS.md", BENCH / "cdf.png"
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)

    work = Path(tempfile.mkdtemp(prefix="callflow-bench-"))
    harness = Harness(plan, out, work, log)
    try:
        results = harness.run(tuple(filter(None, args.only.split(","))))
    finally:
        harness.close()
        if args.keep:
            log(f"process logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    write_report(results, plan, md, png)
    (out / "results.json").write_text(json.dumps(_strip_latencies(results), indent=1))
    log(f"report: {md}")
    for target in results.get("targets", []):
        log(
            f"  {'met ' if target['ok'] else 'MISS'}  {target['name']}: {target['shown']} "
            f"(goal {target['goal']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
