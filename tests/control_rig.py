"""A call-control test rig: FakeGraph, a Graph client, and a loopback webhook feeding the
operation registry, all real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from aiohttp import web

from callflow import Answer
from callflow._parse import parse_notifications
from callflow.clock import MONOTONIC, Clock
from callflow.control.call import Call, Calls, SameLoopPort
from callflow.control.control import CallControl
from callflow.control.registry import OperationRegistry
from callflow.events import CallEvent
from callflow.graph.client import GraphClient
from callflow.graph.tokens import StaticTokenProvider
from callflow.testing import CALLBACK_URL, CallHandle, FakeGraph, SigningKey


class Rig:
    """Everything a call-control test needs, running."""

    def __init__(
        self, fake: FakeGraph, graph: GraphClient, control: CallControl, webhook_url: str
    ) -> None:
        self.fake = fake
        self.graph = graph
        self.control = control
        self.registry = control.registry
        self.webhook_url = webhook_url
        self.port = SameLoopPort()
        self.calls = Calls._open(control, self.port)
        self.events: list[CallEvent] = []
        self.outcomes: list[tuple[str, str, float]] = []
        self.hold: anyio.Event | None = None
        """While set to an unset event, the webhook holds each notification until it is set."""

    async def answered_call(self, **place: Any) -> tuple[CallHandle, Call]:
        """Place a call on the webhook, answer it, and wait until it is established."""
        handle = await self.fake.place_call(self.webhook_url, **place)
        await self.graph.decide(handle.call_id, Answer(), tenant_id=handle.tenant_id)
        await handle.wait_delivery("established")
        return handle, self.calls.get(handle.call_id, tenant_id=handle.tenant_id)


def _webhook(rig_ref: list[Rig]) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        rig = rig_ref[0]
        events = parse_notifications(await request.read())
        if rig.hold is not None:
            await rig.hold.wait()
        rig.events.extend(events)
        rig.registry.on_events(events)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", receive)
    return app


@contextlib.asynccontextmanager
async def running_rig(
    key: SigningKey,
    *,
    operation_duration: float = 0.05,
    cancel_timeout: float = 2.0,
    configure: Callable[[FakeGraph], None] | None = None,
    clock: Clock = MONOTONIC,
) -> AsyncIterator[Rig]:
    """Run FakeGraph, a webhook on loopback and a Graph client against the fake; call
    control reads the time on ``clock``."""
    rig_ref: list[Rig] = []
    runner = web.AppRunner(_webhook(rig_ref), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        webhook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        async with FakeGraph(signing_key=key) as fake:
            fake.operation_duration = operation_duration
            fake.route(CALLBACK_URL, webhook_url)
            if configure is not None:
                configure(fake)
            graph = GraphClient(
                tokens=StaticTokenProvider(fake.app_token()),
                base_url=fake.graph_url,
                callback_url=CALLBACK_URL,
                backoff=(0.001, 0.002),
            )
            async with graph:
                outcomes: list[tuple[str, str, float]] = []
                control = CallControl(
                    graph,
                    OperationRegistry(clock=clock),
                    cancel_timeout=cancel_timeout,
                    on_operation=lambda *a: outcomes.append(a),
                )
                rig = Rig(fake, graph, control, webhook_url)
                rig.outcomes = outcomes
                rig_ref.append(rig)
                yield rig
    finally:
        await runner.cleanup()
