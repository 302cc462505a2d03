"""Prometheus metrics of one bot, in a registry of its own (``GET /metrics``).

Counters the engine already keeps (duplicates, stale notifications, late decisions, ...) are
read at scrape time by a collector, so the decision path pays nothing for them; the
per-decision counters and the latency histogram are updated once per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from callflow.engine.core import Engine
    from callflow.engine.deadline import DecisionSlot
    from callflow.fleet.stats import FleetStats
    from callflow.webhook.server import ServerStats

__all__ = ["Metrics"]


_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
)  # fmt: skip


class Metrics:
    """The metrics of one running bot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "callflow_decisions",
            "Decisions sent, by kind, reject reason and who decided",
            ("kind", "reason", "decided_by"),
            registry=r,
        )
        self.decision_failures = Counter(
            "callflow_decision_failures",
            "Decisions Graph did not accept (after retries), by kind",
            ("kind",),
            registry=r,
        )
        self.latency = Histogram(
            "callflow_decision_latency_seconds",
            "Notification received -> decision sent and acknowledged by Graph",
            ("decided_by",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "callflow_inbound_auth_failures",
            "Notifications refused by inbound authentication, by reason",
            ("reason",),
            registry=r,
        )
        self.rejected_input = Counter(
            "callflow_rejected_notifications",
            "Notifications refused before dispatch (4xx, or 503 when overloaded), by error code",
            ("code",),
            registry=r,
        )
        self.graph_requests = Counter(
            "callflow_graph_requests",
            "Requests to Graph, by operation and HTTP status (error: no response)",
            ("op", "status"),
            registry=r,
        )
        self.graph_retries = Counter(
            "callflow_graph_retries", "Retried requests to Graph, by operation", ("op",), registry=r
        )
        self.operations = Counter(
            "callflow_call_operations",
            "Call-control operations (play, record, transfer, ...) by kind and outcome",
            ("kind", "outcome"),
            registry=r,
        )
        self.operation_latency = Histogram(
            "callflow_call_operation_seconds",
            "Call-control operation started -> its result known, by kind",
            ("kind",),
            buckets=(*_LATENCY_BUCKETS, 30.0, 60.0, 120.0),
            registry=r,
        )
        # The labelled series each hook updates, looked up once per distinct label set:
        # prometheus_client's labels() checks, converts and locks on every call.
        self._decided: dict[tuple[str, object, str | None], tuple[Any, Any]] = {}
        self._requests: dict[tuple[str, int | None], Any] = {}
        self._engine: Engine | None = None
        self._token_failures: Callable[[], int] | None = None
        self._fleet: FleetStats | None = None
        self._background: dict[str, Callable[[], int]] = {}
        self._server: ServerStats | None = None
        self.suppressed_logs = 0
        """Log lines left out by rate limits (``webhook.rejected``...), counted here."""
        r.register(_EngineCollector(self))

    def attach(self, engine: Engine, token_failures: Callable[[], int] | None = None) -> None:
        """Read the engine's counters (and the token provider's failures) at scrape time."""
        self._engine = engine
        self._token_failures = token_failures

    def attach_background(self, keeper: Any = None, auth: Any = None) -> None:
        """Count the failures of background work at scrape time: the keeper's keepAlive
        attempts (``keeper.failures``) and the inbound key refreshes (``auth.refresh_failures``).
        """
        if keeper is not None:
            self._background["keepalive"] = lambda: int(keeper.failures)
        if auth is not None:
            self._background["keys_refresh"] = lambda: int(auth.refresh_failures)

    def attach_server(self, stats: ServerStats) -> None:
        """Read the webhook server's connection counters at scrape time."""
        self._server = stats

    def on_suppressed_log(self, count: int = 1) -> None:
        """Count log lines a rate limit left out."""
        self.suppressed_logs += count

    def attach_fleet(self, stats: FleetStats) -> None:
        """Read the fleet-mode counters (store failures, take-overs, ...) at scrape time."""
        self._fleet = stats

    # hooks ----------------------------------------------------------------------------------

    def on_decided(self, slot: DecisionSlot, error: BaseException | None) -> None:
        """Count one decision (called by the engine, from either thread)."""
        decision = slot.decision
        assert decision is not None
        kind = decision.kind
        if error is not None:
            self.decision_failures.labels(kind).inc()
            return
        reason = getattr(decision, "reason", "")
        key = (kind, reason, slot.decided_by)
        series = self._decided.get(key)
        if series is None:
            who = _who(slot.decided_by)
            series = (self.decisions.labels(kind, str(reason), who), self.latency.labels(who))
            self._decided[key] = series
        series[0].inc()
        if slot.decided_at is not None:
            series[1].observe(time.monotonic() - slot.received)

    def on_graph_request(self, op: str, status: int | None, attempt: int) -> None:
        """Count one request to Graph (the Graph client's hook)."""
        key = (op, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self.graph_requests.labels(op, "error" if status is None else str(status))
            self._requests[key] = counter
        counter.inc()
        if attempt > 1:
            self.graph_retries.labels(op).inc()

    def on_operation(self, kind: str, outcome: str, seconds: float) -> None:
        """Count one finished call-control operation (the CallControl hook)."""
        self.operations.labels(kind, outcome).inc()
        self.operation_latency.labels(kind).observe(seconds)

    def on_auth_failure(self, reason: str) -> None:
        """Count one refused token."""
        self.auth_failures.labels(reason).inc()

    def on_rejected_input(self, code: str) -> None:
        """Count one notification refused with a 4xx."""
        self.rejected_input.labels(code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _who(decided_by: str | None) -> str:
    """The ``decided_by`` label: a handler's name, ``default``, ``admission`` or ``shutdown``."""
    return decided_by or "unknown"


class _EngineCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        engine = self._metrics._engine
        if engine is None:
            return
        stats = engine.stats
        yield GaugeMetricFamily(
            "callflow_pending_calls", "Incoming calls not decided yet", value=engine.pending
        )
        yield GaugeMetricFamily(
            "callflow_known_calls",
            "Calls the worker knows (pending, held or created, bound to their tenant)",
            value=len(engine.calls),
        )
        yield GaugeMetricFamily(
            "callflow_send_backlog",
            "Decisions waiting to be sent; at MAX_SEND_BACKLOG new calls get 503",
            value=engine.send_backlog,
        )
        for name, doc, value in (
            ("callflow_default_decisions", "Calls decided by the default decision at the deadline",
             engine.scheduler.fired),
            ("callflow_late_decisions", "Handler decisions that came after the call was decided",
             stats.late_decisions),
            ("callflow_duplicate_notifications", "Redelivered notifications dropped",
             stats.duplicates),
            ("callflow_stale_notifications", "Out-of-order state updates dropped", stats.stale),
            ("callflow_handler_errors", "Exceptions raised by handlers and observers",
             stats.handler_errors),
            ("callflow_admission_defaults", "Calls decided at once at intake: MAX_PENDING "
             "reached, or their deadline fell in a full wave", stats.admission_defaults),
            ("callflow_wave_defaults", "Of the admission defaults: deadline wave full "
             "(DEADLINE_SEND_RATE x SAFETY_MARGIN calls due within one margin)",
             stats.wave_defaults),
            ("callflow_calls_gone", "Calls whose caller hung up before a decision", stats.gone),
            ("callflow_unknown_call_notifications", "Notifications about a call the worker "
             "does not know (not pending, held, created or recently ended), dropped",
             stats.unknown),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        dropped = CounterMetricFamily(
            "callflow_events_dropped",
            "Observer events dropped, oldest first: their call's queue held MAX_QUEUED_PER_CALL "
            "(lane_full) or the app loop's inbox MAX_QUEUED_EVENTS (inbox_full)",
            labels=("reason",),
        )
        for reason, events in stats.dropped.items():
            dropped.add_metric((reason,), events)
        yield dropped
        background = self._metrics._background
        if background:
            family = CounterMetricFamily(
                "callflow_background_failures",
                "Failures of background work (logged and retried; the worker keeps running)",
                labels=("task",),
            )
            for task, count in sorted(background.items()):
                family.add_metric((task,), count())
            yield family
        yield CounterMetricFamily(
            "callflow_suppressed_log_lines",
            "Log lines left out by rate limits (each logged line says how many it stands for)",
            value=self._metrics.suppressed_logs,
        )
        server = self._metrics._server
        if server is not None:
            yield GaugeMetricFamily(
                "callflow_open_connections", "Open webhook connections", value=server.open
            )
            for name, doc, value in (
                ("callflow_connections_evicted", "Idle connections closed to make room for a "
                 "new one (MAX_CONNECTIONS reached)", server.evicted),
                ("callflow_connections_refused", "Connections refused with 503: "
                 "MAX_CONNECTIONS reached and every connection busy", server.refused),
            ):  # fmt: skip
                yield CounterMetricFamily(name, doc, value=value)
        failures = self._metrics._token_failures
        if failures is not None:
            yield CounterMetricFamily(
                "callflow_token_refresh_failures", "Failed app-token acquisitions", value=failures()
            )
        fleet = self._metrics._fleet
        if fleet is not None:
            for name, doc, value in (
                ("callflow_store_failures", "Store (Redis) operations that failed or were skipped "
                 "while it was unavailable; the worker decided with its local slot",
                 fleet.store_failures),
                ("callflow_calls_taken_over", "Calls of dead workers this worker decided",
                 fleet.taken_over),
                ("callflow_notifications_forwarded",
                 "Notifications forwarded to the worker that owns their call", fleet.forwarded),
                ("callflow_decisions_dropped_elsewhere",
                 "Decisions not sent because another worker sent the call's decision",
                 fleet.dropped_elsewhere),
                ("callflow_shared_duplicate_notifications",
                 "State updates and terminations another worker had already taken",
                 fleet.shared_duplicates),
                ("callflow_fleet_forged_values", "Values found in Redis without a valid "
                 "CALLFLOW_FLEET_SECRET signature (ignored or replaced)", fleet.forged),
            ):  # fmt: skip
                yield CounterMetricFamily(name, doc, value=value)
            adopted = CounterMetricFamily(
                "callflow_calls_adopted",
                "Answered calls this worker adopted from another worker of the fleet, by why "
                "(owner_lost: its heartbeat lapsed; handed_off: it stopped gracefully)",
                labels=["reason"],
            )
            adopted.add_metric(["owner_lost"], fleet.adopted_lost)
            adopted.add_metric(["handed_off"], fleet.adopted_handed_off)
            yield adopted
            yield GaugeMetricFamily(
                "callflow_held_calls",
                "Answered calls this worker holds (recorded in the fleet's store)",
                value=fleet.held_calls,
            )
