"""Test helpers for bots built on callflow: :class:`FakeGraph` and pytest fixtures.

``FakeGraph`` serves, on loopback, the parts of Microsoft Graph a calling bot touches: an
Entra-like token endpoint over TLS, the key set notifications are signed with, and call
control (answer, reject, redirect, keepAlive, hang up, and the operations after the answer:
prompts, recording, key presses, transfer, new calls). It places calls on a bot's webhook,
records what the bot sends back, enforces the platform timeout and injects faults::

    from callflow import Answer, Bot
    from callflow.testing import FakeGraph

    async def test_answers() -> None:
        bot = Bot()

        @bot.incoming_call
        async def answer(call):
            return Answer()

        async with FakeGraph() as fake, fake.serve(bot) as running:
            call = await fake.place_call(running.webhook_url, kind="phone")
            assert (await call.decision()).op == "answer"

The pytest plugin :mod:`callflow.testing.plugin` (``pytest_plugins =
["callflow.testing.plugin"]`` in ``conftest.py``) adds the fixtures ``fake_graph``,
``serve_bot`` and ``running_bot``.
"""

from __future__ import annotations

from callflow.clock import ManualClock
from callflow.engine.deadline import RecordingSink
from callflow.testing._call_handle import CallHandle
from callflow.testing._fake_graph import FakeGraph
from callflow.testing._keys import KeyServer, SigningKey, graph_claims
from callflow.testing._payloads import (
    KINDS,
    call_state,
    call_terminated,
    envelope,
    identity_set,
    incoming_call,
    operation_result,
    participants,
    tone,
)
from callflow.testing._records import (
    ACTION_OPS,
    CALLBACK_URL,
    DECISION_OPS,
    DEFAULT_APP_ID,
    DEFAULT_TENANT_ID,
    OPS,
    FakeOperation,
    GraphRequest,
    WebhookReply,
)
from callflow.testing._token_server import TokenServer

__all__ = [
    "ACTION_OPS",
    "CALLBACK_URL",
    "DECISION_OPS",
    "DEFAULT_APP_ID",
    "DEFAULT_TENANT_ID",
    "KINDS",
    "OPS",
    "CallHandle",
    "FakeGraph",
    "FakeOperation",
    "GraphRequest",
    "KeyServer",
    "ManualClock",
    "RecordingSink",
    "SigningKey",
    "TokenServer",
    "WebhookReply",
    "call_state",
    "call_terminated",
    "envelope",
    "graph_claims",
    "identity_set",
    "incoming_call",
    "operation_result",
    "participants",
    "tone",
]
