"""SpokenMedia on its own: renders shared by callers of the same phrase, names, the cache.

A real :class:`~callflow.speech.tts.SpeechClient` against FakeSpeech on loopback; the media
is entered on the test's loop (as the worker enters it on its I/O loop).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from structlog.testing import capture_logs

from callflow.errors import SpeechError, TokenError
from callflow.prompts import Say
from callflow.settings import Settings
from callflow.speech.config import SpeechConfig
from callflow.speech.media import SpokenMedia
from callflow.speech.tts import SpeechClient
from callflow.testing import FakeSpeech

pytestmark = pytest.mark.anyio

GUARD = 15.0
BASE = "https://bot.example.com/api/media"


@contextlib.asynccontextmanager
async def spoken(speech: FakeSpeech) -> AsyncIterator[SpokenMedia]:
    config = SpeechConfig.from_settings(Settings(**speech.overrides()))
    assert config is not None
    async with (
        SpeechClient(config) as client,
        SpokenMedia(client, key=b"k" * 32, base_url=BASE) as media,
    ):
        yield media


async def test_a_caller_waiting_on_anothers_render_gets_a_speech_error_at_its_deadline() -> None:
    """Two plays of the same phrase share one render; the one whose time runs out first is
    told with SpeechError (what ``call.play`` documents), never a bare TimeoutError."""
    async with FakeSpeech() as speech, spoken(speech) as media:
        speech.latency = 1.0
        now = anyio.current_time()
        outcomes: list[object] = []

        async def patient() -> None:
            outcomes.append(await media.prepare(Say("hello there"), now + GUARD))

        async def hurried() -> None:
            try:
                await media.prepare(Say("hello there"), now + 0.1)
            except Exception as exc:
                outcomes.append(exc)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(patient)  # started first: it owns the render
                await anyio.lowlevel.checkpoint()
                tg.start_soon(hurried)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], SpeechError), outcomes
        assert len(speech.requests_of("tts")) == 1


async def test_a_prefetch_whose_token_cannot_be_had_is_logged_and_the_worker_goes_on() -> None:
    """SPEECH_AUTH=entra and the identity provider down: a background prefetch render fails
    with a SpeechError naming CALLFLOW_SPEECH_AUTH (logged), never cancelling the task that
    entered the media (the worker's I/O side); a play gets the SpeechError."""
    asked = anyio.Event()

    async def no_token() -> str:
        asked.set()
        raise TokenError("Could not get a token: the identity provider did not answer")

    async with FakeSpeech() as speech:
        settings = Settings(speech_endpoint=speech.url, speech_auth="entra")
        config = SpeechConfig.from_settings(settings, token=no_token)
        assert config is not None
        with anyio.fail_after(GUARD), capture_logs() as logs:
            async with (
                SpeechClient(config) as client,
                SpokenMedia(client, key=b"k" * 32, base_url=BASE) as media,
            ):
                _, digest = media.issue(Say("hello there"))
                media.in_background([digest])
                await asked.wait()  # the render fails and is logged before this task resumes
                with pytest.raises(SpeechError) as caught:
                    await media.prepare(Say("hello again"), anyio.current_time() + 5)
        assert caught.value.setting == "CALLFLOW_SPEECH_AUTH"
        failed = [e for e in logs if e["event"] == "speech.prefetch_failed"]
        assert len(failed) == 1 and "token" in failed[0]["error"], logs
        assert not speech.requests_of("tts")


@pytest.mark.parametrize("ttl", [3600.0, 90.5])
async def test_a_name_stays_valid_for_at_least_the_media_ttl(ttl: float) -> None:
    """CALLFLOW_MEDIA_TTL takes any number of seconds from 60 (90.5 too): a name issued now is
    served for at least that long and at most twice that, then refused."""
    now = [1_765_000_000.0]
    async with FakeSpeech() as speech:
        config = SpeechConfig.from_settings(Settings(**speech.overrides()))
        assert config is not None
        async with (
            SpeechClient(config) as client,
            SpokenMedia(
                client, key=b"k" * 32, base_url=BASE, ttl=ttl, wall_clock=lambda: now[0]
            ) as media,
        ):
            with anyio.fail_after(GUARD):
                prompt = await media.prepare(Say("hello there"), anyio.current_time() + GUARD)
                name = prompt.uri.rsplit("/", 1)[1].removesuffix(".wav")
                assert await media.fetch(name) is not None
                issued = now[0]
                now[0] = issued + ttl - 0.001
                assert await media.fetch(name) is not None
                now[0] = issued + 2 * ttl + 0.001
                assert await media.fetch(name) is None


async def test_the_texts_of_spoken_prompts_are_bounded_in_bytes_not_only_in_count() -> None:
    """Thousands of distinct 60 KB SSML prompts: what the worker remembers of them stays
    within its budget (a quarter of the cache, at least 1 MiB), and the newest one still
    renders and plays."""
    from callflow.prompts import Ssml

    async with FakeSpeech() as speech:
        config = SpeechConfig.from_settings(Settings(**speech.overrides()))
        assert config is not None
        async with (
            SpeechClient(config) as client,
            SpokenMedia(client, key=b"k" * 32, base_url=BASE, cache_bytes=4 * 1024 * 1024) as media,
        ):
            filler = "x" * 60_000
            for n in range(2_000):  # 120 MB of text if all were kept
                document = (
                    "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' "
                    f"xml:lang='en-US'><voice name='en-US-JennyNeural'>{n} {filler}</voice>"
                    "</speak>"
                )
                media.issue(Ssml(document))
            kept = sum(len(spec.voice) + len(spec.ssml) for spec in media._specs.values())
            assert kept <= 1024 * 1024 + 61_000
            assert len(media._specs) < 20
            with anyio.fail_after(GUARD):
                played = await media.prepare(Say("still here"), anyio.current_time() + GUARD)
            assert played.uri.startswith(BASE + "/")
