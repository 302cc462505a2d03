"""The worker as it runs in production: ``python -m callflow run`` in a subprocess, FakeGraph here.

Each test starts the real command with the settings of an in-process FakeGraph as
``CALLFLOW_*`` variables, waits for the worker's ``bot.ready`` JSON log line (it carries the
webhook URL of the free port the worker bound), places calls, reads ``/readyz`` and
``/metrics`` (on the metrics listener its ``metrics.listening`` line names), and stops the
worker with signals, as an orchestrator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from prometheus_client.parser import text_string_to_metric_families

from callflow import Bot, IncomingCall, Reject, RejectReason
from callflow.testing import CALLBACK_URL, CallHandle, FakeGraph, SigningKey

pytestmark = pytest.mark.slow  # worker processes

ROOT = Path(__file__).resolve().parent.parent
GUARD = 15.0  # no single wait in these tests should come near this
SECRET = "s3cret-0f-the-front-desk-7c1e"

DANA = "6d5c4b3a-1111-4222-8333-944455556666"  # on front_desk's default allow-list
STRANGER = "0a0a0a0a-3333-4333-8333-000000000333"
OTHER_TENANT = "99999999-0000-4000-8000-000000000999"
ON_CALL = "0e0e0e0e-5555-4555-8555-000000000555"


# --- the worker subprocess ------------------------------------------------------------------


class Worker:
    """A running ``callflow run`` process whose log lines (JSON, on stderr) a test can await."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._changed = anyio.Event()
        self._lock = threading.Lock()

    @property
    def output(self) -> str:
        """Everything the worker wrote so far."""
        return "\n".join(self.lines)

    async def read(self) -> None:
        """Collect the worker's output line by line until it closes its end of the pipe."""
        assert self.process.stdout is not None
        pending = b""
        try:
            async for chunk in self.process.stdout:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._add(raw.decode("utf-8", "replace"))
        finally:
            if pending:
                self._add(pending.decode("utf-8", "replace"))
            self.ended = True
            self._touch()

    def _add(self, line: str) -> None:
        self.lines.append(line)
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                self.events.append(event)
        self._touch()

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The log events named ``event`` whose fields include ``fields``."""
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Return the first ``count`` log events named ``event`` with ``fields`` once logged."""
        with anyio.fail_after(GUARD):
            while len(found := self.find(event, **fields)) < count:
                if self.ended:
                    raise AssertionError(
                        f"the worker ended without logging {count} {event!r} {fields}; "
                        f"its output was:\n{self.output}"
                    )
                await self._changed.wait()
        return found[:count]

    async def decided(self, call: CallHandle) -> dict[str, Any]:
        """The worker's ``call.decided`` line for ``call``."""
        (line,) = await self.wait_for("call.decided", call_id=call.call_id)
        return line

    def signal(self, signum: signal.Signals) -> float:
        """Send ``signum`` to the worker; return the monotonic time it was sent."""
        self.process.send_signal(signum)
        return time.monotonic()

    async def exit_code(self, within: float = GUARD) -> int:
        """Wait (at most ``within`` seconds) for the worker to exit; return its exit code."""
        with anyio.move_on_after(within):
            return await self.process.wait()
        raise AssertionError(
            f"the worker did not exit within {within} s; its output so far:\n{self.output[-6000:]}"
        )


@contextlib.asynccontextmanager
async def run_worker(target: str, env: Mapping[str, str], *args: str) -> AsyncIterator[Worker]:
    """Start ``python -m callflow run TARGET`` in the repository root; kill it if still running."""
    command = [sys.executable, "-m", "callflow", "run", target, *args]
    async with (
        await anyio.open_process(
            command,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as process,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(process)
        tg.start_soon(worker.read)
        try:
            yield worker
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()


def worker_env(
    fake: FakeGraph, extra: Mapping[str, str] | None = None, **settings: Any
) -> dict[str, str]:
    """This environment without CALLFLOW_* variables, plus the fake's settings and ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CALLFLOW_")}
    env.update(fake.environ(**{"log_format": "json", **settings}))
    env.update(extra or {})
    return env


def base_url(ready: Mapping[str, Any]) -> str:
    """The worker's base URL, from the webhook URL its ``bot.ready`` line carries."""
    url = str(ready["url"])
    assert url.endswith("/api/calls"), url
    return url.removesuffix("/api/calls")


async def metrics_url(worker: Worker) -> str:
    """Where the worker serves /metrics, from its ``metrics.listening`` line (a listener of
    its own, not the webhook's)."""
    (listening,) = await worker.wait_for("metrics.listening")
    url = str(listening["url"])
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    return url


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse a Prometheus exposition into ``{(sample name, sorted labels): value}``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Mapping[tuple[str, Any], float], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """A FakeGraph with a 4 s platform timeout and a recognisable app secret."""
    async with FakeGraph(
        signing_key=callflow_signing_key,
        platform_timeout=4.0,
        recording_timeout=4.0,
        app_secret=SECRET,
    ) as graph:
        yield graph


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the worker's health, readiness and metrics endpoints."""
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """GET ``url``; return the status and the body text."""
    async with http.get(url) as response:
        return response.status, await response.text()


def stranger(n: int) -> dict[str, str]:
    """A Teams user of the fake's own tenant who is not on the allow-list."""
    return {"kind": "user", "id": f"{STRANGER[:-3]}{n:03d}", "display_name": f"Stranger {n}"}


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_worker_decides_calls_and_its_metrics_count_them(
    fake: FakeGraph, http: aiohttp.ClientSession
) -> None:
    """`callflow run examples.front_desk:bot` decides each kind of call and /metrics agrees."""
    env = worker_env(
        fake, {"CALLFLOW_FRONT_DESK_ON_CALL": ON_CALL}, safety_margin=1.5, drain_timeout=2.0
    )
    async with run_worker("examples.front_desk:bot", env) as worker:
        (ready,) = await worker.wait_for("bot.ready")
        url, webhook = base_url(ready), ready["url"]
        assert await get(http, url + "/healthz") == (200, '{"status": "ok"}')
        status, body = await get(http, url + "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready", "pending": 0})

        dana = {"kind": "user", "id": DANA, "display_name": "Dana"}
        foreign = {"kind": "user", "id": STRANGER, "tenant_id": OTHER_TENANT}
        calls = {
            "dana": await fake.place_call(webhook, caller=dana, duplicate=2),
            "foreign": await fake.place_call(webhook, caller=foreign),
            "phone": await fake.place_call(webhook, kind="phone"),
            "meeting": await fake.place_call(webhook, kind="group_meeting"),
            "channel": await fake.place_call(webhook, kind="channel_meeting"),
            "encrypted": await fake.place_call(webhook, kind="encrypted"),
            "stranger": await fake.place_call(webhook, caller=stranger(1)),
        }
        forged = await fake.place_call(webhook, token="not-a-jwt")
        assert forged.webhook_status == 401
        expected = {
            "dana": ("answer", None, "answer_colleagues"),
            "foreign": ("reject", "forbidden", "forbid_other_tenants"),
            "phone": ("redirect", None, "route_phone_callers"),
            "meeting": ("answer", None, "join_trusted_meetings"),
            "channel": ("reject", "forbidden", "join_trusted_meetings"),
            "encrypted": ("reject", "busy", "default"),
            "stranger": ("reject", "busy", "default"),
        }
        for name, call in calls.items():
            line = await worker.decided(call)
            request = await call.decision(timeout=GUARD)
            kind, reason, by = expected[name]
            assert (request.op, line["decision"], line["reason"], line["decided_by"]) == (
                kind,
                kind,
                reason,
                by,
            ), name
            assert line["attempts"] == 1
            assert 0 < line["latency_ms"] < 1000
            assert len(call.decisions) == 1, name
            if reason is not None:
                assert request.body == {"reason": reason, "callbackUri": CALLBACK_URL}
        phone = calls["phone"].decisions[0].body
        assert phone["targets"][0]["identity"]["user"]["id"] == ON_CALL
        assert fake.requests_for(forged.call_id) == ()

        assert (await get(http, url + "/metrics"))[0] == 404  # not on the webhook's port
        status, text = await get(http, await metrics_url(worker))
        assert status == 200
        samples = metric_samples(text)
        for kind, reason, by in expected.values():
            count = sum(1 for e in expected.values() if e == (kind, reason, by))
            labels = {"kind": kind, "reason": reason or "", "decided_by": by}
            assert sample(samples, "callflow_decisions_total", **labels) == count, labels
        assert sum(v for (n, _), v in samples.items() if n == "callflow_decisions_total") == 7
        latency = "callflow_decision_latency_seconds_count"
        assert sample(samples, latency, decided_by="default") == 2
        assert sample(samples, latency, decided_by="join_trusted_meetings") == 2
        assert sample(samples, "callflow_duplicate_notifications_total") == 2
        assert sample(samples, "callflow_default_decisions_total") == 0
        assert sample(samples, "callflow_late_decisions_total") == 0
        assert sample(samples, "callflow_pending_calls") == 0
        assert sample(samples, "callflow_inbound_auth_failures_total", reason="malformed") == 1
        assert sample(samples, "callflow_graph_requests_total", op="answer", status="202") == 2
        assert sample(samples, "callflow_graph_requests_total", op="reject", status="202") == 4
        assert sample(samples, "callflow_graph_requests_total", op="redirect", status="202") == 1
        assert sample(samples, "callflow_graph_retries_total", op="answer") == 0
        assert sample(samples, "callflow_token_refresh_failures_total") == 0

        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert worker.find("bot.stopping", signal="SIGTERM", pending=0)
    assert worker.find("bot.stopped")
    assert len(worker.find("call.decided")) == 7
    assert fake.tokens.issued
    for secret in (SECRET, *fake.tokens.issued, "not-a-jwt"):
        assert secret not in worker.output
    assert not any(call.timed_out for call in calls.values())


@pytest.mark.anyio
async def test_sigterm_turns_the_worker_unready_and_lets_pending_calls_decide(
    callflow_signing_key: SigningKey, http: aiohttp.ClientSession
) -> None:
    """On SIGTERM /readyz turns 503, pending handlers still decide, new calls get the default."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=6.0, recording_timeout=6.0
    ) as fake:
        env = worker_env(
            fake,
            {"CALLFLOW_FRONT_DESK_DIRECTORY_DELAY": "2.0"},  # a lookup may take up to 4 s
            safety_margin=1.5,
            drain_timeout=10.0,
        )
        async with run_worker("examples.front_desk:bot", env) as worker:
            (ready,) = await worker.wait_for("bot.ready")
            url, webhook = base_url(ready), ready["url"]
            pending = [await fake.place_call(webhook, caller=stranger(n)) for n in range(5)]
            status, body = await get(http, url + "/readyz")
            assert (status, json.loads(body)) == (200, {"status": "ready", "pending": 5})
            samples = metric_samples((await get(http, await metrics_url(worker)))[1])
            assert sample(samples, "callflow_pending_calls") == 5

            stopped_at = worker.signal(signal.SIGTERM)
            await worker.wait_for("bot.stopping", signal="SIGTERM", pending=5)
            assert (await get(http, url + "/readyz"))[0] == 503
            assert (await get(http, url + "/healthz"))[0] == 200
            late = await fake.place_call(webhook, caller=stranger(9))
            assert (await late.decision(timeout=GUARD)).body["reason"] == "busy"
            assert all(call.decisions == () for call in pending)  # the late call did not wait
            assert await worker.exit_code() == 0

    assert (await worker.decided(late))["decided_by"] == "shutdown"
    for call in pending:
        (request,) = call.decisions
        assert request.op == "answer"
        assert request.accepted
        assert request.at > stopped_at  # decided during the drain, not cut off by it
        assert (await worker.decided(call))["decided_by"] == "look_up_colleagues"
        assert not call.timed_out
    assert worker.find("bot.stopped")


@pytest.mark.anyio
async def test_a_second_signal_stops_at_once_and_still_sends_the_defaults(
    callflow_signing_key: SigningKey,
) -> None:
    """SIGINT during the drain ends it now: each pending call gets one default, exit code 0."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=10.0, recording_timeout=10.0
    ) as fake:
        env = worker_env(
            fake,
            {"CALLFLOW_FRONT_DESK_DIRECTORY_DELAY": "60"},  # gives up 7.5 s after each call
            safety_margin=2.0,
            drain_timeout=30.0,
        )
        async with run_worker("examples.front_desk:bot", env, "--port", "0") as worker:
            (ready,) = await worker.wait_for("bot.ready")
            pending = [await fake.place_call(ready["url"], caller=stranger(n)) for n in range(5)]
            worker.signal(signal.SIGTERM)
            await worker.wait_for("bot.stopping", pending=5)
            second = worker.signal(signal.SIGINT)
            assert await worker.exit_code(within=GUARD) == 0
            exited = time.monotonic()
    assert worker.find("bot.stopping_now", signal="SIGINT", pending=5)
    assert exited - second < 3.0  # not the 7.5 s the handlers would have taken
    for call in pending:
        (request,) = call.decisions
        assert (request.op, request.status) == ("reject", 202)
        assert request.body == {"reason": "busy", "callbackUri": CALLBACK_URL}
        assert request.at < call.placed_at + 8.0 - 2.0
        assert (await worker.decided(call))["decided_by"] == "default"


def make_bot() -> Bot:
    """A factory for ``callflow run tests.test_worker_e2e:make_bot --factory``."""
    bot = Bot(name="made-by-factory")

    @bot.incoming_call
    async def made_busy(call: IncomingCall) -> Reject:
        return Reject(RejectReason.BUSY)

    return bot


@pytest.mark.anyio
async def test_the_worker_serves_the_bot_a_factory_makes(fake: FakeGraph) -> None:
    """`callflow run module:factory --factory` serves the Bot the factory returns."""
    env = worker_env(fake, safety_margin=1.5, drain_timeout=2.0)
    async with run_worker("tests.test_worker_e2e:make_bot", env, "--factory") as worker:
        (ready,) = await worker.wait_for("bot.ready")
        call = await fake.place_call(ready["url"], caller=stranger(1))
        assert (await worker.decided(call))["decided_by"] == "made_busy"
        assert (await call.decision(timeout=GUARD)).body["reason"] == "busy"
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0


@pytest.mark.anyio
async def test_the_drain_lasts_at_most_drain_timeout(callflow_signing_key: SigningKey) -> None:
    """With handlers slower than DRAIN_TIMEOUT, the defaults go out once it has passed."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=10.0, recording_timeout=10.0
    ) as fake:
        env = worker_env(
            fake,
            {"CALLFLOW_FRONT_DESK_DIRECTORY_DELAY": "60"},
            safety_margin=2.0,
            drain_timeout=1.0,
        )
        async with run_worker("examples.front_desk:bot", env) as worker:
            (ready,) = await worker.wait_for("bot.ready")
            pending = [await fake.place_call(ready["url"], caller=stranger(n)) for n in range(5)]
            stopped_at = worker.signal(signal.SIGTERM)
            assert await worker.exit_code() == 0
            exited = time.monotonic()
    for call in pending:
        (request,) = call.decisions
        assert request.body == {"reason": "busy", "callbackUri": CALLBACK_URL}
        # Sent once the drain's second was over, and not much later: the drain is what
        # bounds them (the process's own exit after that is teardown, timed loosely).
        assert stopped_at + 1.0 - 0.05 <= request.at < stopped_at + 1.0 + 0.5
    assert exited - stopped_at < 1.0 + 3.0


@pytest.mark.anyio
async def test_the_worker_masks_personal_data_unless_log_pii_is_on(fake: FakeGraph) -> None:
    """Names and phone numbers a handler logs are masked, and shown with CALLFLOW_LOG_PII=on."""
    outputs = {}
    for pii in (False, True):
        env = worker_env(fake, safety_margin=1.5, log_pii=pii)
        async with run_worker("tests.bots.chatty:bot", env) as worker:
            (ready,) = await worker.wait_for("bot.ready")
            user = await fake.place_call(
                ready["url"], caller={"kind": "user", "id": DANA, "display_name": "Dana Whitfield"}
            )
            phone = await fake.place_call(ready["url"], kind="phone")
            for call in (user, phone):
                await worker.decided(call)
            worker.signal(signal.SIGTERM)
            assert await worker.exit_code() == 0
        outputs[pii] = worker
    masked, shown = outputs[False], outputs[True]
    assert {e.get("display_name") for e in masked.find("chatty.caller")} == {"D***", None}
    assert {e.get("phone") for e in masked.find("chatty.caller")} == {None, "+1425*****23"}
    assert "Dana Whitfield" not in masked.output
    assert "+14255550123" not in masked.output
    assert {e.get("display_name") for e in shown.find("chatty.caller")} == {
        "Dana Whitfield",
        None,
    }
    assert {e.get("phone") for e in shown.find("chatty.caller")} == {None, "+14255550123"}
