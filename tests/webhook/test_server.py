"""The webhook server's limits, attacked over real loopback connections: slowloris headers,
slow bodies, thousands of idle connections, a full house of busy ones; and /metrics on a port
of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import anyio
import anyio.abc
import pytest
import structlog.testing
from aiohttp import web
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client.parser import text_string_to_metric_families

from callflow import Answer, Bot, ConfigError, IncomingCall, Settings
from callflow.bot import RunningBot
from callflow.testing import FakeGraph, SigningKey
from callflow.webhook.server import (
    SHUTDOWN_TIMEOUT,
    ConnectionGuard,
    ServerLimits,
    start_server,
)
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

GUARD = 20.0
FLEET_SECRET = "server-test-fleet-secret-0123456789abcdef"


def answering_bot() -> Bot:
    """A bot that answers every call."""
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    return bot


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server for a bot in fleet mode."""
    yield from redis_server()


@pytest.fixture
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """A FakeGraph for the test."""
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        yield fake


def metric(running: RunningBot, name: str) -> float:
    """The value of one unlabelled sample of the bot's metrics."""
    for family in text_string_to_metric_families(running.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no sample {name}")


async def connect(running: RunningBot) -> anyio.abc.SocketStream:
    """A raw TCP connection to the bot's webhook."""
    return await anyio.connect_tcp(running.host, running.port)


async def read_until_closed(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return data


async def read_reply(stream: BufferedByteReceiveStream) -> tuple[bytes, bytes]:
    """The status line and body of one reply (with a Content-Length), leaving the connection
    open."""
    head = await stream.receive_until(b"\r\n\r\n", 65536)
    status, *fields = head.split(b"\r\n")
    length = next(
        int(value)
        for name, _, value in (field.partition(b":") for field in fields)
        if name.strip().lower() == b"content-length"
    )
    return status, await stream.receive_exactly(length)


def request_head(fake: FakeGraph, running: RunningBot, length: int | None) -> bytes:
    """The head of a notification POST with a valid token (and a Content-Length, or chunked)."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {running.bot.settings.webhook_path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {fake.sign()}\r\n{framing}\r\n\r\n"
    ).encode()


async def test_a_slowloris_client_is_cut_off_while_real_calls_go_through(
    fake: FakeGraph,
) -> None:
    """A client sending its request head a byte every 50 ms is disconnected once
    HTTP_KEEPALIVE_TIMEOUT has passed without a whole request, and calls placed meanwhile
    are answered."""
    async with fake.serve(answering_bot(), http_keepalive_timeout=0.5) as running:
        stream = await connect(running)
        head = request_head(fake, running, 10)
        started = time.monotonic()
        closed_after: list[float] = []

        async def trickle() -> None:
            try:
                for byte in head[:-4]:  # never the blank line that ends the head
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.05)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

        async def watch() -> None:
            await read_until_closed(stream)
            closed_after.append(time.monotonic() - started)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                tg.start_soon(watch)
                calls = [await fake.place_call(running.webhook_url) for _ in range(3)]
                for call in calls:
                    assert call.webhook_status == 202
                    await call.decision()
        await stream.aclose()
    assert 0.4 < closed_after[0] < 5.0, closed_after


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(
    fake: FakeGraph, chunked: bool
) -> None:
    """Headers in, then a few bytes of body and silence: after BODY_TIMEOUT the webhook
    answers 408 with a JSON error naming the setting, closes the connection and dispatches
    nothing."""
    async with fake.serve(answering_bot(), body_timeout=0.5) as running:
        stream = await connect(running)
        head = request_head(fake, running, None if chunked else 500)
        started = time.monotonic()
        partial = b'{"value": ['  # of a body announced longer (or of a 32-byte chunk)
        await stream.send(head + (b"20\r\n" + partial if chunked else partial))
        with anyio.fail_after(GUARD):
            reply = await read_until_closed(stream)
        elapsed = time.monotonic() - started
        await stream.aclose()
        assert running.engine.pending == 0
        rejected = running.metrics.render().decode()
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "body_timeout"
    assert "CALLFLOW_BODY_TIMEOUT" in body["error"]["message"]
    assert 0.4 < elapsed < 5.0
    assert 'callflow_rejected_notifications_total{code="body_timeout"} 1.0' in rejected


@pytest.mark.slow
async def test_five_thousand_idle_connections_are_bounded_and_real_calls_still_land(
    fake: FakeGraph,
) -> None:
    """5 000 connections opened and left idle: the worker holds at most MAX_CONNECTIONS of
    them (closing the longest idle for each new one), a call placed meanwhile is answered at
    once, and every idle connection is closed by HTTP_KEEPALIVE_TIMEOUT."""
    async with fake.serve(
        answering_bot(), max_connections=1000, http_keepalive_timeout=3.0
    ) as running:
        idle: list[anyio.abc.SocketStream] = []
        try:
            with anyio.fail_after(60.0):
                opened = time.monotonic()
                for _ in range(5000):
                    idle.append(await connect(running))
                placed = time.monotonic()
                # Accepted after the 5 000 (the kernel queues connections in order), so
                # they were all accepted when its reply comes.
                call = await fake.place_call(running.webhook_url)
                assert call.webhook_status == 202
                await call.decision()
                answered_in = time.monotonic() - placed
                assert metric(running, "callflow_open_connections") <= 1000
                evicted = metric(running, "callflow_connections_evicted_total")
                if placed - opened < 3.0:  # none idle long enough to time out yet
                    assert evicted >= 4000
                else:  # a slow machine: the first ones timed out while the rest were opened
                    assert evicted > 0
                for stream in idle:
                    assert await read_until_closed(stream) == b""
                all_closed_in = time.monotonic() - opened
        finally:
            for stream in idle:
                await stream.aclose()
        assert metric(running, "callflow_connections_refused_total") == 0
    assert answered_in < 5.0
    assert all_closed_in < 45.0


async def test_when_every_connection_is_busy_a_new_one_gets_503() -> None:
    """With MAX_CONNECTIONS=2 and both connections inside a request, a third gets 503 with a
    JSON error and is closed at once; once a request is done its connection is idle again
    and gives way to a new one."""
    entered = [anyio.Event(), anyio.Event()]
    release = anyio.Event()

    async def hold(request: web.Request) -> web.Response:
        entered[int(request.query["n"])].set()
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/hold", hold)
    settings = Settings(max_connections=2)
    server = await start_server(app, host="127.0.0.1", port=0, settings=settings)
    port = server.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:

            async def get(n: int) -> None:
                async with http.get(f"http://127.0.0.1:{port}/hold?n={n}") as held:
                    assert held.status == 200

            with anyio.fail_after(GUARD):
                async with anyio.create_task_group() as tg:
                    for n in (0, 1):
                        tg.start_soon(get, n)
                    for event in entered:
                        await event.wait()
                    third = await anyio.connect_tcp("127.0.0.1", port)
                    reply = await read_until_closed(third)
                    await third.aclose()
                    release.set()
                # Both connections are idle in the first client's pool now: a new client's
                # connection makes the longest idle one give way.
                async with (
                    aiohttp.ClientSession() as other,
                    other.get(f"http://127.0.0.1:{port}/hold?n=0") as again,
                ):
                    assert again.status == 200
    finally:
        await server.cleanup()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    assert server.stats.refused == 1
    assert server.stats.evicted == 1  # an idle keep-alive connection gave way to the last GET


async def test_metrics_are_served_on_a_loopback_listener_not_the_webhook_port(
    fake: FakeGraph,
) -> None:
    """/metrics (which names handlers and counts calls) is served on a listener of its own,
    on loopback even when the webhook listens on every interface; the public webhook port
    answers 404 for it and keeps the health checks."""
    with structlog.testing.capture_logs() as logs:
        async with (
            fake.serve(answering_bot(), host="0.0.0.0", metrics_port=0) as running,
            aiohttp.ClientSession() as http,
        ):
            (listening,) = [e for e in logs if e["event"] == "metrics.listening"]
            assert running.metrics_url == listening["url"]
            assert running.metrics_url is not None
            assert running.metrics_url.startswith("http://127.0.0.1:")
            async with http.get(running.metrics_url) as reply:
                assert reply.status == 200
                assert "callflow_pending_calls" in await reply.text()
            async with http.get(running.url + "/metrics") as reply:
                assert reply.status == 404
            async with http.get(running.url + "/healthz") as reply:
                assert reply.status == 200


async def test_metrics_follow_metrics_host_and_can_be_turned_off(fake: FakeGraph) -> None:
    """METRICS_HOST moves the metrics listener to another interface; METRICS_PORT=off serves
    no metrics at all (and still none on the webhook port)."""
    async with (
        fake.serve(answering_bot(), metrics_host="127.0.0.2", metrics_port=0) as running,
        aiohttp.ClientSession() as http,
    ):
        assert running.metrics_url is not None
        assert running.metrics_url.startswith("http://127.0.0.2:")
        async with http.get(running.metrics_url) as reply:
            assert reply.status == 200
    async with (
        fake.serve(answering_bot(), metrics_port=None) as running,
        aiohttp.ClientSession() as http,
    ):
        assert running.metrics_url is None
        async with http.get(running.url + "/metrics") as reply:
            assert reply.status == 404


async def test_a_metrics_port_in_use_is_a_clear_error(fake: FakeGraph) -> None:
    """A METRICS_PORT another process holds stops the start with an error naming the
    setting, not a bare OSError."""
    holder = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    try:
        port = holder.extra(anyio.abc.SocketAttribute.local_port)
        with pytest.raises(ConfigError, match=f"CALLFLOW_METRICS_PORT: .*{port}"):
            async with fake.serve(answering_bot(), metrics_port=port):
                pass  # pragma: no cover - the start fails
    finally:
        await holder.aclose()


def test_server_limits_are_settings_checked_by_name() -> None:
    """HTTP_KEEPALIVE_TIMEOUT, MAX_CONNECTIONS, BODY_TIMEOUT, METRICS_HOST and METRICS_PORT
    are read and typed; bad values are named in one ConfigError."""
    s = Settings.from_env(
        {
            "CALLFLOW_HTTP_KEEPALIVE_TIMEOUT": "20",
            "CALLFLOW_MAX_CONNECTIONS": "250",
            "CALLFLOW_BODY_TIMEOUT": "2.5",
            "CALLFLOW_METRICS_HOST": " 10.0.0.5 ",
            "CALLFLOW_METRICS_PORT": "9100",
        }
    )
    assert ServerLimits.from_settings(s) == ServerLimits(20.0, 250, 2.5)
    assert (s.metrics_host, s.metrics_port) == ("10.0.0.5", 9100)
    defaults = Settings()
    assert ServerLimits.from_settings(defaults) == ServerLimits(75.0, 1000, 5.0)
    assert (defaults.metrics_host, defaults.metrics_port) == ("127.0.0.1", 9464)
    assert Settings.from_env({"CALLFLOW_METRICS_PORT": "off"}).metrics_port is None
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "CALLFLOW_HTTP_KEEPALIVE_TIMEOUT": "0",
                "CALLFLOW_MAX_CONNECTIONS": "none",
                "CALLFLOW_BODY_TIMEOUT": "600",
                "CALLFLOW_METRICS_PORT": "70000",
            }
        )
    for name in ("HTTP_KEEPALIVE_TIMEOUT", "MAX_CONNECTIONS", "BODY_TIMEOUT", "METRICS_PORT"):
        assert f"CALLFLOW_{name}:" in str(caught.value)
    with pytest.raises(ValueError, match="at least one connection"):
        ConnectionGuard(0)


@pytest.mark.slow
async def test_stopping_does_not_wait_for_a_client_that_stalls(fake: FakeGraph) -> None:
    """A client that sent its head and part of its body, then stalls, does not hold up a stop:
    the bot stops within SHUTDOWN_TIMEOUT, not when BODY_TIMEOUT (here 30 s) or aiohttp's own
    60 s would end that request."""
    bot = answering_bot()
    stream: anyio.abc.SocketStream | None = None
    with anyio.fail_after(GUARD):
        async with fake.serve(bot, body_timeout=30.0, drain_timeout=0.0) as running:
            stream = await connect(running)
            await stream.send(request_head(fake, running, 500) + b'{"value": [')
            call = await fake.place_call(running.webhook_url)  # the stalled one is in its handler
            await call.decision()
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
    await stream.aclose()
    assert stopped_in < SHUTDOWN_TIMEOUT + 3.0


async def test_an_idle_connection_with_an_unread_request_is_not_evicted() -> None:
    """At the cap, a new connection does not close an idle one whose request the busy
    server has not read yet (that request would be lost without a reply): the new one is
    refused instead, and the waiting request is answered.

    Which the stalled loop sees first, the new connection or the waiting request, depends on
    the Python: from 3.12 aiohttp starts a request's handler eagerly, inside the read. The
    second request's handler waits until the new connection has been refused, so that the
    request is still waiting (unread, or being handled) whichever comes first."""
    import threading

    from callflow.engine.crossing import IoThread

    release = asyncio.Event()
    served = 0

    async def ok(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        if served == 2:
            await release.wait()
        return web.json_response({"ok": True})

    async def free() -> None:
        release.set()

    app = web.Application()
    app.router.add_get("/ok", ok)
    async with IoThread("test-server", uvloop=False) as io:
        server = await io.run(
            lambda: start_server(
                app, host="127.0.0.1", port=0, settings=Settings(max_connections=1)
            )
        )
        port = server.addresses[0][1]
        stalled, go = threading.Event(), threading.Event()

        async def stall() -> None:
            stalled.set()
            go.wait(10.0)  # the server's loop is busy: nothing is read meanwhile

        try:
            with anyio.fail_after(GUARD):
                async with await anyio.connect_tcp("127.0.0.1", port) as first:
                    await first.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert b"200 OK" in await first.receive()  # open, idle, kept alive
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(io.run, stall)
                        assert await anyio.to_thread.run_sync(stalled.wait, 5.0)
                        second = await anyio.connect_tcp("127.0.0.1", port)  # in the backlog
                        await first.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # unread
                        go.set()
                    async with second:
                        refused = await read_until_closed(second)
                    await io.run(free)
                    answered = await first.receive()
        finally:
            go.set()
            await io.run(free)
            await io.run(server.cleanup)
    assert refused.startswith(b"HTTP/1.1 503")
    assert b"200 OK" in answered
    assert (server.stats.evicted, server.stats.refused) == (0, 1)


async def test_forged_forwards_without_a_body_are_refused_at_once_and_hold_nothing(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """Fleet mode with MAX_CONNECTIONS=20: twenty connections each sending the head of a
    notification that claims to be forwarded by a worker of the fleet (a bogus fleet
    signature, a Content-Length or chunked, and then no body) each get 403 within 50 ms: the
    signature is checked before any body is read. A real call placed while they stay open
    gets 202."""
    options = {
        "store": redis.url,
        "instance_id": "w1",
        "fleet_secret": FLEET_SECRET,
        "max_connections": 20,
    }
    async with fake.serve(answering_bot(), **options) as running:
        heads = [
            (
                f"POST {running.bot.settings.webhook_path}?instance=w1 HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n"
                "X-Callflow-Forwarded-By: w2\r\n"
                f"X-Callflow-Fleet-Auth: t={time.time():.3f};n=1;tenant={fake.tenant_id};"
                f"sha256={'0' * 64};mac={'0' * 32}\r\n\r\n"
            ).encode()
            for framing in ("Content-Length: 900", "Transfer-Encoding: chunked")
        ]
        streams: list[anyio.abc.SocketStream] = []
        took: list[float] = []
        try:
            with anyio.fail_after(GUARD):
                for n in range(20):
                    stream = await connect(running)
                    streams.append(stream)
                    started = time.monotonic()
                    await stream.send(heads[n % 2])
                    status, body = await read_reply(BufferedByteReceiveStream(stream))
                    took.append(time.monotonic() - started)
                    assert status == b"HTTP/1.1 403 Forbidden", body
                    assert json.loads(body)["error"]["code"] == "forbidden"
                call = await fake.place_call(running.webhook_url)
                assert call.webhook_status == 202
                await call.decision()
        finally:
            for stream in streams:
                await stream.aclose()
        assert metric(running, "callflow_connections_refused_total") == 0
    assert max(took) < 0.05, took


async def test_a_stopping_server_closes_every_connection_it_accepted() -> None:
    """Connections that arrive as the server stops, some with a request on the way, are all
    closed by the stop (an end of stream or a reset), none left open until its keep-alive
    timeout: those accepted just before the listener closed included, whose handlers were
    not set up yet when the stop began."""
    loop = asyncio.get_running_loop()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    for turns in range(6):  # how far the server gets with the connections before it stops
        app = web.Application()
        app.router.add_get("/ok", ok)
        server = await start_server(app, host="127.0.0.1", port=0, settings=Settings())
        port = server.addresses[0][1]
        clients = []
        for n in range(8):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
            if n % 2:
                with contextlib.suppress(OSError):
                    client.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(turns):
            await asyncio.sleep(0)
        await server.cleanup()
        try:
            for client in clients:
                with anyio.fail_after(2.0):
                    while True:
                        try:
                            if not await loop.sock_recv(client, 4096):
                                break  # the server closed it
                        except OSError:
                            break  # reset: closed too
        finally:
            for client in clients:
                client.close()
