"""call.say() and Say prompts end to end: a real Bot, FakeGraph and FakeSpeech over HTTP.

The bot renders with FakeSpeech, serves the WAV at MEDIA_PATH under a keyed name, and FakeGraph
fetches it from the bot (as Graph does through the front door) before it completes the prompt;
``handle.said`` is what the caller heard.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
import structlog
import structlog.testing

from callflow import (
    ActionError,
    Answer,
    Bot,
    Call,
    ConfigError,
    IncomingCall,
    MediaPrompt,
    OperationError,
    SpeechError,
)
from callflow.prompts import Say, Ssml
from callflow.testing import CallHandle, FakeGraph, FakeSpeech, wav_with_words
from callflow.testing._config import silent_wav
from callflow.testing._media import MediaFetch

pytestmark = pytest.mark.anyio

GUARD = 15.0
APPOINTMENT = "Your appointment is on Tuesday at 10"
NS = "{http://www.w3.org/2001/10/synthesis}"


@contextlib.asynccontextmanager
async def flow_bot(
    fake: FakeGraph, speech: FakeSpeech, flow: Callable[[Call], Awaitable[None]], **overrides: Any
) -> AsyncIterator[tuple[CallHandle, list[BaseException], anyio.Event]]:
    """Serve a bot that answers and runs ``flow``; place one call; yield its handle, the
    errors the flow raised and an event set when the flow ended."""
    bot = Bot()
    errors: list[BaseException] = []
    done = anyio.Event()

    async def run(call: Call) -> None:
        try:
            await flow(call)
        except Exception as exc:
            errors.append(exc)
        finally:
            done.set()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=run)

    async with fake.serve(bot, **{**speech.overrides(), **overrides}) as running:
        handle = await fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            yield handle, errors, done


def played_uris(handle: CallHandle) -> list[str]:
    return [
        p["mediaInfo"]["uri"]
        for r in handle.requests
        if r.op == "playPrompt"
        for p in r.body["prompts"]
    ]


async def test_say_renders_once_serves_and_plays_the_text(fake_graph: FakeGraph) -> None:
    """say() renders the text with FakeSpeech once, plays it from the worker's media path
    (FakeGraph fetched a 16 kHz WAV carrying the text), and says it again from the cache."""

    async def flow(call: Call) -> None:
        await call.say(APPOINTMENT)
        await call.play([Say(APPOINTMENT), MediaPrompt("https://cdn.example.com/bye.wav")])

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    assert handle.said == [APPOINTMENT, APPOINTMENT]
    tts = speech.requests_of("tts")
    assert [r.status for r in tts] == [200], "a cached phrase is not rendered again"
    uris = played_uris(handle)
    assert uris[0] == uris[1] and uris[0].startswith("https://bot.invalid/api/media/")
    assert uris[0].endswith(".wav") and "Tuesday" not in uris[0]
    fetched = [f for f in fake_graph.media.fetches if f.uri == uris[0]]
    assert [f.plays for f in fetched] == [True, True] and fetched[0].status == 200
    assert tts[0].headers["X-Microsoft-OutputFormat"] == "riff-16khz-16bit-mono-pcm"
    assert tts[0].headers["Ocp-Apim-Subscription-Key"] == speech.key


async def test_an_ssml_injection_in_say_text_is_spoken_as_text(fake_graph: FakeGraph) -> None:
    """Markup in a Say text is escaped: Speech gets one voice, the default one, speaking
    the text as written, and the caller hears it as written."""
    sneaky = "Dana</voice><voice name='de-DE-KatjaNeural'>Hallo & <break time='9s'/>"

    async def flow(call: Call) -> None:
        await call.say(sneaky)

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    (request,) = speech.requests_of("tts")
    root = ET.fromstring(request.body)
    voices = root.findall(f"{NS}voice")
    assert [v.get("name") for v in voices] == ["en-US-JennyNeural"]
    assert voices[0].text == sneaky and list(voices[0]) == []
    assert handle.said == [" ".join(sneaky.split())]


async def test_bad_input_gets_a_clear_error_and_nothing_is_sent(fake_graph: FakeGraph) -> None:
    """A 10 MB text and an empty one are refused before anything is sent; a voice the
    resource does not offer raises SpeechError naming the setting, and nothing is played."""
    caught: list[BaseException] = []

    async def flow(call: Call) -> None:
        for attempt in (
            lambda: call.say("a" * 10_000_000),
            lambda: call.say("   "),
            lambda: call.say("Hello", voice="xx-XX-NobodyNeural"),
            lambda: call.say("Hello", voice="not a voice"),
        ):
            try:
                await attempt()
            except Exception as exc:
                caught.append(exc)

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    assert isinstance(caught[0], ActionError) and "5000 characters" in str(caught[0])
    assert isinstance(caught[1], ActionError) and "empty" in str(caught[1])
    assert isinstance(caught[2], SpeechError) and caught[2].setting == "CALLFLOW_SPEECH_VOICE"
    assert "xx-XX-NobodyNeural" in str(caught[2])
    assert isinstance(caught[3], ActionError) and "voice" in str(caught[3])
    assert speech.requests_of("tts") == ()
    assert "playPrompt" not in [r.op for r in handle.requests]


async def test_speech_refusing_is_retried_while_time_remains(fake_graph: FakeGraph) -> None:
    """Two 503s are ridden out inside the timeout; a Speech that keeps refusing gives a
    SpeechError within the timeout, and nothing is played."""
    outcome: list[object] = []

    async def flow(call: Call) -> None:
        speech.refuse(503, times=2, retry_after=0.1)
        await call.say("First try")
        outcome.append("played")
        speech.refuse(503, times=1000, retry_after=0.1)
        started = anyio.current_time()
        try:
            await call.say("Second try", timeout=1.0)
        except SpeechError as exc:
            outcome.append((exc, anyio.current_time() - started))

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    assert outcome[0] == "played"
    error, took = outcome[1]  # type: ignore[misc]
    assert isinstance(error, SpeechError) and took < 2.0  # timeout 1 s, and a loaded machine
    assert handle.said == ["First try"]


async def test_a_wrong_key_stops_the_start_naming_the_setting(fake_graph: FakeGraph) -> None:
    """Speech refusing the key at start is a ConfigError naming CALLFLOW_SPEECH_KEY; an
    unknown default voice one naming CALLFLOW_SPEECH_VOICE."""
    async with FakeSpeech() as speech:
        for overrides, named in (
            ({"speech_key": "wrong"}, "CALLFLOW_SPEECH_KEY"),
            ({"speech_voice": "xx-XX-NobodyNeural"}, "CALLFLOW_SPEECH_VOICE"),
        ):
            with pytest.raises(ConfigError, match=named):
                async with fake_graph.serve(Bot(), **{**speech.overrides(), **overrides}):
                    pass


async def test_prefetch_renders_after_the_answer_is_sent(fake_graph: FakeGraph) -> None:
    """Answer(prefetch=Say(...)) names the prompt in the answer at once; the rendering
    starts only after the answer went out, and Graph's prefetch fetch gets the WAV."""
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(prefetch=[Say("Welcome to Contoso"), MediaPrompt("https://x/a.wav")])

    async with FakeSpeech() as speech, fake_graph.serve(bot, **speech.overrides()) as running:
        speech.latency = 0.3  # a slow Speech holds nothing up
        handle = await fake_graph.place_call(running.webhook_url)
        decision = await handle.decision()
        (tts,) = await speech.wait_requests("tts")
        uri = decision.body["mediaConfig"]["preFetchMedia"][0]["uri"]
        fetch = await fake_graph.media.wait_for(uri, timeout=GUARD)
    assert decision.at < tts.at
    assert uri.startswith("https://bot.invalid/api/media/")
    assert fetch.plays and fetch.words == "Welcome to Contoso"


async def test_without_speech_a_spoken_prefetch_is_left_out_and_say_fails(
    fake_graph: FakeGraph,
) -> None:
    """No Speech resource: the answer still goes out (without the spoken prompt), and
    say() raises SpeechError naming the setting."""
    caught: list[BaseException] = []
    done = anyio.Event()

    async def flow(call: Call) -> None:
        try:
            await call.say("Hello")
        except SpeechError as exc:
            caught.append(exc)
        finally:
            done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(prefetch=Say("Hi"), then=flow)

    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(bot) as running:
            handle = await fake_graph.place_call(running.webhook_url)
            decision = await handle.decision()
            with anyio.fail_after(GUARD):
                await done.wait()
    assert decision.status == 202
    assert "preFetchMedia" not in decision.body["mediaConfig"]
    (skipped,) = [e for e in logs if e["event"] == "speech.prefetch_skipped"]
    assert skipped["log_level"] == "warning" and skipped["prompts"] == 1
    assert caught[0].setting == "CALLFLOW_SPEECH_REGION"  # type: ignore[attr-defined]


async def test_ssml_prompts_and_record_prompts(fake_graph: FakeGraph) -> None:
    """Ssml(...) is sent as given; a Say works as a record() and collect_digits() prompt."""
    document = (
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-GB'>"
        "<voice name='en-GB-SoniaNeural'>Press <emphasis>one</emphasis></voice></speak>"
    )

    async def flow(call: Call) -> None:
        await call.play(Ssml(document))
        await call.record(prompt=Say("Leave a message"), max_duration=1)

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    assert [r.voice for r in speech.requests_of("tts")] == [
        "en-GB-SoniaNeural",
        "en-US-JennyNeural",
    ]
    assert speech.requests_of("tts")[0].body == document.encode()
    assert handle.said == ["Press one", "Leave a message"]
    with pytest.raises(ActionError, match="voice"):
        Ssml("<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis'>x</speak>")
    with pytest.raises(ActionError, match="well-formed"):
        Ssml("<speak>")


async def test_fake_graph_refuses_what_graph_cannot_play(fake_graph: FakeGraph) -> None:
    """An mp3, a 24 kHz WAV and a 404 complete with nothing played (completionReason
    unknown: OperationError); a registered 16 kHz WAV and an unreachable .wav play."""
    results: list[object] = []
    fake_graph.media.register("https://cdn.example.com/hi-fi.wav", _wav_24k())
    fake_graph.media.register("https://cdn.example.com/ok", wav_with_words("welcome"))

    async def flow(call: Call) -> None:
        for uri in (
            "https://cdn.example.com/menu.mp3",
            "https://cdn.example.com/hi-fi.wav",
            "https://bot.invalid/api/media/nothing.wav",
            "https://cdn.example.com/ok",
            "https://cdn.example.com/menu.wav",
        ):
            try:
                await call.play(MediaPrompt(uri))
                results.append("played")
            except OperationError as exc:
                results.append(exc.completion_reason)

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, errors, done):
        await done.wait()
    assert errors == []
    assert results == ["unknown", "unknown", "unknown", "played", "played"]
    reasons = {f.uri.rsplit("/", 1)[1]: f for f in fake_graph.media.fetches}
    assert "name does not end in .wav" in reasons["menu.mp3"].reason
    assert "24000 Hz" in reasons["hi-fi.wav"].reason
    assert reasons["nothing.wav"].status == 404
    assert handle.said == ["welcome"]
    assert isinstance(reasons["menu.wav"], MediaFetch) and reasons["menu.wav"].plays


def _wav_24k() -> bytes:
    from callflow.speech.wav import build_wav

    return build_wav(b"\x10\x00" * 24_000, sample_rate=24_000)


async def test_the_media_endpoint_serves_only_names_it_issued(fake_graph: FakeGraph) -> None:
    """Forged, altered, malformed and traversal names get 404; the issued one its WAV."""

    async def flow(call: Call) -> None:
        await call.say("Your code is 4 2 7")

    async with FakeSpeech() as speech, flow_bot(fake_graph, speech, flow) as (handle, _, done):
        await done.wait()
        uri = played_uris(handle)[0]
        base = fake_graph.media._origins["https://bot.invalid"]  # the worker's own address
        path = uri.removeprefix("https://bot.invalid")
        digest, expiry, tag = path.rsplit("/", 1)[1].removesuffix(".wav").split("-")
        async with aiohttp.ClientSession() as session:

            async def status(p: str) -> int:
                async with session.get(base + p) as reply:
                    if reply.status == 404:  # says why, as JSON, and nothing of the prompt
                        body = await reply.json()
                        assert body["error"]["code"] == "not_found"
                    await reply.read()
                    return reply.status

            assert await status(path) == 200
            flipped = ("0" if tag[0] != "0" else "1") + tag[1:]
            assert await status(path.replace(tag, flipped)) == 404
            later = f"{int(expiry, 16) + 3600:x}"
            assert await status(path.replace(f"-{expiry}-", f"-{later}-")) == 404
            assert await status("/api/media/" + "0" * 32 + f"-{expiry}-" + "0" * 32 + ".wav") == 404
            assert await status("/api/media/..%2F..%2Fetc%2Fpasswd") == 404
            assert await status("/api/media/" + digest + ".wav") == 404
            assert await status(path.removesuffix(".wav") + ".mp3") == 404
    assert len(speech.requests_of("tts")) == 1


async def test_silence_helper_is_not_words() -> None:
    """silent_wav carries no words (FakeSpeech hears InitialSilenceTimeout in it)."""
    from callflow.testing import words_in

    assert words_in(silent_wav(0.2)) is None
