"""The short-audio recognition client against FakeSpeech over HTTP on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from callflow.errors import SpeechError
from callflow.speech.config import STT_PATH, SpeechConfig
from callflow.speech.recognition import Recognizer
from callflow.speech.wav import build_wav
from callflow.testing import FakeSpeech, wav_with_words

pytestmark = pytest.mark.anyio


def config_for(url: str, key: str, *, setting: str = "CALLFLOW_SPEECH_KEY") -> SpeechConfig:
    """A SpeechConfig whose recognition endpoint is ``url`` (+ the STT path), with ``key``."""

    async def headers() -> Mapping[str, str]:
        return {"Ocp-Apim-Subscription-Key": key}

    return SpeechConfig(
        tts_url=url + "/tts", stt_url=url + STT_PATH, voices_url=url + "/voices",
        headers=headers, language="en-US", auth_setting=setting,
    )  # fmt: skip


@pytest.fixture
async def speech() -> AsyncIterator[FakeSpeech]:
    async with FakeSpeech() as fake:
        yield fake


@pytest.fixture
async def recognizer(speech: FakeSpeech) -> AsyncIterator[Recognizer]:
    async with Recognizer(config_for(speech.url, speech.key)) as client:
        yield client


async def test_words_come_back_with_status_confidence_and_timing(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    heard = await recognizer.recognize(wav_with_words("book an appointment", 1.5))
    assert heard.understood
    assert heard.status == "Success"
    assert heard.words == ("book", "an", "appointment")
    assert heard.confidence is not None and 0 < heard.confidence <= 1
    assert heard.alternatives and heard.alternatives[0].confidence == heard.confidence
    assert 0 < heard.duration <= 1.5
    (request,) = speech.requests_of("stt")
    assert request.query["language"] == "en-US"
    assert request.query["format"] == "detailed"
    assert request.headers["Content-Type"] == "audio/wav; codecs=audio/pcm; samplerate=16000"
    assert request.headers["Ocp-Apim-Subscription-Key"] == speech.key


async def test_language_is_the_configs_unless_given(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    await recognizer.recognize(wav_with_words("hallo"), language="de-DE")
    assert speech.requests_of("stt")[-1].query["language"] == "de-DE"


async def test_silence_and_sound_without_words_are_heard_as_nothing(
    recognizer: Recognizer,
) -> None:
    silent = build_wav(b"\x00\x00" * 16_000)
    heard = await recognizer.recognize(silent)
    assert (heard.text, heard.status, heard.understood) == ("", "InitialSilenceTimeout", False)
    mumble = await recognizer.recognize(wav_with_words("", 1.0))
    assert (mumble.text, mumble.status) == ("", "NoMatch")


async def test_a_wrong_key_names_the_setting_and_is_not_retried(speech: FakeSpeech) -> None:
    async with Recognizer(config_for(speech.url, "not-the-key")) as client:
        with pytest.raises(SpeechError, match="CALLFLOW_SPEECH_KEY") as caught:
            await client.recognize(wav_with_words("sales"), timeout=5.0)
    assert caught.value.status == 401
    assert caught.value.setting == "CALLFLOW_SPEECH_KEY"
    assert len(speech.requests_of("stt")) == 1


async def test_throttling_and_failures_are_retried_while_time_remains(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    speech.refuse(503, times=2, retry_after=0)
    heard = await recognizer.recognize(wav_with_words("sales"), timeout=10.0)
    assert heard.text.lower().startswith("sales")
    assert [r.status for r in speech.requests_of("stt")] == [503, 503, 200]


async def test_a_resource_that_keeps_failing_raises_within_the_timeout(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    speech.refuse(503, times=1000, retry_after=0.05)
    began = time.monotonic()
    with pytest.raises(SpeechError, match=r"did not succeed within 0\.6 s"):
        await recognizer.recognize(wav_with_words("sales"), timeout=0.6)
    assert time.monotonic() - began < 0.6 + 0.5
    assert len(speech.requests_of("stt")) >= 2  # it did retry meanwhile


async def test_a_slow_resource_raises_within_the_timeout(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    speech.latency = 5.0
    began = time.monotonic()
    with pytest.raises(SpeechError, match="no answer in time"):
        await recognizer.recognize(wav_with_words("sales"), timeout=0.5)
    assert time.monotonic() - began < 0.5 + 0.5


async def test_an_unreachable_resource_raises_speech_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Recognizer(config_for(f"http://127.0.0.1:{port}", "k")) as client:
        with pytest.raises(SpeechError, match=r"within 0\.5 s"):
            await client.recognize(wav_with_words("sales"), timeout=0.5)


async def test_bad_audio_is_refused_before_anything_is_sent(
    speech: FakeSpeech, recognizer: Recognizer
) -> None:
    with pytest.raises(SpeechError, match="not a WAV file"):
        await recognizer.recognize(b"ID3\x03mp3 data")
    with pytest.raises(SpeechError, match="at most 60 s"):
        await recognizer.recognize(build_wav(b"\x00\x00" * 16_000 * 61))
    assert speech.requests_of("stt") == ()
