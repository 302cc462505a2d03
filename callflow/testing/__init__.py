"""Testing a bot built on callflow: :class:`FakeGraph`, the pytest fixtures, the records.

The three things a bot's tests need:

1. :class:`FakeGraph`: Microsoft Graph's calling APIs on loopback. It places calls on the
   bot's webhook (:meth:`FakeGraph.place_call` returns a :class:`CallHandle`: press keys,
   hang up, wait for the decision), plays out prompts, recordings and transfers, enforces
   the platform timeout and injects faults. ``fake.serve(bot, services=...)`` serves a bot
   against it, with fakes for the bot's own services.
2. The pytest fixtures (:mod:`callflow.testing.plugin`, loaded by installing
   ``callflow-graph[testing]``): ``fake_graph``, ``serve_bot``, ``running_bot``, and
   ``anyio_backend``. Their fake is in **strict mode**: a handler, observer, middleware,
   flow or error hook that raises, or a handler that returns something that is not a
   decision, fails the test with :class:`BotCodeError` naming it and its call
   (``@pytest.mark.callflow_lenient`` for tests that provoke errors on purpose).
3. The records: every request the bot sent is a :class:`GraphRequest` with typed reads
   (``reason``, ``targets``, ``prompt_ids``, ``transfer_target``, ``record_settings``...);
   wait for them with :meth:`FakeGraph.wait_requests` (``where=`` a predicate), never poll.

::

    import pytest
    from callflow import Answer, Bot, IncomingCall

    @pytest.mark.anyio
    async def test_answers(fake_graph, serve_bot) -> None:
        bot = Bot()

        @bot.incoming_call
        async def answer(call: IncomingCall) -> Answer:
            return Answer()

        async with serve_bot(bot) as running:
            call = await fake_graph.place_call(running.webhook_url, kind="phone")
            assert (await call.decision()).op == "answer"

:class:`FakeSpeech` serves Azure AI Speech's text-to-speech and short-audio recognition REST
API the same way; :func:`wav_with_words` makes a WAV that carries the words FakeSpeech
"hears" in it (in its ``ICMT`` chunk).

The how-to page ``docs/how-to/testing.md`` walks through more. The notification builders
(:func:`incoming_call`, :func:`call_state`, ...) and the token and key servers FakeGraph is
built from are importable from here for tests of webhooks themselves, but are not part of
what a bot author needs.
"""

from __future__ import annotations

from callflow.clock import ManualClock
from callflow.engine.deadline import RecordingSink
from callflow.engine.lanes import Failure
from callflow.testing._audio import wav_with_words, words_in
from callflow.testing._call_handle import CallHandle
from callflow.testing._failures import BotCodeError
from callflow.testing._fake_graph import FakeGraph
from callflow.testing._fake_speech import DEFAULT_VOICES, FakeSpeech, SpeechRequest
from callflow.testing._keys import KeyServer, SigningKey, graph_claims
from callflow.testing._media import FakeMedia, MediaFetch
from callflow.testing._payloads import (
    KINDS,
    CallKind,
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
    OpName,
    RecordSettings,
    WebhookReply,
)
from callflow.testing._token_server import TokenServer

__all__ = [
    # 1. the fake and what it hands back
    "FakeGraph",
    "CallHandle",
    "KINDS",
    "CallKind",
    # 2. strict mode (the fixtures live in callflow.testing.plugin)
    "BotCodeError",
    "Failure",
    # 3. the records
    "GraphRequest",
    "RecordSettings",
    "WebhookReply",
    "FakeOperation",
    "OpName",
    "OPS",
    "DECISION_OPS",
    "ACTION_OPS",
    # 4. speech: FakeSpeech beside FakeGraph, the media FakeGraph fetches, spoken WAVs
    "FakeSpeech",
    "SpeechRequest",
    "DEFAULT_VOICES",
    "FakeMedia",
    "MediaFetch",
    "wav_with_words",
    "words_in",
    # the identity a fake gives a bot, and a clock for engine-level tests
    "DEFAULT_APP_ID",
    "DEFAULT_TENANT_ID",
    "CALLBACK_URL",
    "ManualClock",
    "SigningKey",
]

# Importable from here, outside the public surface: the servers FakeGraph is built from and
# the notification builders (tests of webhooks and of FakeGraph itself use them).
_BUILDING_BLOCKS = (
    KeyServer,
    RecordingSink,
    TokenServer,
    call_state,
    call_terminated,
    envelope,
    graph_claims,
    identity_set,
    incoming_call,
    operation_result,
    participants,
    tone,
)
