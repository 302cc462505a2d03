"""A fleet of three workers on one Redis: Graph fetches a spoken prompt from a worker other
than the one that rendered it, and gets it (the spec is shared through the store)."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from callflow import Answer, Bot, Call, IncomingCall
from callflow.testing import CALLBACK_URL, FakeGraph, FakeSpeech
from tests.redis_server import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # three workers and a redis-server

GUARD = 20.0
SECRET = "say-fleet-secret-0123456789abcdef0123"
TEXT = "Hello Dana, your table for two is booked"


async def test_any_worker_serves_a_prompt_another_worker_rendered(fake_graph: FakeGraph) -> None:
    """Worker 0 answers and says the text; Graph fetches the prompt through worker 1, which
    reads the spec from the store and renders it; the caller hears the text."""
    servers = redis_server()
    redis = next(servers)
    done = anyio.Event()
    errors: list[BaseException] = []

    async def flow(call: Call) -> None:
        try:
            await call.say(TEXT)
        except Exception as exc:
            errors.append(exc)
        finally:
            done.set()

    bots = [Bot() for _ in range(3)]
    for bot in bots:

        @bot.incoming_call
        async def answer(call: IncomingCall) -> Answer:
            return Answer(then=flow)

    async with FakeSpeech() as speech, contextlib.AsyncExitStack() as stack:
        try:
            served = [
                await stack.enter_async_context(
                    fake_graph.serve(
                        bot,
                        store=redis.url,
                        instance_id=f"say{i}",
                        heartbeat_interval=0.2,
                        drain_timeout=0.5,
                        fleet_secret=SECRET,
                        **speech.overrides(),
                    )
                )
                for i, bot in enumerate(bots)
            ]
            # Graph reaches the media path through the front door; here it lands on worker 1.
            fake_graph.media.serve_origin(CALLBACK_URL, served[1].url)
            handle = await fake_graph.place_call(served[0].webhook_url)
            answer = await handle.decision()
            assert "instance=say0" in answer.body["callbackUri"]
            with anyio.fail_after(GUARD):
                await done.wait()
        finally:
            with contextlib.suppress(StopIteration):
                next(servers)
    assert errors == []
    assert handle.said == [TEXT]
    (play,) = [r for r in handle.requests if r.op == "playPrompt"]
    uri = play.body["prompts"][0]["mediaInfo"]["uri"]
    fetch = next(f for f in fake_graph.media.fetches if f.uri == uri)
    assert fetch.plays and fetch.status == 200
    # Rendered twice: by the worker that said it, and from the shared spec by the one Graph
    # fetched it from (each keeps it in its cache afterwards).
    assert [r.status for r in speech.requests_of("tts")] == [200, 200]
